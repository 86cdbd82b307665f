"""Active decisions and allow entries in memory, matched in O(1) per scope.

The gateway keeps every active decision of the decisions topic in a
:class:`DecisionStore` (:mod:`inline.enforcement`), and its allow entries
(``gatewatch allowlist``) in a second one built with ``allow=True``; the
worker keeps the allow entries the same way so that its decision policy
issues no decision against an allow-listed value (:meth:`DecisionStore.covering`).
Pure: no I/O, the time (Unix seconds) is passed in.

What a request is matched on per scope is listed in :mod:`inline.enforcement`.
Values are canonical (:func:`canonical_value`).

Each scope is one dict lookup (prefix: one per distinct prefix length, at
most 33/129), so a request costs the same whatever the number of active
decisions. Memory: a decision is kept as a slotted :class:`Active` record
(id, scope, value, action, expiry), not the full pydantic record with its
evidence: ~100k decisions fit in a few tens of MB (``bench/decisions_memory.py``).

Keys of the decisions topic (:func:`parse_key`): ``scope:value`` for a
decision, ``allow:scope:value`` for an allow entry
(:data:`gatewatch.events.ALLOW_KEY_PREFIX`), so that a ban and an allow entry
for the same value live side by side; each store takes only its own kind.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

from gatewatch.events import (ALLOW_KEY_PREFIX, Decision, MalformedRecord, allow_key, decision_key,
                              parse_decision)

SCOPES = frozenset({"ip", "prefix", "principal", "username", "asn", "country"})
#: Order in which scopes are tried; among decisions of one action the first found wins.
MATCH_ORDER = ("ip", "prefix", "principal", "username", "asn", "country")

#: ``(asn, country)`` of a client address: the geo-IP hook's result.
GeoInfo = tuple[int | str | None, str | None]


def canonical_value(scope: str, value: str, prefix_v4: int = 24, prefix_v6: int = 64) -> str:
    """The form a decision value is stored and matched in.

    ``ip``: canonical address text (IPv4-mapped IPv6 as IPv4, RFC 5952 for
    IPv6); ``prefix``: canonical network with host bits cleared
    (``203.0.113.77/24`` → ``203.0.113.0/24``; a bare address gets
    ``prefix_v4``/``prefix_v6``); ``username``: lower-case (hex hash);
    ``asn``: the number as decimal text (``AS64500``, ``as64500``,
    ``64500`` → ``64500``); ``country``: upper-case two letters;
    ``principal``: unchanged. Raises :class:`MalformedRecord` for a value
    that does not fit its scope.
    """
    try:
        if scope == "ip":
            addr = ipaddress.ip_address(value)
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                return str(addr.ipv4_mapped)
            return str(addr)
        if scope == "prefix":
            if "/" not in value:
                addr = ipaddress.ip_address(value)
                if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                    addr = addr.ipv4_mapped
                value = f"{addr}/{prefix_v4 if addr.version == 4 else prefix_v6}"
            net = ipaddress.ip_network(value, strict=False)
            if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None \
                    and net.prefixlen >= 96:
                net = ipaddress.ip_network((net.network_address.ipv4_mapped, net.prefixlen - 96))
            return str(net)
        if scope == "username":
            if not value:
                raise ValueError("empty")
            return value.lower()
        if scope == "asn":
            digits = value[2:] if value[:2].lower() == "as" else value
            if not digits.isdigit() or not digits.isascii() or int(digits) >= 2**32:
                raise ValueError("not an AS number")
            return str(int(digits))
        if scope == "country":
            if len(value) != 2 or not value.isascii() or not value.isalpha():
                raise ValueError("not an ISO 3166-1 alpha-2 code")
            return value.upper()
    except ValueError as exc:
        raise MalformedRecord(f"bad {scope} value {value!r}: {exc}") from None
    return value


@dataclass(slots=True)
class Active:
    """One active decision as enforcement keeps it: no evidence, expiry in Unix seconds."""

    id: str
    scope: str
    value: str
    action: str
    expires: float

    @property
    def expires_at(self) -> datetime:
        """Expiry as an aware UTC datetime."""
        return datetime.fromtimestamp(self.expires, timezone.utc)

    def key(self) -> str:
        """The topic key: ``scope:value``, or ``allow:scope:value`` for an allow entry."""
        return allow_key(self.scope, self.value) if self.action == "allow" else decision_key(self.scope, self.value)


class DecisionStore:
    """Active decisions by scope and canonical value; O(1) lookup per scope.

    Times are Unix seconds (``now`` is passed in). ``prefix_v4``/``prefix_v6``:
    the length given to a prefix decision whose value is a bare address.
    ``allow``: this store holds allow entries (keys ``allow:scope:value``,
    action ``allow``) instead of decisions; :meth:`apply` refuses the other kind.
    """

    def __init__(self, prefix_v4: int = 24, prefix_v6: int = 64, allow: bool = False) -> None:
        self.prefix_v4, self.prefix_v6 = prefix_v4, prefix_v6
        self.allow = allow
        self._scopes: dict[str, dict[str, Active]] = {scope: {} for scope in SCOPES}
        # {IP version: {prefix length: number of prefix decisions}} and the lengths, longest first
        self._prefix_lens: dict[int, Counter[int]] = {4: Counter(), 6: Counter()}
        self._prefix_order: dict[int, tuple[int, ...]] = {4: (), 6: ()}
        # (expires, scope, value): may hold stale entries for replaced decisions; see expire()
        self._expiry: list[tuple[float, str, str]] = []

    def __len__(self) -> int:
        return sum(len(values) for values in self._scopes.values())

    def count(self, scope: str) -> int:
        """Active decisions of ``scope`` (expired ones not yet drained included)."""
        return len(self._scopes[scope])

    def canonical(self, scope: str, value: str) -> str:
        """:func:`canonical_value` with this store's default prefix lengths."""
        return canonical_value(scope, value, self.prefix_v4, self.prefix_v6)

    def put(self, decision: Decision) -> Active:
        """Store ``decision``, replacing the one with the same scope and value."""
        value = self.canonical(decision.scope, decision.value)
        self.delete(decision.scope, value)
        active = Active(decision.id, decision.scope, value, decision.action, decision.expires_at.timestamp())
        self._scopes[decision.scope][value] = active
        heapq.heappush(self._expiry, (active.expires, decision.scope, value))
        if len(self._expiry) > 2 * len(self) + 1024:   # replaced decisions left stale entries
            self._expiry = [(a.expires, a.scope, a.value) for values in self._scopes.values()
                            for a in values.values()]
            heapq.heapify(self._expiry)
        if decision.scope == "prefix":
            self._count_prefix(value, +1)
        return active

    def _count_prefix(self, value: str, delta: int) -> None:
        net = ipaddress.ip_network(value)
        lens = self._prefix_lens[net.version]
        lens[net.prefixlen] += delta
        if lens[net.prefixlen] <= 0:
            del lens[net.prefixlen]
        self._prefix_order[net.version] = tuple(sorted(lens, reverse=True))

    def delete(self, scope: str, value: str) -> bool:
        """Remove the decision for ``scope``/``value`` (canonical); True if there was one."""
        if self._scopes[scope].pop(value, None) is None:
            return False
        if scope == "prefix":
            self._count_prefix(value, -1)
        return True

    def apply(self, key: bytes | None, value: bytes | None, now: float) -> str:
        """Apply one message of the decisions topic at Unix time ``now``.

        ``value`` None is a tombstone for ``key`` (``b"scope:value"``, or
        ``b"allow:scope:value"`` in an allow store). Returns ``"set"`` or
        ``"deleted"``. Raises :class:`MalformedRecord` for a bad key, a bad
        decision, a key that is not the decision's, or a message of the other
        kind (an allow entry in a decision store or the reverse).
        """
        if value is None:
            scope, val = self._own_key(key)
            self.delete(scope, self.canonical(scope, val))
            return "deleted"
        decision = parse_decision(value)
        if (decision.action == "allow") != self.allow:
            raise MalformedRecord(f"a {decision.action} message does not belong in "
                                  f"the {'allow entries' if self.allow else 'decisions'}")
        canon = self.canonical(decision.scope, decision.value)
        if key is not None:
            scope, val = self._own_key(key)
            if scope != decision.scope or self.canonical(scope, val) != canon:
                raise MalformedRecord(f"key {key!r} is not the decision's {decision.key()!r}")
        if decision.expires_at.timestamp() <= now:
            self.delete(decision.scope, canon)
            return "deleted"
        self.put(decision)
        return "set"

    def _own_key(self, key: bytes | None) -> tuple[str, str]:
        allow, scope, value = parse_key(key)
        if allow != self.allow:
            raise MalformedRecord(f"key {key!r} does not belong in the {'allow entries' if self.allow else 'decisions'}")
        return scope, value

    def lookup(self, scope: str, value: str, now: float) -> Active | None:
        """The active decision for ``scope`` and canonical ``value`` at ``now``, or None.
        An expired decision found here is deleted."""
        active = self._scopes[scope].get(value)
        if active is None:
            return None
        if active.expires <= now:
            self.delete(scope, value)
            return None
        return active

    def candidates(self, now: float, client_ip: str = "", principal: str = "",
                   username_hash: str | None = None, geo: GeoInfo | None = None) -> Iterator[Active]:
        """Every active decision matching a request, in :data:`MATCH_ORDER`
        (prefixes longest first). ``client_ip`` must be canonical address text."""
        if client_ip:
            found = self.lookup("ip", client_ip, now)
            if found:
                yield found
            if self._scopes["prefix"]:
                try:
                    addr = ipaddress.ip_address(client_ip)
                except ValueError:
                    addr = None
                if addr is not None:
                    yield from self._prefixes_of(addr, addr.max_prefixlen, now)
        if principal:
            found = self.lookup("principal", principal, now)
            if found:
                yield found
        if username_hash:
            found = self.lookup("username", username_hash.lower(), now)
            if found:
                yield found
        if geo is not None:
            asn, country = geo
            if asn is not None and self._scopes["asn"]:
                try:
                    found = self.lookup("asn", canonical_value("asn", str(asn)), now)
                except MalformedRecord:
                    found = None
                if found:
                    yield found
            if country and self._scopes["country"]:
                found = self.lookup("country", str(country).upper(), now)
                if found:
                    yield found

    def _prefixes_of(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address, max_len: int,
                     now: float) -> Iterator[Active]:
        """Active prefix entries of ``addr``'s networks of length ≤ ``max_len``, longest first."""
        bits, number, cls = addr.max_prefixlen, int(addr), type(addr)
        for plen in self._prefix_order[addr.version]:
            if plen > max_len:
                continue
            host_bits = bits - plen
            found = self.lookup("prefix", f"{cls((number >> host_bits) << host_bits)}/{plen}", now)
            if found:
                yield found

    def covering(self, scope: str, value: str, now: float) -> Active | None:
        """The active entry that covers a detection's ``scope``/``value`` at ``now``, or None.

        ``ip``: an entry for that address or for a network containing it;
        ``prefix``: an entry for that network or a wider one containing it;
        ``principal``, ``username``, ``asn``, ``country``: an entry for that value. Other
        scopes (``route``, ``global``) and values that do not fit their scope: None.
        An address entry does not cover a network (a ban of the /24 still hits its other
        hosts; the gateway lets the allow-listed one through). Costs one lookup per
        distinct prefix length at most.
        """
        if scope not in SCOPES:
            return None
        try:
            canon = self.canonical(scope, value)
        except MalformedRecord:
            return None
        if scope == "ip":
            return next(self.candidates(now, client_ip=canon), None)
        if scope == "prefix":
            net = ipaddress.ip_network(canon)
            return next(self._prefixes_of(net.network_address, net.prefixlen, now), None)
        return self.lookup(scope, canon, now)

    def match(self, now: float, **request: object) -> Active | None:
        """The decision to enforce on a request (arguments of :meth:`candidates`): the
        first ``ban``, else the first ``challenge``, else the first ``throttle``, else None."""
        challenge = throttle = None
        for active in self.candidates(now, **request):  # type: ignore[arg-type]
            if active.action == "ban":
                return active
            if active.action == "challenge" and challenge is None:
                challenge = active
            elif active.action == "throttle" and throttle is None:
                throttle = active
        return challenge or throttle

    def match_request(self, client_ip: str, principal: str, now: float) -> Active | None:
        """The first active ``ban`` by ``ip``, ``prefix`` or ``principal`` (kept for callers
        of the first version); see :meth:`match` for every scope and action."""
        for active in self.candidates(now, client_ip=client_ip, principal=principal):
            if active.action == "ban":
                return active
        return None

    @property
    def has_geo(self) -> bool:
        """True while asn or country decisions exist (the geo hook is needed)."""
        return bool(self._scopes["asn"] or self._scopes["country"])

    def expire(self, now: float) -> int:
        """Delete every decision expired at ``now`` (O(k log n) for k expiries); returns how many."""
        removed = 0
        heap = self._expiry
        while heap and heap[0][0] <= now:
            expires, scope, value = heapq.heappop(heap)
            active = self._scopes[scope].get(value)
            if active is not None and active.expires == expires:
                self.delete(scope, value)
                removed += 1
        return removed

    sweep = expire


def parse_key(key: bytes | None) -> tuple[bool, str, str]:
    """``(is_allow_entry, scope, value)`` of a decisions-topic key: ``b"scope:value"`` or
    ``b"allow:scope:value"``. Raises :class:`MalformedRecord` for a missing key, one that
    is not UTF-8, an unknown scope or an empty value."""
    if not key:
        raise MalformedRecord("decision message without key")
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedRecord("decision key is not UTF-8") from None
    allow = text.startswith(ALLOW_KEY_PREFIX)
    scope, sep, value = text.removeprefix(ALLOW_KEY_PREFIX).partition(":")
    if not sep or scope not in SCOPES or not value:
        raise MalformedRecord(f"decision key {key!r} is not 'scope:value' nor 'allow:scope:value'")
    return allow, scope, value

