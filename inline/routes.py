"""Client identity and route templates: the first addon every request meets.

For each request it records, in :class:`inline.flowstate.FlowFacts`, the
client address (the socket peer, or the address forwarded by trusted
proxies only: :mod:`inline.client_identity`), the normalized path
that every later match uses (public routes, login routes) and the route
template the events carry (``/users/{id}``). A path the gateway cannot parse
is answered with 400 (``answered_by="bad_request"``).

The addon computes the facts in ``requestheaders`` (so later addons can read
them in their own ``requestheaders``) and answers bad paths in ``request``.
"""

from __future__ import annotations

import ipaddress
import re

from collections.abc import Sequence
from pathlib import Path

from mitmproxy import ctx, exceptions, http

from gatewatch.events import new_id
from gatewatch.settings import load_settings
from inline.client_identity import NO_PROXIES, TrustedProxies, resolve_client_ip
from inline.flowstate import METADATA_KEY, FlowFacts, answered, get_facts, json_answer
from inline.route_templates import RouteTable, load_openapi


class BadPath(ValueError):
    """A request target the gateway refuses to interpret (answered with 400)."""


_HEX = frozenset(b"0123456789abcdefABCDEF")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_LONG_HEX = re.compile(r"[0-9a-fA-F]{16,}")
_TOKEN = re.compile(r"[A-Za-z0-9_\-.~=]{20,}")
_HAS_LETTER = re.compile(r"[A-Za-z]")
_HAS_DIGIT = re.compile(r"[0-9]")

#: Placeholder that replaces identifier-like segments in route templates.
ID = "{id}"


def client_ip(peername: tuple | None) -> str:
    """Client address as text from a socket peername ``(host, port, ...)``.

    IPv4-mapped IPv6 addresses (``::ffff:192.0.2.1``, RFC 4291 §2.5.5.2, what a
    dual-stack socket reports for IPv4 clients) become plain IPv4; IPv6 is
    written in its canonical compressed form (RFC 5952) so that it compares
    with decision values. A zone id (``%eth0``) is dropped. Returns ``""`` if
    there is no peername and the text unchanged if it is not an address.
    """
    if not peername:
        return ""
    host = str(peername[0]).split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _percent_decode(raw: bytes) -> bytes:
    """Decode ``%XX`` escapes (RFC 3986 §2.1); raise :class:`BadPath` on a broken one
    or on an encoded slash or backslash."""
    if b"%" not in raw:
        return raw
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == 0x25:  # '%'
            hexpair = raw[i + 1:i + 3]
            if len(hexpair) != 2 or not all(h in _HEX for h in hexpair):
                raise BadPath("invalid percent-escape in path")
            value = int(hexpair, 16)
            if value in (0x2F, 0x5C):
                # An encoded '/' or '\' makes the gateway and the upstream
                # disagree on segments; refuse it, as Envoy's
                # path_with_escaped_slashes_action=REJECT_REQUEST does.
                raise BadPath("encoded slash in path")
            out.append(value)
            i += 3
        else:
            out.append(c)
            i += 1
    return bytes(out)


def normalize_path(target: str) -> str:
    """The path of a request target, normalized for matching.

    ``target`` is the request target as mitmproxy exposes it
    (``flow.request.path``: text decoded with ``surrogateescape``, query
    included). Steps: drop the query and fragment; percent-decode (RFC 3986
    §2.1) and decode UTF-8; collapse duplicate slashes; resolve ``.`` and
    ``..`` segments (RFC 3986 §5.2.4; ``..`` never climbs above ``/``); drop
    a trailing slash (except for ``/``).

    Example: ``"/api//v1/./users/../users/42/?x=1"`` → ``"/api/v1/users/42"``.

    Raises :class:`BadPath` if the target is not origin-form (does not start
    with ``/``, e.g. ``*``), has a broken ``%`` escape, an encoded slash or
    backslash, bytes that are not UTF-8, or control characters.

    The gateway forwards the raw target; matching on the normalized path
    assumes the upstream resolves dot segments as RFC 3986 says.
    """
    path = target.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        raise BadPath("request target is not an absolute path")
    try:
        text = _percent_decode(path.encode("utf-8", "surrogateescape")).decode("utf-8")
    except UnicodeError:
        raise BadPath("path is not valid UTF-8") from None
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise BadPath("control character in path")
    segments: list[str] = []
    for seg in text.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if segments:
                segments.pop()
            continue
        segments.append(seg)
    return "/" + "/".join(segments)


def is_id_segment(segment: str) -> bool:
    """True if a path segment looks like an identifier rather than a route word.

    Identifiers: all digits (``42``), a UUID (RFC 9562 text form), hex of 16+
    characters (hashes, object ids), or a token of 20+ characters drawn from
    ``[A-Za-z0-9_-.~=]`` that mixes letters and digits (opaque ids, slugs
    with random parts).
    """
    if segment.isdigit() and segment.isascii():
        return True
    if len(segment) >= 16 and (_UUID.fullmatch(segment) or _LONG_HEX.fullmatch(segment)):
        return True
    return (len(segment) >= 20 and _TOKEN.fullmatch(segment) is not None
            and _HAS_LETTER.search(segment) is not None and _HAS_DIGIT.search(segment) is not None)


def route_template(path: str) -> str:
    """Route template of a normalized path: identifier segments become ``{id}``.

    Example: ``"/users/42/orders/3f2a…(uuid)"`` → ``"/users/{id}/orders/{id}"``.
    """
    if path == "/":
        return path
    return "/".join(ID if is_id_segment(seg) else seg for seg in path.split("/"))


def route_for(path: str, table: RouteTable | None) -> str:
    """The route of a normalized ``path``: the matching template of ``table`` (OpenAPI
    document or configured patterns), else the normalizer's :func:`route_template`."""
    if table is not None:
        found = table.match(path)
        if found is not None:
            return found
    return route_template(path)


def build_facts(flow: http.HTTPFlow, trusted: TrustedProxies = NO_PROXIES) -> FlowFacts:
    """Fresh facts for ``flow``: a new event id, the client address (resolved
    through ``trusted`` proxies), the normalized path and route (or
    ``bad_path`` with the reason)."""
    peer = client_ip(flow.client_conn.peername)
    if len(trusted.networks) and flow.request is not None:
        peer = resolve_client_ip(peer, flow.request.headers.get_all(trusted.header), trusted)
    facts = FlowFacts(event_id=new_id(), client_ip=peer)
    try:
        facts.path = normalize_path(flow.request.path)
        facts.route = route_for(facts.path, _routes)
    except BadPath as exc:
        facts.bad_path = str(exc)
    return facts


#: Trusted proxies in force (set by :meth:`Routes.configure`); module-level so that
#: :func:`ensure_facts`, called by any addon, resolves the client the same way.
_trusted: TrustedProxies = NO_PROXIES
#: Route templates in force (OpenAPI document + configured patterns), or None.
_routes: RouteTable | None = None


def ensure_facts(flow: http.HTTPFlow) -> FlowFacts:
    """The facts of ``flow``, built and stored now if no hook has built them yet
    (for flows that fail before ``requestheaders``)."""
    facts = get_facts(flow)
    if facts is None:
        facts = flow.metadata[METADATA_KEY] = build_facts(flow, _trusted)
    return facts


class Routes:
    """Addon: records client address, normalized path and route template; 400s bad paths.

    Also stamps the event id on the forwarded request as ``X-Request-Id`` so
    that upstream logs can be joined with gateway events (a client-sent
    ``X-Request-Id`` is replaced). ``bad_requests`` counts 400 answers.

    Options: ``gatewatch_trusted_proxies`` (CIDRs whose forwarded header is
    believed), ``gatewatch_forwarded_header`` (``x-forwarded-for`` or
    ``forwarded``), ``gatewatch_openapi_spec`` (an OpenAPI 3 document whose
    paths are the route templates) and ``gatewatch_route_patterns`` (more
    templates); see :mod:`inline.route_templates`.
    """

    def __init__(self) -> None:
        self.bad_requests = 0

    def load(self, loader) -> None:
        s = load_settings()
        loader.add_option("gatewatch_trusted_proxies", Sequence[str], list(s.trusted_proxies),
                          "Proxy networks (CIDR) whose forwarded header names the client.")
        loader.add_option("gatewatch_forwarded_header", str, s.forwarded_header,
                          "Header the trusted proxies write: x-forwarded-for or forwarded (RFC 7239).")
        loader.add_option("gatewatch_openapi_spec", str, str(s.openapi_spec or ""),
                          "OpenAPI 3 document (JSON or YAML) whose paths are the route templates.")
        loader.add_option("gatewatch_route_patterns", Sequence[str], list(s.route_patterns),
                          "Route templates such as /books/{title}, tried after the OpenAPI paths.")

    def configure(self, updated: set[str]) -> None:
        global _trusted, _routes
        if updated & {"gatewatch_openapi_spec", "gatewatch_route_patterns"}:
            try:
                spec = ctx.options.gatewatch_openapi_spec.strip()
                templates = (load_openapi(Path(spec)) if spec else []) + list(ctx.options.gatewatch_route_patterns)
                _routes = RouteTable(templates) if templates else None
            except ValueError as exc:
                raise exceptions.OptionsError(f"gatewatch route templates: {exc}") from exc
        if not updated & {"gatewatch_trusted_proxies", "gatewatch_forwarded_header"}:
            return
        try:
            _trusted = TrustedProxies.parse(ctx.options.gatewatch_trusted_proxies,
                                            ctx.options.gatewatch_forwarded_header)
        except ValueError as exc:
            raise exceptions.OptionsError(f"gatewatch_trusted_proxies: {exc}") from exc

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        facts = ensure_facts(flow)
        flow.request.headers["X-Request-Id"] = facts.event_id

    def request(self, flow: http.HTTPFlow) -> None:
        if answered(flow):
            return
        facts = ensure_facts(flow)
        if facts.bad_path is not None:
            self.bad_requests += 1
            json_answer(flow, 400, {"error": "bad_request", "detail": facts.bad_path}, "bad_request")
