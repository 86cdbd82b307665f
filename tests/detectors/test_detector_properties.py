"""Shared check suite: every detector through the same properties (like river's ``checks``).

Deterministic, pickles and restores mid-stream (a restart with saved state),
copes with missing fields, separates the labelled attack cases from the
benign ones, keeps bounded state.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

from detectors.credential_stuffing import CredentialStuffingDetector
from gatewatch.events import RequestEvent
from gatewatch.settings import CredentialStuffingSettings

from detector_cases import case_names, load_case, run_detector

#: name -> factory(settings) of every detector the suite checks.
DETECTORS: dict[str, Callable[[CredentialStuffingSettings], CredentialStuffingDetector]] = {
    "credential_stuffing": CredentialStuffingDetector.from_settings,
}

T0 = datetime(2025, 3, 1, tzinfo=timezone.utc)


def _summary(results):
    return [(trigger, d.detection_id, d.value, d.ts, d.evidence) for trigger, d in results]


@pytest.mark.parametrize("detector_name", DETECTORS)
@pytest.mark.parametrize("case_name", case_names())
def test_deterministic(detector_name: str, case_name: str) -> None:
    case = load_case(case_name)
    first = run_detector(DETECTORS[detector_name](case.settings), case.events)
    second = run_detector(DETECTORS[detector_name](case.settings), case.events)
    assert _summary(first) == _summary(second)


@pytest.mark.parametrize("detector_name", DETECTORS)
@pytest.mark.parametrize("case_name", case_names())
def test_pickle_and_restore_mid_stream(detector_name: str, case_name: str) -> None:
    case = load_case(case_name)
    whole = run_detector(DETECTORS[detector_name](case.settings), case.events)
    half = len(case.events) // 2
    detector = DETECTORS[detector_name](case.settings)
    before = run_detector(detector, case.events[:half])
    restored = pickle.loads(pickle.dumps(detector))
    after = run_detector(restored, case.events[half:])
    assert _summary(before + after) == _summary(whole)


@pytest.mark.parametrize("detector_name", DETECTORS)
def test_copes_with_missing_fields(detector_name: str) -> None:
    detector = DETECTORS[detector_name](CredentialStuffingSettings())
    minimal = RequestEvent.model_validate({"event_id": "m1", "ts": T0.isoformat(), "client_ip": "192.0.2.1",
                                           "method": "GET", "host": "h", "path": "/", "route": "/",
                                           "status": 200})
    no_user = minimal.model_copy(update={"event_id": "m2", "login": "failure", "status": 401})
    assert detector.process(minimal, now=T0) == []
    assert detector.process(no_user, now=T0) == []


@pytest.mark.parametrize("detector_name", DETECTORS)
def test_separates_attack_from_benign(detector_name: str) -> None:
    for name in case_names():
        case = load_case(name)
        got = run_detector(DETECTORS[detector_name](case.settings), case.events)
        assert bool(got) == case.fires, name


def test_state_is_bounded() -> None:
    detector = CredentialStuffingDetector(window_s=60, min_failures=10, min_usernames=5, ban_ttl_s=120)
    for i in range(1000):  # 1000 IPs, one failure each, one per second
        ts = T0 + timedelta(seconds=i)
        event = RequestEvent(event_id=f"e{i}", ts=ts, client_ip=f"10.0.{i // 250}.{i % 250}",
                             method="POST", host="h", path="/login", route="/login", status=401,
                             login="failure", username_hash=f"u{i}")
        detector.process(event, now=ts)
    assert detector.tracked_ips <= 61
    # One IP fires and is quiet, then forgotten once its quiet period is over.
    for i in range(10):
        ts = T0 + timedelta(seconds=2000 + i)
        event = RequestEvent(event_id=f"a{i}", ts=ts, client_ip="203.0.113.9", method="POST", host="h",
                             path="/login", route="/login", status=401, login="failure",
                             username_hash=f"v{i}")
        fired = detector.process(event, now=ts)
    assert len(fired) == 1 and detector.quiet_ips == 1
    later = T0 + timedelta(seconds=3000)
    detector.process(event.model_copy(update={"login": None, "ts": later}), now=later)
    assert detector.quiet_ips == 0 and detector.tracked_ips == 0


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        CredentialStuffingDetector(window_s=0)
    with pytest.raises(ValueError):
        CredentialStuffingDetector(min_failures=0)
