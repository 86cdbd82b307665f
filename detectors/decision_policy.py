"""Turn a :class:`~gatewatch.events.Detection` into a :class:`~gatewatch.events.Decision`.

A separate, small step after the detector (as river's threshold filters wrap
a detector), so the response can change without touching detection. Pure:
the decision's times come from the detection, its id from the detection id.

Current policy: every detection becomes a ``ban`` of the detection's scope and
value for ``ban_ttl_s`` seconds (OWASP: IP block-lists should be temporary).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from gatewatch.events import Action, Decision, Detection

_ID_NAMESPACE = uuid.UUID("0b8f7e55-2c1d-4f4e-8a9b-5d2e7c3a1f10")


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
        scope=detection.scope,
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
