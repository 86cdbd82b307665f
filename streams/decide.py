"""Publishing what the detectors find: each detection through the decision policy,
then the detection to ``topic_detections`` and the decision, if any, to
``topic_decisions`` keyed ``scope:value`` (which the gateway follows), signed
with the settings' decision key (:mod:`gatewatch.signing`, a record header).

One :class:`detectors.decision_policy.DecisionPolicy` serves every agent of
this worker (the agents run on one event loop and call it between awaits). Its
state — active decisions and repeat offences — covers the keys this worker's
partitions carry: exact for one worker; with several, a ``scope:value`` found
by two workers (the same IP banned by credential stuffing on one and by BOLA
for an anonymous caller on another) can get a decision from each, and its
escalation history is split. The gateway keeps one decision per key either way.

At start-up, :func:`seed_policy` feeds the policy the active detector decisions
on the decisions topic, so that a detection repeated after a restart (a replay
crossing its threshold again, a redelivered tail) decides nothing twice.

Allow entries (``gatewatch allowlist``) are not split: every worker follows all of
them (:mod:`streams.allow_entries`) and the policy issues no decision against a
value they cover; the detection is still sent, with ``evidence["policy"] =
"allow_listed"`` (counted as ``decisions_skipped_allow_listed``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import TypeVar

from detectors.decision_policy import DecisionPolicy
from gatewatch.decision_feed import read_decisions
from gatewatch.events import Detection, decision_key
from streams import counters
from streams.allow_entries import allow_list
from streams.app import settings
from streams.topics import decision_signer, decisions_topic, detections_topic

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Longest wait to read the decisions topic at start-up (s).
READ_TIMEOUT_S = 30.0

policy = DecisionPolicy.from_settings(settings)


async def seed_policy() -> None:
    """Feed the policy the active detector decisions on the decisions topic (read to its
    end; counted as ``policy_seeded_decisions``). An unreachable broker leaves it empty,
    logged: a repeated decision then has the same id and replaces the first."""
    try:
        decisions = await asyncio.get_running_loop().run_in_executor(
            None, lambda: read_decisions(settings, timeout_s=READ_TIMEOUT_S))
    except Exception as exc:
        log.warning("decisions topic not read at start-up (%s: %s); the policy starts empty",
                    type(exc).__name__, exc)
        return
    now = datetime.now(timezone.utc)
    seeded = 0
    for decision in decisions.active(now):
        if decision.origin == "detector":
            policy.remember(decision)
            seeded += 1
    counters.incr("policy_seeded_decisions", seeded)
    log.info("decision policy seeded with %d active decisions", seeded)


async def publish(detections: Iterable[Detection]) -> None:
    """Decide on each detection and send it (and its decision) on."""
    for found in detections:
        result = policy.decide(found, allow_list)
        detection = result.detection
        await detections_topic.send(key=decision_key(detection.scope, detection.value).encode(),
                                    value=detection.to_json())
        counters.incr("detections_emitted")
        counters.incr(f"detections_{detection.detector}")
        decision = result.decision
        if decision is None:
            counters.incr(f"decisions_skipped_{result.outcome}")
            log.info("%s detection (%s, no decision): %s", detection.detector, result.outcome,
                     detection.summary)
            continue
        key, value = decision.key().encode(), decision.to_json()
        await decisions_topic.send(key=key, value=value, headers=decision_signer.headers(key, value))
        counters.incr("decisions_emitted")
        log.warning("%s %s until %s: %s", decision.action, decision.key(), decision.expires_at.isoformat(),
                    detection.summary)


def detect_each(detect: Callable[[T], list[Detection]], items: Iterable[T], what: str) -> list[Detection]:
    """``detect(item)`` for every item, concatenated. An unexpected error on one item is
    logged and counted (``detector_errors``) and the others go on: a crashed agent would
    silently stop all detection."""
    out: list[Detection] = []
    for item in items:
        try:
            out += detect(item)
        except Exception:
            counters.incr("detector_errors")
            log.exception("%s detector failed on %r", what, getattr(item, "event_id", item))
    return out
