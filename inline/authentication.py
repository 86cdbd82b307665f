"""API-key authentication.

A client sends its key in one header (``X-API-Key`` by default). The keys
file holds only SHA-256 hashes (see :mod:`gatewatch.keys`), so the gateway
hashes the presented key and looks the hash up; the principal is the key's
``id``, never the key itself.

Routes listed as public need no key. A key sent to a public route is still
checked, and a bad one is refused: a client that presents a credential
learns whether it is valid, consistently on every route.

Refusals are 401 with a JSON body and a ``WWW-Authenticate`` header
(RFC 9110 §11.6.1 requires one on every 401; API keys have no registered
scheme, so the challenge names the header to use).

The addon identifies the client in ``requestheaders`` (so that decision
enforcement and rate limiting can act on the principal) and refuses in
``request``, which runs after the enforcement and rate-limit addons; a
banned or flooding client is therefore answered 403/429 without learning
whether its key is valid.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mitmproxy import ctx, exceptions, http

from gatewatch.events import AuthResult
from gatewatch.keys import ApiKey, KeysFileError, hash_key, load_keys
from gatewatch.settings import load_settings
from inline.flowstate import FlowFacts, answered, get_facts, json_answer
from inline.routes import BadPath, ensure_facts, normalize_path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublicRoutes:
    """Parsed public-route patterns: ``exact`` paths and path ``prefixes``."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]

    def matches(self, path: str) -> bool:
        """True if the normalized ``path`` is public."""
        return path in self.exact or any(path.startswith(p) for p in self.prefixes)


def parse_public_routes(patterns: Iterable[str]) -> PublicRoutes:
    """Parse public-route patterns: an exact path (``/health``) or a prefix
    ending in ``*`` (``/docs/*`` matches every path starting with ``/docs/``).

    Exact paths are normalized like request paths (so ``/health/`` equals
    ``/health``). Raises ``ValueError`` for a pattern that does not start
    with ``/`` or is not a valid path.
    """
    exact: set[str] = set()
    prefixes: list[str] = []
    for pattern in patterns:
        pattern = pattern.strip()
        if not pattern.startswith("/"):
            raise ValueError(f"public route {pattern!r} must start with '/'")
        if pattern.endswith("*"):
            prefixes.append(pattern[:-1])
        else:
            try:
                exact.add(normalize_path(pattern))
            except BadPath as exc:
                raise ValueError(f"public route {pattern!r}: {exc}") from None
    return PublicRoutes(frozenset(exact), tuple(prefixes))


@dataclass(frozen=True)
class Identity:
    """Outcome of authenticating one request: ``auth`` result, ``principal``
    (key id, ``""`` if none) and a human ``detail`` for refusals."""

    auth: AuthResult
    principal: str = ""
    detail: str = ""

    @property
    def refused(self) -> bool:
        """True if the request must be answered 401."""
        return self.auth in ("missing", "invalid")


def identify(presented: Sequence[str], keys: Mapping[str, ApiKey], public: bool,
             header: str = "X-API-Key") -> Identity:
    """Authenticate a request from the values of its API-key header.

    ``presented`` holds every value of the header (normally zero or one);
    ``keys`` maps stored hashes to keys (:func:`gatewatch.keys.load_keys`).
    Results: ``ok`` (one known key), ``invalid`` (unknown key, or several
    values), ``missing`` (no key on a protected route), ``public`` (no key
    on a public route).
    """
    values = [v.strip() for v in presented if v.strip()]
    if not values:
        if public:
            return Identity("public")
        return Identity("missing", detail=f"missing API key in header {header}")
    if len(values) > 1:
        return Identity("invalid", detail=f"more than one {header} header")
    if not values[0].isascii() or not values[0].isprintable():
        # Keys are ASCII tokens; header bytes that are not UTF-8 arrive here as
        # surrogates (mitmproxy decodes with surrogateescape) and cannot be hashed.
        return Identity("invalid", detail="unknown API key")
    key = keys.get(hash_key(values[0]))
    if key is None:
        return Identity("invalid", detail="unknown API key")
    return Identity("ok", principal=key.id)


@dataclass(frozen=True)
class AuthSpec:
    """Parsed authentication options."""

    keys: Mapping[str, ApiKey]
    header: str
    public: PublicRoutes


class Authentication:
    """Addon: identifies the principal from the API key; answers 401 on protected
    routes without a valid key and on any route with a bad key.

    Options: ``gatewatch_keys_file``, ``gatewatch_api_key_header``,
    ``gatewatch_public_routes``.
    """

    def __init__(self) -> None:
        self.spec: AuthSpec | None = None
        self.refused = 0

    def load(self, loader) -> None:
        s = load_settings()
        loader.add_option("gatewatch_keys_file", str, str(s.keys_file),
                          "TOML file of API-key hashes (gatewatch.keys); read at start-up.")
        loader.add_option("gatewatch_api_key_header", str, s.api_key_header,
                          "Request header that carries the API key.")
        loader.add_option("gatewatch_public_routes", Sequence[str], list(s.public_routes),
                          "Paths served without an API key: exact path, or prefix ending in '*'.")

    def configure(self, updated: set[str]) -> None:
        if not updated & {"gatewatch_keys_file", "gatewatch_api_key_header", "gatewatch_public_routes"}:
            return
        opts = ctx.options
        header = opts.gatewatch_api_key_header.strip()
        if not header or not all(c.isalnum() or c in "-_" for c in header):
            raise exceptions.OptionsError(f"gatewatch_api_key_header: invalid header name {header!r}")
        try:
            keys = load_keys(Path(opts.gatewatch_keys_file))
        except KeysFileError as exc:
            raise exceptions.OptionsError(f"gatewatch_keys_file: {exc}") from exc
        try:
            public = parse_public_routes(opts.gatewatch_public_routes)
        except ValueError as exc:
            raise exceptions.OptionsError(f"gatewatch_public_routes: {exc}") from exc
        self.spec = AuthSpec(keys=keys, header=header, public=public)

    def _identify(self, flow: http.HTTPFlow, facts: FlowFacts, spec: AuthSpec) -> None:
        ident = identify(flow.request.headers.get_all(spec.header), spec.keys,
                         spec.public.matches(facts.path), spec.header)
        facts.auth, facts.principal, facts.auth_detail = ident.auth, ident.principal, ident.detail

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        facts = get_facts(flow)
        if self.spec is None or facts is None or facts.bad_path is not None or answered(flow):
            return
        self._identify(flow, facts, self.spec)

    def request(self, flow: http.HTTPFlow) -> None:
        if answered(flow):
            return
        facts = ensure_facts(flow)
        if self.spec is None:
            # Not configured: never let a request through unchecked (fail closed).
            json_answer(flow, 401, {"error": "unauthorized", "detail": "authentication unavailable"}, "auth")
            return
        if facts.auth_detail is None:
            try:
                self._identify(flow, facts, self.spec)
            except Exception:  # fail closed: an unexpected error must not let the request through
                logger.exception("authentication failed unexpectedly; refusing the request")
                facts.auth, facts.principal, facts.auth_detail = "invalid", "", "authentication error"
        if facts.auth not in ("missing", "invalid"):
            return
        self.refused += 1
        json_answer(flow, 401, {"error": "unauthorized", "detail": facts.auth_detail}, "auth",
                    {"WWW-Authenticate": f'ApiKey realm="gatewatch", header="{self.spec.header}"'})
