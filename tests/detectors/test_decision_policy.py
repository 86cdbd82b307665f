from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from detectors.decision_policy import decide
from gatewatch.events import Detection, parse_decision

T0 = datetime(2025, 3, 1, 12, tzinfo=timezone.utc)


def _detection() -> Detection:
    return Detection(detection_id="d" * 32, ts=T0, detector="credential_stuffing", scope="ip",
                     value="203.0.113.7", summary="10 failed logins", evidence={"failures": 10},
                     sample_event_ids=["e1", "e2"])


def test_ban_with_ttl_and_evidence() -> None:
    decision = decide(_detection(), ban_ttl_s=600)
    assert (decision.scope, decision.value, decision.action) == ("ip", "203.0.113.7", "ban")
    assert decision.created_at == T0 and decision.expires_at == T0 + timedelta(seconds=600)
    assert decision.ttl_s == 600
    assert decision.evidence == {"failures": 10, "sample_event_ids": ["e1", "e2"]}
    assert decision.detection_id == "d" * 32 and decision.detector == "credential_stuffing"
    assert decision.reason == "credential_stuffing: 10 failed logins"
    assert decision.origin == "detector" and decision.key() == "ip:203.0.113.7"
    assert decision.active_at(T0 + timedelta(seconds=599)) and not decision.active_at(T0 + timedelta(seconds=600))


def test_same_detection_same_decision_id_and_round_trip() -> None:
    a, b = decide(_detection(), 600), decide(_detection(), 600)
    assert a.id == b.id and len(a.id) == 32
    assert parse_decision(a.to_json()) == a


def test_rejects_non_positive_ttl() -> None:
    with pytest.raises(ValueError):
        decide(_detection(), 0)
