"""The behaviour detector's own properties: window features, lateness, state bounds, training
refusals and determinism, the separate threshold step, and order-independent findings.
(The shared check suite and the data-driven cases cover the rest.)"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from behaviour_history import T0, benign_history, trained_model
from detector_cases import load_case
from detectors.behaviour import BehaviourDetector, ScoreThreshold
from detectors.behaviour_features import FEATURES, WINDOW_S, BehaviourWindows, windows_of
from detectors.behaviour_model import BehaviourModel, TooLittleHistory, fit_model
from gatewatch.events import RequestEvent

DAY = datetime(2025, 3, 3, tzinfo=timezone.utc)


def _ev(i: int, s: float, principal: str = "key-1", route: str = "/orders/{id}", path: str | None = None,
        status: int = 200, country: str | None = "FR", **kw) -> RequestEvent:
    return RequestEvent(event_id=f"e{i}", ts=DAY + timedelta(seconds=s), client_ip="192.0.2.1", method="GET",
                        host="api", path=path or f"/orders/{i}", route=route, status=status,
                        principal=principal, country=country, **kw)


def test_window_features() -> None:
    events = [_ev(1, 1), _ev(2, 2, status=404), _ev(3, 3, path="/orders/1"),  # id 1 twice
              _ev(4, 4, route="/health", path="/health", status=503),
              _ev(5, 5, principal=""),                                        # anonymous: not counted
              _ev(6, 6, answered_by="rate_limit", status=429),                # gateway answer: not counted
              _ev(7, 310, country="FR"), _ev(8, 620, country="DE"), _ev(9, 930, country=None),
              _ev(10, 1240, country="FR")]
    got = list(windows_of(events))
    assert [(w.start - DAY.timestamp(), w.requests) for w in got] == [(0, 4), (300, 1), (600, 1), (900, 1),
                                                                        (1200, 1)]
    first = got[0].as_dict()
    assert first == {"request_rate_per_min": 0.8, "distinct_routes": 2.0, "distinct_object_ids": 2.0,
                     "error_share": 0.5, "new_country": 0.0}
    # First window: no history, not new; DE is new once FR is known; no location: not new.
    assert [w.as_dict()["new_country"] for w in got] == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert got[0].sample_event_ids == ("e1", "e2", "e3", "e4")
    assert tuple(first) == FEATURES


def test_windows_close_after_the_lateness_and_late_events_are_dropped() -> None:
    windows = BehaviourWindows(allowed_lateness_s=5)
    assert windows.add(_ev(1, 10), now=DAY + timedelta(seconds=10))
    assert windows.close(DAY + timedelta(seconds=304)) == []                    # 300 s + 5 s not yet
    [closed] = windows.close(DAY + timedelta(seconds=305))
    assert closed.requests == 1 and windows.open_windows == 0
    assert not windows.add(_ev(2, 20), now=DAY + timedelta(seconds=306))        # its window is gone
    assert windows.late_events == 1 and windows.close(DAY + timedelta(seconds=1000)) == []
    assert windows.add(_ev(3, 299), now=DAY + timedelta(seconds=304))            # still open: counted
    assert windows.late_events == 1


def test_state_is_bounded_by_the_idle_ttl() -> None:
    windows = BehaviourWindows(state_ttl_s=1800)
    for i in range(3000):  # 3000 principals, one request each, one per second
        ts = DAY + timedelta(seconds=i)
        windows.add(_ev(i, i, principal=f"k{i}"), now=ts)
        windows.close(ts)
    assert len(windows) <= 1800 + 305 + 1 and windows.open_windows <= 305 + 300


def test_findings_do_not_depend_on_arrival_order() -> None:
    """Events merged from two sources, one far behind, with ``now`` = the low watermark: the same
    windows are judged with the same scores as in event-time order."""
    case = load_case("behaviour_stolen_key_scraper")

    def found(detector: BehaviourDetector, pairs) -> set:
        out = set()
        for event, now in pairs:
            out |= {(d.value, d.evidence["window_start"], d.score) for d in detector.process(event, now=now)}
        return out

    in_order = found(BehaviourDetector(trained_model()), [(e, e.ts) for e in case.events])
    sources = [[e for e in case.events if sum(map(ord, e.client_ip)) % 2 == s] for s in (0, 1)]
    progress = [src[0].ts - timedelta(microseconds=1) for src in sources]
    merged = []
    for s in (1, 0):  # all of source 1 first, then source 0
        for event in sources[s]:
            progress[s] = event.ts
            merged.append((event, min(progress)))
    assert found(BehaviourDetector(trained_model()), merged) == in_order
    assert {v for v, _, _ in in_order} == {"key-b03"}


def test_threshold_is_a_separate_replayable_step() -> None:
    case = load_case("behaviour_stolen_key_scraper")
    model = trained_model()
    scored = model.score(list(windows_of(case.events)))
    top = max(scored, key=lambda s: s.score)
    assert top.window.principal == "key-b03"
    assert [d.value for d in ScoreThreshold(top.score).detections(scored, model)] == ["key-b03"]
    assert ScoreThreshold(min(top.score + 1e-6, 1.0)).detections(scored, model) == []
    everything = ScoreThreshold(0.01).detections(scored, model)
    assert len(everything) == len(scored)
    [hit] = ScoreThreshold(0.7).detections(scored, model)
    features = hit.evidence["features"]
    assert set(features) == set(FEATURES) and hit.evidence["drivers"][0] in FEATURES
    assert all(abs(features[n]["z"]) >= 3.5 for n in hit.evidence["drivers"])
    assert features["distinct_object_ids"]["median"] == model.medians[FEATURES.index("distinct_object_ids")]
    assert hit.ts.isoformat() == hit.evidence["window_end"]


def test_training_is_deterministic_with_a_seed_and_refuses_too_little_history() -> None:
    windows = list(windows_of(benign_history(seed=3, principals=5, hours=4)))
    fit = lambda seed: fit_model(windows, since=0.0, until=1.0, trained_at="t", seed=seed)  # noqa: E731
    probe = list(windows_of(benign_history(seed=3, principals=5, hours=1, start=T0 + timedelta(days=1),
                                           traffic_seed=9)))
    assert [s.score for s in fit(5).score(probe)] == [s.score for s in fit(5).score(probe)]
    assert [s.score for s in fit(5).score(probe)] != [s.score for s in fit(6).score(probe)]
    with pytest.raises(TooLittleHistory, match="need at least 100 windows"):
        fit_model(windows[:50], since=0.0, until=1.0, trained_at="t")
    one_principal = [w for w in windows if w.principal == windows[0].principal]
    with pytest.raises(TooLittleHistory, match="from 3 principals"):
        fit_model(one_principal, since=0.0, until=1.0, trained_at="t", min_windows=10)


def test_a_model_of_other_features_is_refused() -> None:
    doc = trained_model().to_document()
    with pytest.raises(ValueError, match="train it again"):
        BehaviourDetector(BehaviourModel.from_document(doc | {"feature_names": ["rate", "errors"]}))
    with pytest.raises(ValueError, match="not a behaviour model"):
        BehaviourModel.from_document(doc | {"format": "something/9"})
    assert BehaviourModel.from_document(doc).window_s == WINDOW_S
