"""Read and write the decisions topic from synchronous tools (the CLI, reports).

The topic ``gatewatch.decisions`` is the log of every decision, keyed
``scope:value``: the latest message per key wins, a tombstone (null value)
deletes, and a decision past ``expires_at`` is over. :func:`delete` publishes
both a deletion record (a decision with no lifetime, which the store keeps)
and a tombstone (which a compacted topic keeps). The gateway follows it
in its event loop (aiokafka); this module is the kafka-python side for
tools. Manual decisions published here are enforced exactly like detector
decisions.

Allow entries (``gatewatch allowlist``, :func:`allow_entry`) travel on the
same topic as decisions with action ``allow``, keyed ``allow:scope:value``, so
that a ban and an allow entry for the same value both exist; :class:`DecisionLog`
lists each kind apart, and :func:`delete` takes ``allow=True`` for them.

Messages are signed with the settings' decision key (:mod:`gatewatch.signing`,
tombstones too) and only those with a valid signature are read; the others
are counted (``unsigned``, ``bad_signature``) apart from ``malformed`` ones.

Tansu quirk: its "latest offset" answer is the start of the last batch + 1,
not the end. :func:`read_decisions` therefore reads until its position
reaches the high-watermark returned with fetched records (which is right),
never trusting ``end_offsets``.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from gatewatch.decision_store import canonical_value
from gatewatch.events import ALLOW_SCOPES, Decision, MalformedRecord, allow_key, decision_key, parse_decision
from gatewatch.settings import GatewatchSettings
from gatewatch.signing import DecisionSigner, DecisionVerifier, Headers


@dataclass
class DecisionLog:
    """The state of the topic after reading it: ``latest`` decision per key
    (tombstoned keys removed), how many messages were ``malformed``, and how
    many were ignored for having no signature (``unsigned``) or one that does
    not verify (``bad_signature``)."""

    latest: dict[str, Decision] = field(default_factory=dict)
    malformed: int = 0
    unsigned: int = 0
    bad_signature: int = 0
    messages: int = 0

    def active(self, now: datetime | None = None, allow: bool = False) -> list[Decision]:
        """Decisions (``allow=True``: allow entries) not yet expired at ``now`` (default: the
        current time), newest first."""
        now = now or datetime.now(timezone.utc)
        return sorted((d for d in self.latest.values() if d.active_at(now) and (d.action == "allow") == allow),
                      key=lambda d: d.created_at, reverse=True)

    def by_id(self, decision_id: str, allow: bool = False) -> Decision | None:
        """The latest decision (``allow=True``: allow entry) with this id, if any."""
        return next((d for d in self.latest.values() if d.id == decision_id and (d.action == "allow") == allow),
                    None)


def read_decisions(settings: GatewatchSettings, timeout_s: float = 10.0) -> DecisionLog:
    """Read the whole decisions topic from the beginning.

    Raises ``TimeoutError`` if the end is not reached in ``timeout_s`` seconds
    (for example when the broker is down).
    """
    _reachable(settings.bootstrap_servers, timeout_s)
    verifier = DecisionVerifier.from_settings(settings)
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                             fetch_max_wait_ms=settings.fetch_max_wait_ms,
                             request_timeout_ms=int(max(timeout_s, 5) * 1000) + 1000)
    log = DecisionLog()
    try:
        partitions = consumer.partitions_for_topic(settings.topic_decisions) or set()
        tps = [TopicPartition(settings.topic_decisions, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        done: set[TopicPartition] = set()
        while len(done) < len(tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"decisions topic not read to its end in {timeout_s:.0f} s")
            for tp, records in consumer.poll(timeout_ms=200).items():
                for rec in records:
                    _apply(log, rec.key, rec.value, rec.headers, verifier)
            for tp in tps:
                high = consumer.highwater(tp)
                if high is not None and consumer.position(tp) >= high:
                    done.add(tp)
    finally:
        consumer.close()
    return log


def _reachable(bootstrap: str, timeout_s: float) -> None:
    # kafka-python spends its whole request timeout on an unreachable bootstrap list;
    # a TCP connect tells at once. Raises TimeoutError when no listed broker answers.
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=min(timeout_s, 2.0)).close()
            return
        except (OSError, ValueError):
            continue
    raise TimeoutError(f"no broker answers at {bootstrap}")


def _apply(log: DecisionLog, key: bytes | None, value: bytes | None, headers: Headers,
           verifier: DecisionVerifier) -> None:
    log.messages += 1
    rejected = verifier.rejects(key, value, headers)
    if rejected == "unsigned":
        log.unsigned += 1
        return
    if rejected is not None:
        log.bad_signature += 1
        return
    if value is None:
        log.latest.pop((key or b"").decode(errors="replace"), None)
        return
    try:
        decision = parse_decision(value)
    except MalformedRecord:
        log.malformed += 1
        return
    log.latest[decision.key()] = decision


def _producer(settings: GatewatchSettings) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks=1)


def publish(settings: GatewatchSettings, decision: Decision) -> None:
    """Publish ``decision`` keyed ``scope:value``, signed, and wait for the broker's ack."""
    key, value = decision.key().encode(), decision.to_json()
    headers = DecisionSigner.from_settings(settings).headers(key, value)
    producer = _producer(settings)
    try:
        producer.send(settings.topic_decisions, key=key, value=value, headers=headers).get(10)
    finally:
        producer.close()


def lift(scope: str, value: str, current: Decision | None = None, now: datetime | None = None,
         allow: bool = False) -> Decision:
    """The deletion record of the decision (``allow=True``: allow entry) for
    ``scope``/``value``: a decision of zero lifetime (``created_at == expires_at ==
    now``, "an ``expires_at`` in the past deletes" in the decision protocol).

    It carries ``current``'s detector, action and detection id (when the decision
    being lifted is known), so that its alert has the labels of the alert it ends;
    ``evidence["lifts"]`` names the id it lifts. Raises ``ValueError`` for an
    unknown scope.
    """
    now = now or datetime.now(timezone.utc)
    action = "allow" if allow else current.action if current else "ban"
    return Decision(scope=scope, value=value, action=action,
                    detector=current.detector if current else "manual",
                    detection_id=current.detection_id if current else None,
                    reason=f"deleted: {current.reason}" if current else "deleted", origin="cli",
                    created_at=now, expires_at=now,
                    evidence={"by": "cli", "lifts": current.id if current else None})


def is_lift(decision: Decision) -> bool:
    """True for a deletion record (see :func:`lift`): no lifetime at all."""
    return decision.expires_at <= decision.created_at


def delete(settings: GatewatchSettings, scope: str, value: str, current: Decision | None = None,
           timeout_s: float = 10.0, allow: bool = False) -> Decision:
    """Lift the decision for ``scope:value`` (``allow=True``: the allow entry, key
    ``allow:scope:value``): publish its deletion record (:func:`lift`), then a
    tombstone, both signed, and wait for the broker's acks; return the record.

    The tombstone is what a compacted topic keeps; the record is what the sink can
    store (it skips tombstones), so that the store — the dashboards' active decisions,
    ``gatewatch explain`` — sees the deletion too. ``current`` is the decision being
    lifted; when None it is looked up on the topic (raises ``TimeoutError`` if the
    topic cannot be read in ``timeout_s`` seconds).
    """
    key = allow_key(scope, value) if allow else decision_key(scope, value)
    if current is None:
        current = read_decisions(settings, timeout_s).latest.get(key)
    record = lift(scope, value, current, allow=allow)
    signer = DecisionSigner.from_settings(settings)
    key_bytes, record_value = key.encode(), record.to_json()
    producer = _producer(settings)
    try:
        producer.send(settings.topic_decisions, key=key_bytes, value=record_value,
                      headers=signer.headers(key_bytes, record_value)).get(timeout_s)
        producer.send(settings.topic_decisions, key=key_bytes, value=None,
                      headers=signer.headers(key_bytes, None)).get(timeout_s)
    finally:
        producer.close()
    return record


def manual_decision(scope: str, value: str, ttl_s: float, reason: str, action: str = "ban",
                    now: datetime | None = None) -> Decision:
    """A decision made by a person through the CLI (``origin='cli'``, detector ``manual``).

    Raises ``ValueError`` (pydantic's) for an unknown scope or action, action ``allow``
    (see :func:`allow_entry`), or a TTL ≤ 0.
    """
    if action == "allow":
        raise ValueError("allow entries are added with `gatewatch allowlist add`")
    return _manual(scope, value, ttl_s, reason, action, now)


def allow_entry(scope: str, value: str, ttl_s: float, reason: str, prefix_v4: int = 24, prefix_v6: int = 64,
                now: datetime | None = None) -> Decision:
    """An allow entry made through the CLI (action ``allow``, ``origin='cli'``, detector
    ``manual``) with its value in canonical form (:func:`gatewatch.decision_store.canonical_value`;
    a bare address as a prefix gets ``prefix_v4``/``prefix_v6``), so that its key is the
    one the gateways and ``delete`` compute.

    Raises ``ValueError`` for a scope outside :data:`gatewatch.events.ALLOW_SCOPES`, a
    value that does not fit its scope, or a TTL ≤ 0.
    """
    if scope not in ALLOW_SCOPES:
        raise ValueError(f"scope must be one of {', '.join(ALLOW_SCOPES)}, not {scope!r}")
    canon = canonical_allow_value(scope, value, prefix_v4, prefix_v6)
    if not canon:
        raise ValueError("value must not be empty")
    return _manual(scope, canon, ttl_s, reason, "allow", now)


def canonical_allow_value(scope: str, value: str, prefix_v4: int = 24, prefix_v6: int = 64) -> str:
    """``value`` in the canonical form of ``scope``; ``ValueError`` if it does not fit."""
    try:
        return canonical_value(scope, value.strip(), prefix_v4, prefix_v6)
    except MalformedRecord as exc:
        raise ValueError(str(exc)) from None


def _manual(scope: str, value: str, ttl_s: float, reason: str, action: str, now: datetime | None) -> Decision:
    if ttl_s <= 0:
        raise ValueError("ttl must be positive")
    now = now or datetime.now(timezone.utc)
    return Decision(scope=scope, value=value, action=action, reason=reason, detector="manual",
                    origin="cli", created_at=now, expires_at=now + timedelta(seconds=ttl_s),
                    evidence={"by": "cli", "reason": reason})
