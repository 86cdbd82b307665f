"""Decision enforcement: follow the decisions topic, answer 403 to banned clients.

The gateway reads ``gatewatch.decisions`` from the beginning at start-up and
then follows it (CrowdSec's bouncer "stream, startup=true" model, pushed
rather than polled), keeping every active decision in memory as
``{scope: {value: decision}}`` so that a request costs a few dict lookups.
A message keyed ``scope:value`` replaces the decision for that key; a
tombstone (null value) or a decision whose ``expires_at`` has passed
deletes it; expiry is also checked at lookup time, so a decision lapses on
time even if no message says so. Malformed messages are counted and skipped.

Matched scopes: ``ip`` (the socket address), ``prefix`` (CIDR networks
containing it) and ``principal`` (the API-key id). ``username``, ``asn``
and ``country`` decisions are stored but not matched yet. Only ``ban`` is
enforced (403); ``throttle`` and ``challenge`` decisions are stored and
not enforced yet (the request passes; a tighter rate limit is future work).

Fail-open vs fail-closed (``gatewatch_decisions_fail_open``, default open):
until the topic has been read up to its high watermark once, requests
either pass (open) or get 503 (closed). After that the last known
decisions keep being enforced while the broker is away.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timezone

from mitmproxy import ctx, exceptions, http

from gatewatch.events import Decision, MalformedRecord, parse_decision
from gatewatch.settings import load_settings
from inline import brokers
from inline.flowstate import answered, get_facts, json_answer

logger = logging.getLogger(__name__)

SCOPES = frozenset({"ip", "prefix", "principal", "username", "asn", "country"})

#: Seconds between sweeps of expired decisions out of the store.
SWEEP_EVERY_S = 30.0
#: Longest wait for the consumer to close in ``done()``, seconds.
STOP_TIMEOUT_S = 3.0


def canonical_value(scope: str, value: str) -> str:
    """The form a decision value is stored and matched in.

    ``ip``: canonical address text (IPv4-mapped IPv6 as IPv4, RFC 5952 for
    IPv6); ``prefix``: canonical network (host bits cleared, e.g.
    ``203.0.113.0/24``); other scopes unchanged. Raises
    :class:`MalformedRecord` for an ``ip``/``prefix`` value that does not parse.
    """
    try:
        if scope == "ip":
            addr = ipaddress.ip_address(value)
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                return str(addr.ipv4_mapped)
            return str(addr)
        if scope == "prefix":
            return str(ipaddress.ip_network(value, strict=False))
    except ValueError as exc:
        raise MalformedRecord(f"bad {scope} value {value!r}: {exc}") from None
    return value


@dataclass(slots=True)
class _Entry:
    decision: Decision
    expires: float  # expires_at as Unix seconds


class DecisionStore:
    """Active decisions by scope and value; O(1) lookup per scope.

    Times are Unix seconds (``now`` is passed in). Prefix decisions are
    matched by computing, for each prefix length present in the store, the
    network of the client address: O(distinct lengths) per lookup.
    """

    def __init__(self) -> None:
        self._scopes: dict[str, dict[str, _Entry]] = {}
        # {IP version: {prefix length: number of prefix decisions}}
        self._prefix_lens: dict[int, Counter[int]] = {4: Counter(), 6: Counter()}

    def __len__(self) -> int:
        return sum(len(values) for values in self._scopes.values())

    def put(self, decision: Decision) -> None:
        """Store ``decision``, replacing the one with the same scope and value."""
        value = canonical_value(decision.scope, decision.value)
        self.delete(decision.scope, value)
        self._scopes.setdefault(decision.scope, {})[value] = _Entry(decision, decision.expires_at.timestamp())
        if decision.scope == "prefix":
            net = ipaddress.ip_network(value)
            self._prefix_lens[net.version][net.prefixlen] += 1

    def delete(self, scope: str, value: str) -> bool:
        """Remove the decision for ``scope``/``value`` (canonical); True if there was one."""
        entry = self._scopes.get(scope, {}).pop(value, None)
        if entry is None:
            return False
        if scope == "prefix":
            net = ipaddress.ip_network(value)
            lens = self._prefix_lens[net.version]
            lens[net.prefixlen] -= 1
            if lens[net.prefixlen] <= 0:
                del lens[net.prefixlen]
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
            self.delete(scope, canonical_value(scope, val))
            return "deleted"
        decision = parse_decision(value)
        canon = canonical_value(decision.scope, decision.value)
        if key is not None:
            scope, val = _parse_key(key)
            if scope != decision.scope or canonical_value(scope, val) != canon:
                raise MalformedRecord(f"key {key!r} is not the decision's scope:value")
        if decision.expires_at.timestamp() <= now:
            self.delete(decision.scope, canon)
            return "deleted"
        self.put(decision)
        return "set"

    def lookup(self, scope: str, value: str, now: float) -> Decision | None:
        """The active decision for ``scope`` and canonical ``value`` at ``now``, or None.
        An expired decision found here is deleted."""
        entry = self._scopes.get(scope, {}).get(value)
        if entry is None:
            return None
        if entry.expires <= now:
            self.delete(scope, value)
            return None
        return entry.decision

    def match_request(self, client_ip: str, principal: str, now: float) -> Decision | None:
        """The first active ``ban`` for a request: by ``ip``, then ``prefix``
        (longest first), then ``principal``; None if there is none."""
        for decision in self._candidates(client_ip, principal, now):
            if decision.action == "ban":
                return decision
        return None

    def _candidates(self, client_ip: str, principal: str, now: float):
        if client_ip:
            found = self.lookup("ip", client_ip, now)
            if found:
                yield found
            if self._scopes.get("prefix"):
                try:
                    addr = ipaddress.ip_address(client_ip)
                except ValueError:
                    addr = None
                if addr is not None:
                    for plen in sorted(self._prefix_lens[addr.version], reverse=True):
                        net = ipaddress.ip_network((addr, plen), strict=False)
                        found = self.lookup("prefix", str(net), now)
                        if found:
                            yield found
        if principal:
            found = self.lookup("principal", principal, now)
            if found:
                yield found

    def sweep(self, now: float) -> int:
        """Delete every decision expired at ``now``; returns how many."""
        stale = [(scope, value) for scope, values in self._scopes.items()
                 for value, entry in values.items() if entry.expires <= now]
        for scope, value in stale:
            self.delete(scope, value)
        return len(stale)


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


def blocked_body(decision: Decision) -> dict[str, str]:
    """JSON body of a 403 for ``decision``."""
    return {"error": "blocked", "decision_id": decision.id, "scope": decision.scope,
            "expires_at": decision.expires_at.astimezone(timezone.utc).isoformat()}


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
    skipped, broker (re)connection failures, requests blocked."""

    applied: int = 0
    deleted: int = 0
    malformed: int = 0
    reconnects: int = 0
    blocked: int = 0


class Enforcement:
    """Addon: follows the decisions topic in the background and answers 403 to
    requests matching an active ban (503 before the first load when fail-closed).

    Options: ``gatewatch_bootstrap_servers``, ``gatewatch_topic_decisions``,
    ``gatewatch_fetch_max_wait_ms``, ``gatewatch_decisions_fail_open``.
    Runs before authentication refuses (the principal is identified in
    ``requestheaders``), so banned clients learn nothing about their keys.
    """

    def __init__(self) -> None:
        self.store = DecisionStore()
        self.stats = EnforcementStats()
        self.spec: FeedSpec | None = None
        self.loaded = False
        self._task: asyncio.Task | None = None

    def load(self, loader) -> None:
        s = load_settings()
        brokers.add_bootstrap_option(loader)
        loader.add_option("gatewatch_topic_decisions", str, s.topic_decisions,
                          "Topic the gateway reads decisions from.")
        loader.add_option("gatewatch_fetch_max_wait_ms", int, s.fetch_max_wait_ms,
                          "Longest wait of a decisions fetch, ms (Tansu does not wake waiting fetches).")
        loader.add_option("gatewatch_decisions_fail_open", bool, True,
                          "Before decisions are loaded: pass requests (true) or answer 503 (false).")

    def configure(self, updated: set[str]) -> None:
        names = {"gatewatch_bootstrap_servers", "gatewatch_topic_decisions",
                 "gatewatch_fetch_max_wait_ms", "gatewatch_decisions_fail_open"}
        if not updated & names:
            return
        o = ctx.options
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
            self.store, self.loaded = DecisionStore(), False
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

    def request(self, flow: http.HTTPFlow) -> None:
        facts = get_facts(flow)
        if facts is None or answered(flow):
            return
        if not self.loaded and self.spec is not None and not self.spec.fail_open:
            json_answer(flow, 503, {"error": "unavailable", "detail": "decisions not loaded yet"},
                        "decision", {"Retry-After": "1"})
            return
        now = time.time()
        decision = self.store.match_request(facts.client_ip, facts.principal, now)
        if decision is None:
            return
        self.stats.blocked += 1
        facts.decision_id = decision.id
        retry = max(1, math.ceil(decision.expires_at.timestamp() - now))
        json_answer(flow, 403, blocked_body(decision), "decision", {"Retry-After": str(retry)})

    def apply(self, key: bytes | None, value: bytes | None, now: float) -> None:
        """Apply one decisions message, counting it; malformed ones are counted and skipped."""
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
                last_sweep = time.time()
                while True:
                    batches = await consumer.getmany(timeout_ms=1000, max_records=1000)
                    now = time.time()
                    for records in batches.values():
                        for record in records:
                            self.apply(record.key, record.value, now)
                    if not self.loaded:
                        self.loaded = await _caught_up(consumer, tps)
                    if now - last_sweep >= SWEEP_EVERY_S:
                        self.store.sweep(now)
                        last_sweep = now
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


async def _caught_up(consumer, tps) -> bool:
    """True when every partition's position has reached its high watermark
    (the watermark returned with fetched records, which is right on Tansu)."""
    for tp in tps:
        highwater = consumer.highwater(tp)
        if highwater is None or await consumer.position(tp) < highwater:
            return False
    return True

