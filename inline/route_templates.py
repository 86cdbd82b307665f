"""Route templates from an OpenAPI 3 document or configured patterns.

A route template names the endpoint a request hits (``/users/{userId}/orders``),
so that rate limits, BOLA detection and dashboards group requests by endpoint
rather than by raw path. Sources, first match wins:

1. the ``paths`` of an OpenAPI 3 document (OpenAPI Specification 3.1, "Paths
   Object": templated segments ``{name}`` match one whole path segment, and
   a concrete path is matched before a templated one of the same shape),
   prefixed with the path of its first ``servers`` URL;
2. configured patterns, written the same way (``/books/{title}``);
3. otherwise the normalizer of :mod:`inline.routes` (identifier-looking
   segments → ``{id}``).

Templates are kept in a segment trie; a lookup walks the normalized path's
segments once, trying a literal child before the parameter child (so
``/users/me`` beats ``/users/{id}``) and backtracking when a branch dead-ends:
cost proportional to the path depth, whatever the number of templates.
Matching runs on the *normalized* path (percent-decoding, dot segments and
duplicate slashes already resolved), so ``/users/1/../2`` cannot dodge
``/users/{id}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

PARAM = "{}"


@dataclass
class _Node:
    children: dict[str, "_Node"] = field(default_factory=dict)
    template: str | None = None


class RouteTable:
    """A set of route templates, matched against normalized paths (see the module docstring)."""

    def __init__(self, templates: list[str] | tuple[str, ...] = ()) -> None:
        self._root = _Node()
        self.templates: list[str] = []
        for template in templates:
            self.add(template)

    def add(self, template: str) -> None:
        """Add ``template`` (``/a/{b}/c``). Raises ``ValueError`` if it does not start with
        ``/`` or has a segment that mixes literal text and a parameter."""
        if not template.startswith("/"):
            raise ValueError(f"route template {template!r} must start with '/'")
        node = self._root
        for segment in _segments(template):
            if "{" in segment or "}" in segment:
                if not (segment.startswith("{") and segment.endswith("}") and segment.count("{") == 1):
                    raise ValueError(f"route template {template!r}: segment {segment!r} must be a whole {{param}}")
                segment = PARAM
            node = node.children.setdefault(segment, _Node())
        if node.template is None:
            node.template = template
            self.templates.append(template)

    def match(self, path: str) -> str | None:
        """The template that matches the normalized ``path``, or None."""
        return _walk(self._root, _segments(path), 0)

    def __len__(self) -> int:
        return len(self.templates)


def _segments(path: str) -> list[str]:
    path = path.rstrip("/") or "/"
    return [] if path == "/" else path[1:].split("/")


def _walk(node: _Node, segments: list[str], i: int) -> str | None:
    if i == len(segments):
        return node.template
    literal = node.children.get(segments[i])
    if literal is not None:
        found = _walk(literal, segments, i + 1)
        if found is not None:
            return found
    param = node.children.get(PARAM)
    if param is not None and segments[i]:
        return _walk(param, segments, i + 1)
    return None


def openapi_templates(document: dict) -> list[str]:
    """Path templates of an OpenAPI 3 document (a parsed dict): its ``paths`` keys, each
    prefixed with the path of the first ``servers`` URL. Raises ``ValueError`` if the
    document has no ``openapi: 3.x`` field or no ``paths`` object."""
    version = str(document.get("openapi", ""))
    if not version.startswith("3."):
        raise ValueError(f"not an OpenAPI 3 document (openapi: {version or 'missing'})")
    paths = document.get("paths")
    if not isinstance(paths, dict):
        raise ValueError("OpenAPI document has no 'paths' object")
    base = ""
    servers = document.get("servers") or []
    if servers and isinstance(servers[0], dict):
        base = urlsplit(str(servers[0].get("url", ""))).path.rstrip("/")
    return [base + p if base else p for p in paths]


def load_openapi(path: Path) -> list[str]:
    """Templates of the OpenAPI 3 document at ``path`` (JSON, or YAML with PyYAML).
    Raises ``ValueError`` when the file cannot be read or is not such a document."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"cannot read OpenAPI document {path}: {exc}") from exc
    try:
        document = json.loads(text)
    except ValueError:
        import yaml

        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: neither JSON nor YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError(f"{path}: not an OpenAPI document")
    return openapi_templates(document)
