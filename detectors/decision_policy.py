"""Turn a :class:`~gatewatch.events.Detection` into a :class:`~gatewatch.events.Decision`.

A separate, small step after the detectors (as river's threshold filters wrap
a detector), so the response can change without touching detection. Pure:
the decision's times come from the detection, its id from the detection id.

:func:`decide` is the stateless step: one detection, one decision with a TTL.
:class:`DecisionPolicy` holds the state around it, per detector settings
(:class:`gatewatch.settings.DetectorPolicySettings`):

* **action per scope**: ``actions`` maps a detection scope to ``ban``,
  ``throttle`` or ``challenge``; a scope not listed gets no decision (alert
  only — ``route`` and ``global`` detections, the latency detector);
* **shadow mode**: ``shadow=True`` records the detection, issues nothing;
* **allow entries win**: a detection whose value an active allow entry
  covers (``gatewatch allowlist``; the entries are passed in, see
  :meth:`DecisionPolicy.decide`) gets no decision — outcome ``allow_listed``,
  with the entry's id in ``evidence["allow_entry"]`` — and counts as no
  offence (DESIGN.md: "Allow-lists always win over decisions");
* **one active decision per scope and value**: while a decision for
  ``scope:value`` is active, a new detection for it yields no decision unless
  its action is stronger (``challenge`` < ``throttle`` < ``ban``), which then
  replaces it (same Kafka key);
* **escalation**: the n-th decision for the same ``scope:value`` lasts
  ``ban_ttl_s × 2^(n-1)`` seconds, capped at ``max_ttl_s``; an offender with
  no decision for ``escalation_reset_s`` seconds after its last one expired
  starts again at ``ban_ttl_s`` (as fail2ban >= 0.11 ``bantime.increment`` /
  ``bantime.maxtime`` in ``jail.conf``, whose default formula doubles the ban
  per earlier ban; OWASP: blocks should be temporary).

Every result says what happened (``outcome``) and the detection is returned
with ``evidence["policy"]`` set to it, so a stored detection tells whether it
blocked anyone. The gateway's static allow-list (``settings.allow_list``) is not
known here; the gateway lets its clients through whatever is decided.

State: the active decisions and the offence history, both evicted once they
can no longer matter; picklable. With several workers each holds the state
of the keys its partitions carry (see ``streams/decide.py``).

Example::

    >>> from datetime import datetime, timezone
    >>> from gatewatch.events import Detection
    >>> from gatewatch.settings import DetectorPolicySettings
    >>> policy = DecisionPolicy({"demo": DetectorPolicySettings(ban_ttl_s=60, actions={"ip": "ban"})})
    >>> t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    >>> d = Detection(detection_id="d1", ts=t0, detector="demo", scope="ip", value="192.0.2.1")
    >>> r = policy.decide(d)
    >>> (r.outcome, r.decision.ttl_s)
    ('decision', 60.0)
    >>> policy.decide(d.model_copy(update={"detection_id": "d2"})).outcome
    'duplicate'
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from gatewatch.decision_store import DecisionStore
from gatewatch.events import Action, Decision, Detection, decision_key
from gatewatch.settings import DetectorPolicySettings, GatewatchSettings

_ID_NAMESPACE = uuid.UUID("0b8f7e55-2c1d-4f4e-8a9b-5d2e7c3a1f10")

#: Strength of each action: a stronger one replaces an active weaker one.
ACTION_RANK: dict[str, int] = {"challenge": 1, "throttle": 2, "ban": 3}

Outcome = Literal["decision", "shadow", "duplicate", "alert_only", "allow_listed"]


def decide(detection: Detection, ban_ttl_s: float, action: Action = "ban") -> Decision:
    """Return the decision for ``detection``.

    * ``created_at`` = ``detection.ts``; ``expires_at`` = ``created_at + ban_ttl_s`` seconds;
    * ``evidence`` copied from the detection, plus its ``sample_event_ids``;
    * ``id`` derived from ``detection_id`` (same detection, same decision id);
    * ``reason`` = the detector name and the detection's summary.

    Raises ``ValueError`` if ``ban_ttl_s`` is not positive.
    """
    if ban_ttl_s <= 0:
        raise ValueError(f"ban_ttl_s must be > 0, got {ban_ttl_s}")
    evidence = dict(detection.evidence)
    evidence.setdefault("sample_event_ids", list(detection.sample_event_ids))
    return Decision(
        id=uuid.uuid5(_ID_NAMESPACE, detection.detection_id).hex,
        scope=detection.scope,  # type: ignore[arg-type]  (checked by the caller: a decision scope)
        value=detection.value,
        action=action,
        reason=f"{detection.detector}: {detection.summary}" if detection.summary else detection.detector,
        detector=detection.detector,
        evidence=evidence,
        created_at=detection.ts,
        expires_at=detection.ts + timedelta(seconds=ban_ttl_s),
        origin="detector",
        detection_id=detection.detection_id,
    )


@dataclass(frozen=True)
class PolicyResult:
    """What the policy did with one detection (annotated with ``evidence["policy"]``)."""

    detection: Detection
    decision: Decision | None
    outcome: Outcome


@dataclass(slots=True)
class _Offences:
    count: int
    last_expires: datetime


class DecisionPolicy:
    """Stateful decision policy (see the module docstring).

    ``detectors`` maps a detector name (``Detection.detector``) to its settings;
    a detector not listed gets no decisions (alert only).
    """

    def __init__(self, detectors: Mapping[str, DetectorPolicySettings]) -> None:
        for name, cfg in detectors.items():
            if cfg.max_ttl_s < cfg.ban_ttl_s:
                raise ValueError(f"{name}: max_ttl_s {cfg.max_ttl_s} < ban_ttl_s {cfg.ban_ttl_s}")
        self.detectors = dict(detectors)
        self._active: OrderedDict[str, tuple[datetime, Action]] = OrderedDict()
        self._offences: OrderedDict[str, _Offences] = OrderedDict()
        self._reset_delta = timedelta(seconds=max(
            (cfg.escalation_reset_s for cfg in self.detectors.values()), default=0.0))

    @classmethod
    def from_settings(cls, settings: GatewatchSettings) -> DecisionPolicy:
        """The policy of the worker: credential stuffing, BOLA, latency, geo and behaviour settings."""
        return cls({"credential_stuffing": settings.credential_stuffing, "bola": settings.bola,
                    "latency_regression": settings.latency, "geo": settings.geo_anomaly,
                    "behaviour": settings.behaviour})

    @property
    def active_decisions(self) -> int:
        return len(self._active)

    def decide(self, detection: Detection, allowed: DecisionStore | None = None) -> PolicyResult:
        """Decide on one detection; ``detection.ts`` is the clock.

        ``allowed``: the active allow entries (a :class:`~gatewatch.decision_store.DecisionStore`
        built with ``allow=True``, read from the decisions topic by the caller); a detection
        they cover (:meth:`~gatewatch.decision_store.DecisionStore.covering` at ``detection.ts``)
        gets no decision (outcome ``allow_listed``). None: no allow entries.
        """
        now = detection.ts
        self._evict(now)
        cfg = self.detectors.get(detection.detector)
        action = cfg.actions.get(detection.scope) if cfg is not None else None
        if cfg is None or action is None:
            return self._result(detection, None, "alert_only")
        if cfg.shadow:
            return self._result(detection, None, "shadow")
        entry = allowed.covering(detection.scope, detection.value, now.timestamp()) if allowed else None
        if entry is not None:
            return self._result(detection, None, "allow_listed", allow_entry=entry.id)
        key = f"{detection.scope}:{detection.value}"
        active = self._active.get(key)
        if active is not None and active[0] > now and ACTION_RANK[active[1]] >= ACTION_RANK[action]:
            return self._result(detection, None, "duplicate")
        offences = self._offences.get(key)
        if offences is not None and now - offences.last_expires <= timedelta(seconds=cfg.escalation_reset_s):
            count = offences.count + 1
        else:
            count = 1
        ttl_s = min(cfg.ban_ttl_s * 2 ** min(count - 1, 60), cfg.max_ttl_s)
        decision = decide(detection, ttl_s, action)
        decision = decision.model_copy(update={"evidence": decision.evidence | {
            "policy": "decision", "escalation": {"offence": count, "ttl_s": ttl_s,
                                                 "max_ttl_s": cfg.max_ttl_s}}})
        self._active.pop(key, None)
        self._active[key] = (decision.expires_at, action)
        self._offences.pop(key, None)
        self._offences[key] = _Offences(count, decision.expires_at)
        return self._result(detection, decision, "decision")

    def remember(self, decision: Decision) -> None:
        """Take in a decision made before (read back from the decisions topic at start-up):
        it is active until its ``expires_at`` and counts as an offence, its number
        taken from ``evidence["escalation"]["offence"]`` (1 if absent). A later
        detection of the same scope and value is then a ``duplicate`` while it lasts
        and escalates after it, as if this policy had made it. Other actions (allow
        entries) are not decisions of this policy and are ignored."""
        if decision.action not in ACTION_RANK:
            return
        key = decision_key(decision.scope, decision.value)
        escalation = decision.evidence.get("escalation") if isinstance(decision.evidence, dict) else None
        try:
            count = max(1, int(escalation.get("offence", 1))) if isinstance(escalation, dict) else 1
        except (TypeError, ValueError):
            count = 1
        current = self._active.get(key)
        if current is None or current[0] < decision.expires_at:
            self._active.pop(key, None)
            self._active[key] = (decision.expires_at, decision.action)
        known = self._offences.get(key)
        if known is None or known.last_expires < decision.expires_at:
            self._offences.pop(key, None)
            self._offences[key] = _Offences(count, decision.expires_at)

    @staticmethod
    def _result(detection: Detection, decision: Decision | None, outcome: Outcome,
                **extra: str) -> PolicyResult:
        annotated = detection.model_copy(update={"evidence": detection.evidence | {"policy": outcome} | extra})
        return PolicyResult(annotated, decision, outcome)

    def _evict(self, now: datetime) -> None:
        # Both maps are in order of last update; entries at the front are the oldest.
        while self._active:
            key, (expires, _) = next(iter(self._active.items()))
            if expires > now:
                break
            del self._active[key]
        while self._offences:
            key, offences = next(iter(self._offences.items()))
            if now - offences.last_expires <= self._reset_delta:
                break
            del self._offences[key]
