"""Every case folder in ``cases/`` through the credential-stuffing detector and the decision policy."""

from __future__ import annotations

from datetime import timedelta

import pytest

from detectors.credential_stuffing import CredentialStuffingDetector
from detectors.decision_policy import decide

from detector_cases import case_names, load_case, run_detector


@pytest.mark.parametrize("name", case_names())
def test_case(name: str) -> None:
    case = load_case(name)
    detector = CredentialStuffingDetector.from_settings(case.settings)
    got = run_detector(detector, case.events)

    want = case.expected["detections"]
    assert [(trigger, d.scope, d.value) for trigger, d in got] == \
        [(w["trigger_event_id"], w["scope"], w["value"]) for w in want], case.expected["description"]
    for (_, detection), wanted in zip(got, want):
        for key, value in wanted.get("evidence", {}).items():
            assert detection.evidence[key] == value, f"{name}: evidence[{key!r}]"
        assert detection.detector == "credential_stuffing"
        assert 0 < len(detection.sample_event_ids) <= 10
        assert detection.evidence["sample_event_ids"] == detection.sample_event_ids
        trigger_ids = {e.event_id for e in case.events}
        assert set(detection.sample_event_ids) <= trigger_ids

        decision = decide(detection, case.settings.ban_ttl_s)
        assert decision.action == "ban"
        assert decision.key() == f"ip:{detection.value}"
        assert decision.created_at == detection.ts
        assert decision.expires_at - decision.created_at == timedelta(seconds=case.settings.ban_ttl_s)
        assert decision.detection_id == detection.detection_id
        assert decision.evidence["failures"] == detection.evidence["failures"]
        assert decision.reason.startswith("credential_stuffing: ")


def test_cases_exist() -> None:
    names = case_names()
    assert "attack_single_ip_fires_at_threshold" in names
    assert any(not load_case(n).fires for n in names) and any(load_case(n).fires for n in names)
