"""Client address: the socket peer, or the forwarded address through trusted proxies only.

When the gateway sits behind load balancers or CDNs, the socket peer is the
proxy and the client's address is in a header each proxy appends to:
``X-Forwarded-For: client, proxy1, proxy2`` (de facto standard) or
``Forwarded: for=client, for=proxy1`` (RFC 7239 §5.2). Anyone can send
those headers, so they are believed only as far as a chain of *trusted*
proxies vouches for them:

1. If the socket peer is not a trusted proxy, it is the client; the headers
   are ignored (a spoofed header from an untrusted peer changes nothing).
2. Otherwise walk the header's hops from the right (the hop the trusted
   peer itself added) to the left; the first hop that is *not* a trusted
   proxy is the client (the "right-most untrusted hop"). If every hop is
   trusted, the left-most one is the client.
3. A hop that is not an address (``unknown``, an RFC 7239 §6.3 obfuscated
   identifier such as ``_hidden``, garbage) ends the walk: the client is
   the last address that was vouched for (the trusted proxy that reported
   the unparseable hop).

This is the algorithm of nginx's ``real_ip_recursive on`` and of Envoy's
``xff_num_trusted_hops``/``original_ip_detection`` with trusted CIDRs, and
the one RFC 7239 §7.4 hints at ("the last proxy in the list that is
trusted"). Only one header is read, the one the operator's proxies write
(``forwarded_header``): reading both would let a client inject a
``Forwarded`` header that a proxy writing only ``X-Forwarded-For`` passes on
untouched.

Ports (``192.0.2.1:4711``, ``"[2001:db8::1]:4711"``) and IPv6 brackets are
removed; IPv4-mapped IPv6 becomes IPv4; IPv6 is written canonically
(RFC 5952). At most :data:`MAX_HOPS` hops are examined from the right, so a
hostile header costs bounded work.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from inline.lists import CidrSet, IPAddress, parse_address, parse_cidrs

#: Most hops examined, counted from the right.
MAX_HOPS = 32

HEADERS = ("x-forwarded-for", "forwarded")


@dataclass(frozen=True)
class TrustedProxies:
    """Parsed client-identity options: the trusted proxy networks and which header they write."""

    networks: CidrSet
    header: str = "x-forwarded-for"

    @classmethod
    def parse(cls, cidrs: Iterable[str], header: str = "x-forwarded-for") -> TrustedProxies:
        """From CIDR texts and a header name (``x-forwarded-for`` or ``forwarded``).
        Raises ``ValueError`` on a bad network or header name."""
        header = header.strip().lower()
        if header not in HEADERS:
            raise ValueError(f"forwarded header must be one of {HEADERS}, not {header!r}")
        return cls(CidrSet(parse_cidrs(cidrs, "trusted proxy")), header)


NO_PROXIES = TrustedProxies(CidrSet())


def _strip_port(node: str) -> str:
    """An address without brackets or port: ``[2001:db8::1]:80`` → ``2001:db8::1``,
    ``192.0.2.1:80`` → ``192.0.2.1``; a bare IPv6 address is left alone."""
    node = node.strip().strip('"').strip()
    if node.startswith("["):
        end = node.find("]")
        return node[1:end] if end > 0 else node
    if node.count(":") == 1:   # IPv4 with port; IPv6 has at least two colons
        return node.split(":", 1)[0]
    return node


def split_header_list(values: Sequence[str]) -> list[str]:
    """Elements of a comma-separated header list over every header line in order;
    empty elements dropped.

    Commas split even inside double quotes (which RFC 9110 §5.6.1 would
    keep together): otherwise a client could send an unbalanced ``"`` that
    swallows the hops the trusted proxies append after it. A quoted value
    that really contains a comma becomes unparseable hops, which only ends
    the walk early (see :func:`resolve_client_ip`).
    """
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def forwarded_for(element: str) -> str:
    """The ``for`` parameter of one ``Forwarded`` element (RFC 7239 §4:
    ``for=192.0.2.60;proto=http;by=203.0.113.43``), unquoted; ``""`` if absent."""
    for pair in element.split(";"):
        name, sep, value = pair.partition("=")
        if sep and name.strip().lower() == "for":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            return value
    return ""


def forwarded_hops(header: str, values: Sequence[str]) -> list[str]:
    """Hop texts, left (client side) to right (nearest proxy), of the ``header`` lines ``values``."""
    elements = split_header_list(values)[-MAX_HOPS:]
    if header == "forwarded":
        return [forwarded_for(e) for e in elements]
    return elements


def canonical(addr: IPAddress) -> str:
    """Address text as decisions and events use it (IPv4, or RFC 5952 IPv6)."""
    return str(addr)


def resolve_client_ip(peer: str, header_values: Sequence[str], trusted: TrustedProxies) -> str:
    """The client address of a request (see the module docstring for the algorithm).

    ``peer``: the socket peer address text (already canonical, see
    :func:`inline.routes.client_ip`); ``header_values``: every line of the
    configured forwarded header, in order. Returns address text; ``peer``
    unchanged when it is not an address or not trusted.
    """
    if not header_values or not len(trusted.networks):
        return peer
    current = parse_address(peer)
    if current is None or current not in trusted.networks:
        return peer
    for hop in reversed(forwarded_hops(trusted.header, header_values)):
        addr = parse_address(_strip_port(hop))
        if addr is None:
            break   # unknown / obfuscated / garbage: the last vouched-for address stands
        current = addr
        if addr not in trusted.networks:
            break
    return canonical(current)

