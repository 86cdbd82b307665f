"""A tiny geo-IP hook for tests (the shape a geo-IP module will provide):
``lookup(ip) -> (asn, country) | None``. Not real data: documentation and
benchmark ranges (RFC 5737, RFC 2544) mapped to made-up networks."""

from __future__ import annotations

import ipaddress

_TABLE = [
    (ipaddress.ip_network("198.18.0.0/15"), (64502, "DE")),
    (ipaddress.ip_network("198.51.100.0/24"), (64501, "NL")),
    (ipaddress.ip_network("203.0.113.0/24"), (64500, "FR")),
]

NOT_CALLABLE = 42


def lookup(ip: str) -> tuple[int, str] | None:
    """``(asn, country)`` of ``ip`` in the table above, or None."""
    addr = ipaddress.ip_address(ip)
    for net, info in _TABLE:
        if addr.version == net.version and addr in net:
            return info
    return None


def broken(ip: str) -> None:
    """A hook that always fails (tests that failures are counted, not raised)."""
    raise RuntimeError("geo database unavailable")
