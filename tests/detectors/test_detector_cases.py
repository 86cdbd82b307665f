"""Every case folder in ``cases/`` through its detector and the decision policy."""

from __future__ import annotations

import filecmp
from datetime import timedelta
from pathlib import Path

import pytest

from detector_cases import CASES_DIR, case_names, is_subset, load_case, matches, run_detector, run_policy
from make_cases import write_cases

DECISION_SCOPES = {"ip", "prefix", "principal", "username", "asn", "country"}


@pytest.mark.parametrize("name", case_names())
def test_case(name: str) -> None:
    case = load_case(name)
    got = run_detector(case.new_detector(), case.events)
    expected = case.expected
    event_ids = {e.event_id for e in case.events}

    if "detections" in expected:
        want = expected["detections"]
        assert [(d.scope, d.value) for _, d in got] == [(w["scope"], w["value"]) for w in want], \
            expected["description"]
        for (trigger, detection), wanted in zip(got, want):
            if "trigger_event_id" in wanted:
                assert trigger == wanted["trigger_event_id"], f"{name}: trigger of {detection.summary}"
            assert is_subset(wanted.get("evidence", {}), detection.evidence), \
                f"{name}: evidence {detection.evidence}"
    detections = [d for _, d in got]
    for spec in expected.get("must_detect", []):
        assert any(matches(spec, d) for d in detections), f"{name}: nothing for {spec}"
    for spec in expected.get("must_not_detect", []):
        hits = [d.summary for d in detections if matches(spec, d)]
        assert not hits, f"{name}: unexpected {spec}: {hits[:3]}"

    for detection in detections:
        assert detection.detector == case.detector
        assert detection.evidence["sample_event_ids"] == detection.sample_event_ids
        assert 0 < len(detection.sample_event_ids) <= 10 and set(detection.sample_event_ids) <= event_ids
        assert detection.summary

    results = run_policy(case.new_policy(), got)
    decisions = [r.decision for r in results if r.decision is not None]
    if "decisions" in expected:
        assert sorted((d.scope, d.value, d.action) for d in decisions) == \
            sorted((w["scope"], w["value"], w["action"]) for w in expected["decisions"]), name
    for result in results:
        detection, decision = result.detection, result.decision
        assert detection.evidence["policy"] == result.outcome
        if decision is None:
            continue
        assert decision.scope in DECISION_SCOPES and decision.scope == detection.scope
        assert decision.action == case.settings.actions[detection.scope]
        assert decision.created_at == detection.ts and decision.detection_id == detection.detection_id
        assert decision.expires_at - decision.created_at >= timedelta(seconds=case.settings.ban_ttl_s)
        assert decision.reason.startswith(f"{case.detector}: ")
        assert is_subset({k: v for k, v in detection.evidence.items() if k != "policy"}, decision.evidence)


def test_cases_exist_for_every_detector_and_both_labels() -> None:
    cases = [load_case(n) for n in case_names()]
    for detector in ("credential_stuffing", "bola", "latency_regression", "behaviour"):
        mine = [c for c in cases if c.detector == detector]
        assert any(c.fires for c in mine) and any(not c.fires for c in mine), detector


def test_generated_cases_are_reproducible(tmp_path: Path) -> None:
    """The committed fixtures are exactly what ``make_cases.py`` writes from its seed."""
    names = write_cases(tmp_path)
    assert names
    for name in names:
        for file in ("events.jsonl", "expected.json"):
            assert filecmp.cmp(tmp_path / name / file, CASES_DIR / name / file, shallow=False), \
                f"{name}/{file} differs: run python tests/detectors/make_cases.py"
