"""Scoring of a quality-harness run: labelled actors against what the pipeline stored.

Pure: :func:`score` takes the scenario's actors, the client's outcomes and
what was read back from the store after the run (requests, detections,
decisions) plus when a follower of the topics saw each detection and decision,
and returns the figures as plain data (JSON-ready).

**Attribution.** A detection is a true positive when an attack actor owns its
``scope:value`` (see :class:`bench.quality_actors.Actor` ``keys``), lists its
detector, and was active then (from its start to :data:`ATTRIBUTION_SLACK_S`
after its last request). When several qualify, the one whose requests are
among the detection's sample request ids wins, then the latest to start.
Every other detection is a false positive (named after the benign actor owning
the key, if any). A latency detector's recovery detection ends a regression:
it is counted apart, not in precision.

**Per detector**: precision = true-positive detections / detections; recall
= attack actors it should catch that it caught / those actors; false-positive
blocks = benign actors with a request answered by a decision of that detector
(``answered_by = 'decision'`` in the store, or a 403/429 naming a decision at
the client).

**Per attack actor** (times in wall-clock seconds, the clock the gateway
stamps events with, on the same machine):

* *to detection* = the first true-positive detection's ``ts`` − attack start
  (first request sent, or the latency change);
* *threshold crossing* = the ``ts`` of the detection behind the decision that
  answered the actor's first blocked request (without a block: of the first
  detection that got a decision, else of the first detection). Detectors set
  ``ts`` to the event time of the request that made their window cross the
  threshold; that request is named (``trigger_request_id``: the sample request
  id whose stored ``ts`` equals it; the store keeps ms, so times are ±1 ms);
* the legs of the loop: *event created* = the trigger's request event's Kafka
  timestamp (the gateway handed it to its producer after the upstream
  answered); *detection / decision published* = their Kafka timestamps (the
  worker handed them to its producer); *… seen* = when the harness's topic
  followers read them (they run in the harness process, so a busy harness
  adds to those);
* *threshold → first 403* = the stored ``ts`` (gateway receive time) of the
  first request the gateway answered 403 by a decision − threshold crossing:
  when enforcement was in force at the gateway, to within one inter-request gap
  of the attacker (6.7 ms at 150 req/s); for a slow attacker it includes the
  wait for its next request, so the target uses the fast (≥
  :data:`FAST_RATE_PER_S` planned) runs. *… (client)* = when the harness
  received that 403 (adds the answer's way back and the harness's own delays);
* *answered before the first block* = its requests answered by the upstream
  with a stored ``ts`` before the first request a decision answered; *foreign
  objects* = those of them that returned another owner's object;
* *answered after threshold* = its requests answered by the upstream with a
  stored ``ts`` after the threshold crossing (the trigger itself excluded).

**Targets** (issue 4): recall ≥ 0.99 over attack actors; zero benign actors
blocked; median threshold → first 403 ≤ 50 ms over the fast runs that the
policy bans (a run never banned counts as infinitely late); at ≥ 150 req/s
from one source at most 2 requests answered after the threshold (the worst
fast run; one never detected fails it).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bench.quality_actors import Actor
from bench.quality_client import Outcome
from detectors.latency import NAME as LATENCY

#: Seconds after an actor's last request in which detections are still its own (the
#: longest detector window, credential stuffing's aggregate window, 600 s).
ATTRIBUTION_SLACK_S = 600.0
#: Planned requests/s from one source that make a run "fast" (attack-tool speed).
FAST_RATE_PER_S = 150.0
TARGET_RECALL = 0.99
TARGET_MEDIAN_TO_403_MS = 50.0
TARGET_ANSWERED_AFTER_THRESHOLD = 2


@dataclass(frozen=True)
class StoredRequest:
    """A stored request (``requests`` table): ``ts`` in epoch seconds."""

    event_id: str
    ts: float
    client_ip: str
    answered_by: str
    status: int
    decision_id: str | None = None


@dataclass(frozen=True)
class StoredDetection:
    """A stored detection: ``ts`` in epoch seconds, ``evidence`` parsed."""

    detection_id: str
    ts: float
    detector: str
    scope: str
    value: str
    evidence: dict[str, Any]
    sample_event_ids: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.scope}:{self.value}"

    @property
    def recovery(self) -> bool:
        """A latency detector's "recovered" detection (the end of a regression)."""
        return self.detector == LATENCY and self.evidence.get("state") == "recovered"


@dataclass(frozen=True)
class StoredDecision:
    """A stored decision: ``created_at`` in epoch seconds."""

    id: str
    created_at: float
    scope: str
    value: str
    action: str
    detector: str
    detection_id: str | None


def _ms(a: float | None, b: float | None) -> float | None:
    """(b − a) in ms, rounded to 0.1; None when either is missing."""
    return None if a is None or b is None else round((b - a) * 1000.0, 1)


def _ratio(num: int, den: int) -> float | None:
    return None if den == 0 else round(num / den, 4)


def median_or_inf(values: Iterable[float | None]) -> float | None:
    """Median with None counted as +inf (a run that never got there); None for no values."""
    vals = [math.inf if v is None else v for v in values]
    return statistics.median(vals) if vals else None


class _Run:
    """Indexes of one run: outcomes per actor, the actor of each request id, spans."""

    def __init__(self, actors: list[Actor], outcomes: list[Outcome], latency_changes: list[tuple[str, float, float]],
                 stored: dict[str, StoredRequest], detections: list[StoredDetection],
                 challenge_ids: frozenset[str] = frozenset()) -> None:
        self.actors = {a.name: a for a in actors}
        self.stored = stored
        self.challenge_ids = challenge_ids   # ids of the run's challenge decisions
        self.recoveries = sorted((d for d in detections if d.recovery), key=lambda d: d.ts)
        self.by_actor: dict[str, list[Outcome]] = defaultdict(list)
        self.actor_of: dict[str, str] = {}
        for o in outcomes:
            self.by_actor[o.actor].append(o)
            if o.request_id:
                self.actor_of[o.request_id] = o.actor
        for mine in self.by_actor.values():
            mine.sort(key=lambda o: o.sent_at)
        self.span: dict[str, tuple[float, float]] = {}
        for name, mine in self.by_actor.items():
            self.span[name] = (mine[0].sent_at, mine[-1].received_at)
        changes: dict[str, list[float]] = defaultdict(list)
        for name, at, _ms_value in latency_changes:
            changes[name].append(at)
        for name, times in changes.items():
            self.span[name] = (min(times), max(times))

    def owner(self, det: StoredDetection) -> Actor | None:
        """The attack actor a detection is attributed to (see the module docstring), or None."""
        candidates = []
        for actor in self.actors.values():
            if not actor.attack or det.key not in actor.keys or det.detector not in actor.detectors:
                continue
            start, end = self.span.get(actor.name, (math.inf, math.inf))
            if start - 1.0 <= det.ts <= end + ATTRIBUTION_SLACK_S:
                candidates.append(actor)
        if len(candidates) > 1:
            in_samples = {self.actor_of.get(e) for e in det.sample_event_ids}
            named = [a for a in candidates if a.name in in_samples]
            candidates = named or sorted(candidates, key=lambda a: self.span[a.name][0], reverse=True)
        return candidates[0] if candidates else None

    def benign_owner(self, key: str) -> str | None:
        return next((a.name for a in self.actors.values() if not a.attack and key in a.keys), None)

    def trigger(self, det: StoredDetection, actor: str) -> str | None:
        """The request whose stored ts is the detection's ts (the threshold crossing): among
        the detection's sample requests, else among ``actor``'s own (a BOLA trigger that was
        answered 200 is not a "denied" sample). None when neither has one (a latency window
        closes on time, not on a request)."""
        def closest(ids: Iterable[str]) -> str | None:
            near = [r for r in (self.stored.get(i) for i in ids) if r is not None and abs(r.ts - det.ts) < 0.0015]
            return min(near, key=lambda r: (abs(r.ts - det.ts), r.event_id)).event_id if near else None
        return (closest(det.sample_event_ids)
                or closest(o.request_id for o in self.by_actor.get(actor, []) if o.request_id))

    def block_of(self, o: Outcome) -> tuple[str | None, str | None]:
        """(kind, decision id) when a decision answered ``o``: from the store, else the client."""
        req = self.stored.get(o.request_id or "")
        if req is not None and req.answered_by == "decision":
            if req.decision_id in self.challenge_ids:
                return "challenge", req.decision_id
            return ("ban" if req.status == 403 else "throttle"), req.decision_id
        return o.blocked_by, o.decision_id

    def stored_ts(self, o: Outcome) -> float:
        req = self.stored.get(o.request_id or "")
        return req.ts if req is not None else o.sent_at

    def answered_by_upstream(self, o: Outcome) -> bool:
        req = self.stored.get(o.request_id or "")
        return req.answered_by == "upstream" if req is not None else (o.status != 0 and o.blocked_by is None)


def _rule(det: StoredDetection) -> Any:
    return det.evidence.get("rule") or det.evidence.get("kind") or det.evidence.get("state")


def _attack_row(run: _Run, actor: Actor, tps: list[StoredDetection], decisions: dict[str, StoredDecision],
                seen_at: dict[str, float], created_at: dict[str, float], rekeyed_at: dict[str, float]
                ) -> dict[str, Any]:
    mine = run.by_actor.get(actor.name, [])
    start = run.span.get(actor.name, (None, None))[0]
    first = min(tps, key=lambda d: d.ts) if tps else None
    by_id = {d.detection_id: d for d in tps}
    # A challenge of a decision made on another actor's detections (an attacked account this
    # actor logs in to, solving the challenge as people do) is not a block of this attack.
    own_challenges = {d.id for d in decisions.values() if d.action == "challenge" and d.detection_id in by_id}
    blocks = sorted(((o, *run.block_of(o)) for o in mine), key=lambda x: x[0].received_at)
    blocks = [(o, kind, did) if kind != "challenge" or did in own_challenges else (o, None, None)
              for o, kind, did in blocks]
    first_block = next(((o, kind, did) for o, kind, did in blocks if kind), None)
    first_403 = next((o for o, kind, _ in blocks if kind == "ban"), None)
    # The threshold that counts for enforcement: the detection behind the decision that
    # answered the first block; without a block, the first detection that got a decision.
    own = sorted((d for d in decisions.values() if d.detection_id in by_id), key=lambda d: d.created_at)
    decision = decisions.get(first_block[2]) if first_block and first_block[2] else None
    decision = decision if decision is not None and decision.detection_id in by_id else (own[0] if own else None)
    enforced = by_id[decision.detection_id] if decision is not None else first
    threshold = enforced.ts if enforced else None
    trigger = enforced and run.trigger(enforced, actor.name)
    block_ts = run.stored_ts(first_block[0]) if first_block else math.inf
    before = [o for o in mine if run.answered_by_upstream(o) and run.stored_ts(o) < block_ts]
    after = ([o for o in mine if run.answered_by_upstream(o) and run.stored_ts(o) > threshold + 0.0005]
             if threshold is not None else None)
    sends = [o.sent_at for o in mine if o.path != "/login" or actor.kind.startswith("stuffing")]
    achieved = (len(sends) - 1) / (sends[-1] - sends[0]) if len(sends) > 1 and sends[-1] > sends[0] else None
    recovery = None
    if actor.detectors == frozenset({LATENCY}):
        recovery = next((d.ts for d in run.recoveries
                         if d.key in actor.keys and threshold is not None and d.ts > threshold), None)
    return {
        "actor": actor.name, "kind": actor.kind, "response": actor.response,
        "planned_rate_per_s": actor.rate_per_s and round(actor.rate_per_s, 1),
        "achieved_rate_per_s": achieved and round(achieved, 1),
        "requests": len(mine),
        "detected": first is not None,
        "detections": len(tps),
        "start_to_first_detection_s": None if first is None or start is None else round(first.ts - start, 3),
        "first_detection": first and {"id": first.detection_id, "scope": first.scope, "rule": _rule(first)},
        "threshold_detection": enforced and {"id": enforced.detection_id, "detector": enforced.detector,
                                             "scope": enforced.scope, "value": enforced.value,
                                             "rule": _rule(enforced)},
        "trigger_request_id": trigger,
        "start_to_threshold_s": None if threshold is None or start is None else round(threshold - start, 3),
        "threshold_to_event_created_ms": _ms(threshold, created_at.get(trigger or "")),
        "threshold_to_event_seen_ms": _ms(threshold, seen_at.get(trigger or "")),
        "threshold_to_event_rekeyed_ms": _ms(threshold, rekeyed_at.get(trigger or "")),
        "threshold_to_detection_published_ms": _ms(threshold, enforced and created_at.get(enforced.detection_id)),
        "threshold_to_detection_seen_ms": _ms(threshold, enforced and seen_at.get(enforced.detection_id)),
        "decision": decision and {"id": decision.id, "scope": decision.scope, "action": decision.action},
        "threshold_to_decision_published_ms": _ms(threshold, decision and created_at.get(decision.id)),
        "threshold_to_decision_seen_ms": _ms(threshold, decision and seen_at.get(decision.id)),
        "first_block": first_block and first_block[1],
        "start_to_first_403_s": None if first_403 is None or start is None
        else round(first_403.received_at - start, 3),
        "threshold_to_first_403_ms": _ms(threshold, first_403 and run.stored_ts(first_403)),
        "threshold_to_first_403_client_ms": _ms(threshold, first_403 and first_403.received_at),
        "answered_before_first_block": len(before),
        "foreign_objects_before_first_block": sum(o.foreign for o in before),
        "foreign_objects_total": sum(o.foreign for o in mine),
        "answered_after_threshold": None if after is None else len(after),
        "blocked_requests": sum(1 for _, kind, _ in blocks if kind),
        "recovery_after_s": None if recovery is None or threshold is None else round(recovery - threshold, 3),
    }


def score(actors: list[Actor], outcomes: list[Outcome], latency_changes: list[tuple[str, float, float]],
          stored: dict[str, StoredRequest], detections: list[StoredDetection], decisions: list[StoredDecision],
          seen_at: dict[str, float], created_at: dict[str, float] | None = None,
          rekeyed_at: dict[str, float] | None = None) -> dict[str, Any]:
    """All figures of one run (see the module docstring): ``detectors``, ``attacks``,
    ``benign``, ``false_positive_detections``, ``targets``, ``totals``.

    ``seen_at``: wall-clock time at which the harness's followers read each request
    event, detection and decision (by id); ``created_at``: their Kafka timestamps (when
    the gateway, or the worker, handed them to its producer), by id; ``rekeyed_at``: the
    Kafka timestamp of the by-principal message that carried each request event, by event id."""
    run = _Run(actors, outcomes, latency_changes, stored, detections,
               frozenset(d.id for d in decisions if d.action == "challenge"))
    decision_by_id = {d.id: d for d in decisions}
    tps: dict[str, list[StoredDetection]] = defaultdict(list)
    fps: list[dict[str, Any]] = []
    per_detector: dict[str, Counter] = defaultdict(Counter)
    for det in detections:
        if det.recovery:
            per_detector[det.detector]["recoveries"] += 1
            continue
        per_detector[det.detector]["detections"] += 1
        owner = run.owner(det)
        if owner is not None:
            tps[owner.name].append(det)
            per_detector[det.detector]["true_positives"] += 1
        else:
            fps.append({"detection_id": det.detection_id, "detector": det.detector, "key": det.key,
                        "on": run.benign_owner(det.key) or "unlabelled",
                        "rule": det.evidence.get("rule") or det.evidence.get("kind")})

    attack_rows = [_attack_row(run, a, tps.get(a.name, []), decision_by_id, seen_at, created_at or {},
                               rekeyed_at or {})
                   for a in actors if a.attack]

    benign_rows = []
    fp_blocks: dict[str, set[str]] = defaultdict(set)
    for actor in (a for a in actors if not a.attack):
        mine = run.by_actor.get(actor.name, [])
        statuses = Counter(str(o.status) for o in mine)
        answered = [(o, *run.block_of(o)) for o in mine]
        challenged = [o for o, kind, _ in answered if kind == "challenge"]
        # A challenge a person solves is not a block (the client sends the request again,
        # solved); a ban or throttle is.
        blocked = [(o, kind, did) for o, kind, did in answered if kind and kind != "challenge"]
        for _, _, did in blocked:
            detector = decision_by_id[did].detector if did in decision_by_id else "unknown"
            fp_blocks[detector].add(actor.name)
        touching = sorted({f"{d.action} {d.scope} ({d.detector})" for d in decisions
                           if f"{d.scope}:{d.value}" in actor.keys})
        benign_rows.append({
            "actor": actor.name, "kind": actor.kind, "requests": len(mine), "statuses": dict(sorted(statuses.items())),
            "blocked_requests": len(blocked), "banned_requests": sum(1 for _, k, _ in blocked if k == "ban"),
            "throttled_requests": sum(1 for _, k, _ in blocked if k == "throttle"),
            "challenged_requests": len(challenged),
            "client_errors": sum(1 for o in mine if o.status == 0),
            "decisions_on_its_identities": touching,
            "false_positive_detections": sum(1 for f in fps if f["on"] == actor.name),
        })

    detector_rows = {}
    for name in sorted({d for a in actors for d in a.detectors} | set(per_detector)):
        c = per_detector[name]
        expected = [r for r, a in zip(attack_rows, (a for a in actors if a.attack)) if name in a.detectors]
        caught = [r for r in expected if any(d.detector == name for d in tps.get(r["actor"], []))]
        detector_rows[name] = {
            "detections": c["detections"], "true_positives": c["true_positives"],
            "false_positives": c["detections"] - c["true_positives"], "recoveries": c["recoveries"],
            "precision": _ratio(c["true_positives"], c["detections"]),
            "attack_actors": len(expected), "caught": len(caught), "recall": _ratio(len(caught), len(expected)),
            "benign_actors_blocked": sorted(fp_blocks.get(name, set())),
            "median_start_to_detection_s": median_or_inf(r["start_to_first_detection_s"] for r in caught),
        }

    return {
        "detectors": detector_rows,
        "attacks": attack_rows,
        "benign": benign_rows,
        "false_positive_detections": fps,
        "targets": targets(attack_rows, benign_rows),
        "totals": {
            "requests_sent": len(outcomes),
            "client_errors": sum(1 for o in outcomes if o.status == 0),
            "requests_stored": sum(1 for o in outcomes if o.request_id in stored),
            "answers_without_request_id": sum(1 for o in outcomes if o.status and not o.request_id),
            "detections": len(detections), "decisions": len(decisions),
            "benign_blocked_by_unknown_decision": sorted(fp_blocks.get("unknown", set())),
        },
    }


def targets(attacks: list[dict[str, Any]], benign: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The four targets of issue 4 with their figures and verdicts (``met``: bool)."""
    detected = sum(1 for r in attacks if r["detected"])
    recall = _ratio(detected, len(attacks))
    blocked = [r["actor"] for r in benign if r["blocked_requests"]]
    fast_bans = [r for r in attacks if r["response"] == "ban" and (r["planned_rate_per_s"] or 0) >= FAST_RATE_PER_S]
    median_403 = median_or_inf(r["threshold_to_first_403_ms"] for r in fast_bans)
    after = [math.inf if r["answered_after_threshold"] is None else r["answered_after_threshold"] for r in fast_bans]
    worst_after = max(after) if after else None
    return [
        {"target": f"recall on attack actors >= {TARGET_RECALL}", "figure": recall,
         "detail": f"{detected} of {len(attacks)} attack actors detected; missed: "
                   f"{[r['actor'] for r in attacks if not r['detected']]}",
         "met": recall is not None and recall >= TARGET_RECALL},
        {"target": "zero benign actors blocked", "figure": len(blocked),
         "detail": f"blocked: {blocked}", "met": not blocked},
        {"target": f"median threshold -> first 403 <= {TARGET_MEDIAN_TO_403_MS:g} ms (fast runs, gateway clock)",
         "figure": median_403,
         "detail": f"{len(fast_bans)} fast runs: {[r['threshold_to_first_403_ms'] for r in fast_bans]}; at the "
                   f"client: median {median_or_inf(r['threshold_to_first_403_client_ms'] for r in fast_bans)}",
         "met": median_403 is not None and median_403 <= TARGET_MEDIAN_TO_403_MS},
        {"target": f"at >= {FAST_RATE_PER_S:g} req/s, <= {TARGET_ANSWERED_AFTER_THRESHOLD} answered after threshold",
         "figure": worst_after,
         "detail": f"per fast run: {[r['answered_after_threshold'] for r in fast_bans]}; achieved req/s: "
                   f"{[r['achieved_rate_per_s'] for r in fast_bans]}",
         "met": worst_after is not None and worst_after <= TARGET_ANSWERED_AFTER_THRESHOLD},
    ]
