"""Decision enforcement: follow the decisions topic, answer 403 (ban) or 429 (throttle).

The gateway reads ``gatewatch.decisions`` from the beginning at start-up and
then follows it (CrowdSec's bouncer "stream, startup=true" model, pushed
rather than polled), keeping every active decision in memory. A message
keyed ``scope:value`` replaces the decision for that key; a tombstone (null
value) or a decision whose ``expires_at`` has passed deletes it; expiry is
also honoured locally — at lookup time and by a heap of expiry times
drained at least once a second — so a decision lapses on time even if no
message says so. Malformed messages are counted and skipped.

Only authenticated messages are applied (:mod:`gatewatch.signing`: an
HMAC-SHA256 over key and value in the ``gatewatch-sig`` record header, one
of the accepted keys). A message without a signature (``unsigned``) or with
one that does not verify (``bad_signature``: wrong or unknown key, tampered
key or value) is counted and ignored before it is parsed, tombstones
included, so write access to the topic alone can neither ban a client nor
lift a ban. ``gatewatch_decision_signing_required = false`` (a migration
aid) accepts unsigned messages; a bad signature is refused either way.
Keys are read at start-up; a changed key does not re-judge what was applied.

Scopes and what a request is matched on (all values canonical, see
:func:`canonical_value`):

=============  ==============================================================
``ip``         the client address (:mod:`inline.client_identity`)
``prefix``     every network of the client address whose length is present
               in the store (a bare address as value means the default
               /24 for IPv4, /64 for IPv6: ``gatewatch_decision_prefix_v4/v6``)
``principal``  the API-key id / token subject from authentication
``username``   the keyed username hash of a login request (the value of the
               event's ``username_hash``); checked by :class:`LoginStage`,
               which runs after :class:`inline.login.Login` has read the body
``asn``        the client's autonomous system number, from the geo hook
``country``    the client's ISO 3166-1 alpha-2 country, from the geo hook
=============  ==============================================================

Each scope is one dict lookup (prefix: one per distinct prefix length, at
most 33/129), so a request costs the same whatever the number of active
decisions. Memory: a decision is kept as a slotted :class:`Active` record
(id, scope, value, action, expiry), not the full pydantic record with its
evidence: ~100k decisions fit in a few tens of MB (``bench/decisions_memory.py``).

Actions: ``ban`` → 403 with ``Retry-After`` until expiry; ``throttle`` → a
tighter GCRA limit (``gatewatch_throttle_rate_limit``) per matching client
address and decision, 429 beyond it; ``challenge`` is stored, not enforced.
When several decisions match, a ban wins over a throttle. Allow-listed
clients (:mod:`inline.lists`) are never blocked or throttled.

Geo hook (``gatewatch_geo_lookup = "module:function"``): a function of the
client address text returning ``(asn, country)`` (either may be None) or
None; it is called only while asn/country decisions exist. A hook that
raises is counted (``geo_errors``) and treated as "no data".

Fail-open vs fail-closed (``gatewatch_decisions_fail_open``, default open):
until the topic has been read up to its high watermark once, requests
either pass (open) or get 503 (closed). After that the last known
decisions keep being enforced while the broker is away.
"""

from __future__ import annotations

import asyncio
import heapq
import importlib
import ipaddress
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

from mitmproxy import ctx, exceptions, http

from gatewatch.events import Decision, MalformedRecord, decision_key, parse_decision
from gatewatch.settings import load_settings
from gatewatch.signing import DecisionVerifier, Headers
from inline import brokers, flowtags
from inline.flowstate import FlowFacts, answered, get_facts, json_answer
from inline.ratelimit import GcraLimiter, format_rate_limit, parse_rate_limit, retry_after_header

logger = logging.getLogger(__name__)

SCOPES = frozenset({"ip", "prefix", "principal", "username", "asn", "country"})
#: Order in which scopes are tried; among decisions of one action the first found wins.
MATCH_ORDER = ("ip", "prefix", "principal", "username", "asn", "country")

#: Seconds between drains of the expiry heap.
EXPIRE_EVERY_S = 1.0
#: Longest wait for the consumer to close in ``done()``, seconds.
STOP_TIMEOUT_S = 3.0

#: ``(asn, country)`` of a client address, or None: the geo-IP hook's result.
GeoInfo = tuple[int | str | None, str | None]
GeoLookup = Callable[[str], GeoInfo | None]


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
        """``scope:value`` (the topic key)."""
        return decision_key(self.scope, self.value)


class DecisionStore:
    """Active decisions by scope and canonical value; O(1) lookup per scope.

    Times are Unix seconds (``now`` is passed in). ``prefix_v4``/``prefix_v6``:
    the length given to a prefix decision whose value is a bare address.
    """

    def __init__(self, prefix_v4: int = 24, prefix_v6: int = 64) -> None:
        self.prefix_v4, self.prefix_v6 = prefix_v4, prefix_v6
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

        ``value`` None is a tombstone for ``key`` (``b"scope:value"``). Returns
        ``"set"`` or ``"deleted"``. Raises :class:`MalformedRecord` for a bad
        key, a bad decision, or a key that is not the decision's
        ``scope:value``.
        """
        if value is None:
            scope, val = _parse_key(key)
            self.delete(scope, self.canonical(scope, val))
            return "deleted"
        decision = parse_decision(value)
        canon = self.canonical(decision.scope, decision.value)
        if key is not None:
            scope, val = _parse_key(key)
            if scope != decision.scope or self.canonical(scope, val) != canon:
                raise MalformedRecord(f"key {key!r} is not the decision's scope:value")
        if decision.expires_at.timestamp() <= now:
            self.delete(decision.scope, canon)
            return "deleted"
        self.put(decision)
        return "set"

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
                    bits, number, cls = addr.max_prefixlen, int(addr), type(addr)
                    for plen in self._prefix_order[addr.version]:
                        host_bits = bits - plen
                        found = self.lookup("prefix", f"{cls((number >> host_bits) << host_bits)}/{plen}", now)
                        if found:
                            yield found
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

    def match(self, now: float, **request: object) -> Active | None:
        """The decision to enforce on a request (arguments of :meth:`candidates`): the
        first ``ban``, else the first ``throttle``, else None (``challenge`` is not enforced)."""
        throttle = None
        for active in self.candidates(now, **request):  # type: ignore[arg-type]
            if active.action == "ban":
                return active
            if active.action == "throttle" and throttle is None:
                throttle = active
        return throttle

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


def _parse_key(key: bytes | None) -> tuple[str, str]:
    if not key:
        raise MalformedRecord("decision message without key")
    try:
        scope, sep, value = key.decode("utf-8").partition(":")
    except UnicodeDecodeError:
        raise MalformedRecord("decision key is not UTF-8") from None
    if not sep or scope not in SCOPES or not value:
        raise MalformedRecord(f"decision key {key!r} is not 'scope:value'")
    return scope, value


def blocked_body(active: Active) -> dict[str, str]:
    """JSON body of a 403 for ``active``."""
    return {"error": "blocked", "decision_id": active.id, "scope": active.scope,
            "expires_at": active.expires_at.isoformat()}


def load_geo_lookup(spec: str) -> GeoLookup | None:
    """The geo hook named ``"module:function"`` (None for ``""``).
    Raises ``ValueError`` if it cannot be imported or is not callable."""
    spec = spec.strip()
    if not spec:
        return None
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"geo lookup {spec!r} is not 'module:function'")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"geo lookup {spec!r}: {exc}") from None
    if not callable(fn):
        raise ValueError(f"geo lookup {spec!r} is not callable")
    return fn


@dataclass(frozen=True)
class FeedSpec:
    """Parsed options of the decisions feed."""

    bootstrap_servers: str
    topic: str
    fetch_max_wait_ms: int
    fail_open: bool


@dataclass
class EnforcementStats:
    """Counters for metrics: messages applied, deletions, malformed messages
    skipped, messages ignored for lack of a valid signature (``unsigned``: none;
    ``bad_signature``: one that does not verify), broker (re)connection
    failures, requests blocked (403) and throttled (429), geo-hook failures."""

    applied: int = 0
    deleted: int = 0
    malformed: int = 0
    unsigned: int = 0
    bad_signature: int = 0
    reconnects: int = 0
    blocked: int = 0
    throttled: int = 0
    geo_errors: int = 0


class Enforcement:
    """Addon: follows the decisions topic in the background and enforces bans (403) and
    throttles (429) on requests (503 before the first load when fail-closed).

    Options: ``gatewatch_bootstrap_servers``, ``gatewatch_topic_decisions``,
    ``gatewatch_fetch_max_wait_ms``, ``gatewatch_decisions_fail_open``,
    ``gatewatch_decision_prefix_v4``/``_v6``, ``gatewatch_throttle_rate_limit``,
    ``gatewatch_geo_lookup``, ``gatewatch_decision_signing_key``/``_kid``,
    ``gatewatch_decision_verify_keys`` (JSON ``{kid: secret}``),
    ``gatewatch_decision_signing_required``. Runs before authentication refuses (the
    principal is identified in ``requestheaders``), so banned clients learn
    nothing about their keys. :attr:`after_login` is a second addon, to be
    placed after :class:`inline.login.Login`, that enforces ``username``
    decisions.
    """

    def __init__(self) -> None:
        self.store = DecisionStore()
        self.stats = EnforcementStats()
        self.spec: FeedSpec | None = None
        self.loaded = False
        self.throttle: GcraLimiter | None = None
        self.geo_lookup: GeoLookup | None = None
        self.after_login = LoginStage(self)
        self.verifier = DecisionVerifier.from_settings(load_settings())
        self._task: asyncio.Task | None = None

    def load(self, loader) -> None:
        s = load_settings()
        brokers.add_bootstrap_option(loader)
        loader.add_option("gatewatch_topic_decisions", str, s.topic_decisions,
                          "Topic the gateway reads decisions from.")
        loader.add_option("gatewatch_fetch_max_wait_ms", int, s.fetch_max_wait_ms,
                          "Longest wait of a decisions fetch, ms (Tansu does not wake waiting fetches).")
        loader.add_option("gatewatch_decisions_fail_open", bool, s.decisions_fail_open,
                          "Before decisions are loaded: pass requests (true) or answer 503 (false).")
        loader.add_option("gatewatch_decision_prefix_v4", int, s.decision_prefix_v4,
                          "Length of an IPv4 prefix decision given as a bare address.")
        loader.add_option("gatewatch_decision_prefix_v6", int, s.decision_prefix_v6,
                          "Length of an IPv6 prefix decision given as a bare address.")
        loader.add_option("gatewatch_throttle_rate_limit", str, format_rate_limit(s.throttle_rate_limit),
                          "Limit of a client under a throttle decision, 'RATE:BURST'.")
        loader.add_option("gatewatch_geo_lookup", str, s.geo_lookup,
                          "'module:function' giving (asn, country) of a client IP, for asn/country decisions.")
        loader.add_option("gatewatch_decision_signing_key", str, s.decision_signing_key,
                          "Secret key (HMAC-SHA256) decision messages must be signed with.")
        loader.add_option("gatewatch_decision_signing_kid", str, s.decision_signing_kid,
                          "Key id of gatewatch_decision_signing_key.")
        loader.add_option("gatewatch_decision_verify_keys", str, json.dumps(s.decision_verify_keys),
                          "Further accepted decision keys, JSON {kid: secret} (key rotation).")
        loader.add_option("gatewatch_decision_signing_required", bool, s.decision_signing_required,
                          "Ignore unsigned decision messages (false accepts them; bad signatures never).")

    def configure(self, updated: set[str]) -> None:
        o = ctx.options
        if "gatewatch_throttle_rate_limit" in updated:
            try:
                spec = parse_rate_limit(o.gatewatch_throttle_rate_limit)
            except ValueError as exc:
                raise exceptions.OptionsError(f"gatewatch_throttle_rate_limit: {exc}") from exc
            if spec is None:
                raise exceptions.OptionsError("gatewatch_throttle_rate_limit cannot be 'off'")
            self.throttle = GcraLimiter(spec)
        if "gatewatch_geo_lookup" in updated:
            try:
                self.geo_lookup = load_geo_lookup(o.gatewatch_geo_lookup)
            except ValueError as exc:
                raise exceptions.OptionsError(str(exc)) from exc
        signing = {"gatewatch_decision_signing_key", "gatewatch_decision_signing_kid",
                   "gatewatch_decision_verify_keys", "gatewatch_decision_signing_required"}
        if updated & signing:
            try:
                extra = json.loads(o.gatewatch_decision_verify_keys or "{}")
                if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
                    raise ValueError("gatewatch_decision_verify_keys must be a JSON object of strings")
                self.verifier = DecisionVerifier.from_config(
                    o.gatewatch_decision_signing_kid, o.gatewatch_decision_signing_key, extra,
                    o.gatewatch_decision_signing_required)
            except ValueError as exc:
                raise exceptions.OptionsError(f"decision signing: {exc}") from exc
        if updated & {"gatewatch_decision_prefix_v4", "gatewatch_decision_prefix_v6"}:
            v4, v6 = o.gatewatch_decision_prefix_v4, o.gatewatch_decision_prefix_v6
            if not (0 <= v4 <= 32 and 0 <= v6 <= 128):
                raise exceptions.OptionsError("decision prefix lengths must be within 0..32 (v4), 0..128 (v6)")
            if (v4, v6) != (self.store.prefix_v4, self.store.prefix_v6):
                if len(self.store):
                    raise exceptions.OptionsError("decision prefix lengths cannot change once decisions are loaded")
                self.store = DecisionStore(v4, v6)
        names = {"gatewatch_bootstrap_servers", "gatewatch_topic_decisions",
                 "gatewatch_fetch_max_wait_ms", "gatewatch_decisions_fail_open"}
        if not updated & names:
            return
        if not o.gatewatch_bootstrap_servers.strip():
            raise exceptions.OptionsError("gatewatch_bootstrap_servers must not be empty")
        if not o.gatewatch_topic_decisions.strip():
            raise exceptions.OptionsError("gatewatch_topic_decisions must not be empty")
        if not 0 <= o.gatewatch_fetch_max_wait_ms <= 60_000:
            raise exceptions.OptionsError("gatewatch_fetch_max_wait_ms must be within 0..60000")
        old = self.spec
        self.spec = FeedSpec(o.gatewatch_bootstrap_servers.strip(), o.gatewatch_topic_decisions.strip(),
                             o.gatewatch_fetch_max_wait_ms, o.gatewatch_decisions_fail_open)
        if self._task is not None and old is not None and (
                old.bootstrap_servers, old.topic) != (self.spec.bootstrap_servers, self.spec.topic):
            self._task.cancel()
            self.store, self.loaded = DecisionStore(self.store.prefix_v4, self.store.prefix_v6), False
            self._task = asyncio.create_task(self._follow(self.spec), name="gatewatch decisions feed")

    def running(self) -> None:
        brokers.quiet_aiokafka_errors()
        if self._task is None and self.spec is not None:
            self._task = asyncio.create_task(self._follow(self.spec), name="gatewatch decisions feed")

    async def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await asyncio.wait_for(self._task, STOP_TIMEOUT_S)
            except (asyncio.CancelledError, asyncio.TimeoutError):
                pass
            self._task = None

    def geo(self, facts: FlowFacts) -> GeoInfo | None:
        """``(asn, country)`` of the client — only while asn/country decisions exist.

        From the facts the geo addon (:mod:`inline.geo`) recorded, else from the
        geo hook; None without data, or when the hook raises (counted)."""
        if not self.store.has_geo:
            return None
        if facts.asn is not None or facts.country is not None:
            return facts.asn, facts.country
        if self.geo_lookup is None or not facts.client_ip:
            return None
        try:
            return self.geo_lookup(facts.client_ip)
        except Exception as exc:  # a broken hook must not break requests: no data (counted)
            self.stats.geo_errors += 1
            logger.warning("geo lookup failed for a client: %s: %s", type(exc).__name__, exc)
            return None

    def request(self, flow: http.HTTPFlow) -> None:
        facts = get_facts(flow)
        if facts is None or answered(flow) or flowtags.allow_listed(flow):
            return
        if not self.loaded and self.spec is not None and not self.spec.fail_open:
            json_answer(flow, 503, {"error": "unavailable", "detail": "decisions not loaded yet"},
                        "decision", {"Retry-After": "1"})
            return
        if not len(self.store):
            return
        now = time.time()
        active = self.store.match(now, client_ip=facts.client_ip, principal=facts.principal,
                                  geo=self.geo(facts))
        if active is not None:
            self.enforce(flow, facts, active, now)

    def enforce(self, flow: http.HTTPFlow, facts: FlowFacts, active: Active, now: float) -> None:
        """Answer ``flow`` for decision ``active``: 403 for a ban; for a throttle, 429
        once the client exceeds the throttle limit (else the request passes)."""
        if active.action == "ban":
            self.stats.blocked += 1
            facts.decision_id = active.id
            flowtags.mark_blocked(flow, active.scope)
            retry = max(1, math.ceil(active.expires - now))
            json_answer(flow, 403, blocked_body(active), "decision", {"Retry-After": str(retry)})
            return
        if self.throttle is None:
            return
        facts.decision_id = active.id
        wait = self.throttle.hit(f"{active.key()}|{facts.client_ip}", time.monotonic())
        if wait > 0:
            self.stats.throttled += 1
            flowtags.mark_blocked(flow, "throttle")
            header = retry_after_header(wait)
            json_answer(flow, 429, {"error": "rate_limited", "scope": "throttle", "decision_id": active.id,
                                    "retry_after_s": int(header)}, "rate_limit", {"Retry-After": header})

    def apply(self, key: bytes | None, value: bytes | None, now: float, headers: Headers = None) -> None:
        """Apply one decisions message with its record ``headers``, counting it. One without a
        valid signature is counted (``unsigned`` / ``bad_signature``) and ignored; a malformed
        one is counted and skipped."""
        rejected = self.verifier.rejects(key, value, headers)
        if rejected is not None:
            if rejected == "unsigned":
                self.stats.unsigned += 1
                count = self.stats.unsigned
            else:
                self.stats.bad_signature += 1
                count = self.stats.bad_signature
            if count <= 10 or count % 1000 == 0:   # a flood of forged messages must not flood the log
                logger.warning("ignoring decision message with %s (key %r; %d so far)",
                               "no signature" if rejected == "unsigned" else "a bad signature", key, count)
            return
        try:
            result = self.store.apply(key, value, now)
        except MalformedRecord as exc:
            self.stats.malformed += 1
            logger.warning("skipping malformed decision message (key %r): %s", key, exc)
            return
        self.stats.applied += 1
        if result == "deleted":
            self.stats.deleted += 1

    async def _follow(self, spec: FeedSpec) -> None:
        """Read the decisions topic from the beginning, then follow it; reconnect forever."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        delays = brokers.backoff()
        while True:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=spec.bootstrap_servers, group_id=None, enable_auto_commit=False,
                auto_offset_reset="earliest", fetch_max_wait_ms=spec.fetch_max_wait_ms,
                client_id="gatewatch-gateway-decisions")
            try:
                await consumer.start()
                await consumer.topics()  # refresh metadata so the topic's partitions are known
                partitions = consumer.partitions_for_topic(spec.topic)
                if not partitions:
                    raise LookupError(f"topic {spec.topic} not found")
                tps = [TopicPartition(spec.topic, p) for p in sorted(partitions)]
                consumer.assign(tps)
                # Tansu quirk: "latest" offsets are wrong there (start of the last
                # batch + 1), so never seek_to_end / auto_offset_reset="latest";
                # read everything from the beginning.
                await consumer.seek_to_beginning(*tps)
                delays = brokers.backoff()
                last_expire = time.time()
                while True:
                    batches = await consumer.getmany(timeout_ms=1000, max_records=1000)
                    now = time.time()
                    for records in batches.values():
                        for record in records:
                            self.apply(record.key, record.value, now, record.headers)
                    if not self.loaded:
                        self.loaded = await _caught_up(consumer, tps)
                    if now - last_expire >= EXPIRE_EVERY_S:
                        self.store.expire(now)
                        last_expire = now
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker is away or the topic missing: retry
                self.stats.reconnects += 1
                # Warning, not error: see inline/brokers.py (mitmdump start-up quirk).
                logger.warning("decisions feed %s/%s unavailable (%s: %s); retrying",
                               spec.bootstrap_servers, spec.topic, type(exc).__name__, exc)
            finally:
                try:
                    await consumer.stop()
                except Exception as exc:  # closing a half-started consumer
                    logger.debug("closing decisions consumer: %s", exc)
            await asyncio.sleep(next(delays))


class LoginStage:
    """Addon (second stage of :class:`Enforcement`): enforces ``username`` decisions.

    The username hash is known only once :class:`inline.login.Login` has read
    the login request's body in its ``request`` hook, after the first stage
    ran; so this stage goes right after ``Login`` in the addon list.
    """

    def __init__(self, enforcement: Enforcement) -> None:
        self.enforcement = enforcement

    def request(self, flow: http.HTTPFlow) -> None:
        facts = get_facts(flow)
        if facts is None or not facts.username_hash or answered(flow) or flowtags.allow_listed(flow):
            return
        store = self.enforcement.store
        if not store.count("username"):
            return
        now = time.time()
        active = store.match(now, username_hash=facts.username_hash)
        if active is not None:
            self.enforcement.enforce(flow, facts, active, now)


async def _caught_up(consumer, tps) -> bool:
    """True when every partition's position has reached its high watermark
    (the watermark returned with fetched records, which is right on Tansu)."""
    for tp in tps:
        highwater = consumer.highwater(tp)
        if highwater is None or await consumer.position(tp) < highwater:
            return False
    return True

