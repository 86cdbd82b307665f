"""The latency detector resumed after a restart from the regressions raised before it
started (:class:`detectors.latency.RaisedRegression`, read back from the stored detections)
and from the windows closed before its replay (:class:`detectors.latency.ClosedWindow`,
read back from the stored requests)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np

from detectors.latency import ClosedWindow, LatencyRegressionDetector, RaisedRegression
from gatewatch.events import RequestEvent

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=timezone.utc)
SERIES = "GET /items/{id}"
PARAMS = dict(min_samples=3, baseline_windows=2, bad_windows=2, good_windows=2)


def run(det: LatencyRegressionDetector, minutes_ms: list[tuple[int, float]]) -> list:
    out = []
    for minute, ms in minutes_ms:
        for second in (0, 20, 40):
            ts = T0 + timedelta(minutes=minute, seconds=second)
            event = RequestEvent(event_id=f"e{minute}-{second}", ts=ts, client_ip="192.0.2.1", method="GET",
                                 host="api", path="/items/1", route="/items/{id}", status=200, latency_ms=ms)
            out += det.process(event, now=ts)
    return out


def test_a_regression_raised_before_goes_on_and_recovers_against_its_baseline() -> None:
    raised_at = T0 - timedelta(hours=1)
    before = {SERIES: RaisedRegression(raised_at, baseline_p95_ms=10.0, baseline_p50_ms=9.0, severity="high")}
    det = LatencyRegressionDetector(raised=before.get, **PARAMS)
    slow_then_fast = [(m, 90.0) for m in range(4)] + [(m, 10.0) for m in range(4, 7)]
    found = run(det, slow_then_fast)
    assert [d.evidence["state"] for d in found] == ["recovered"]   # not raised a second time
    assert found[0].evidence["regression_since"] == raised_at.isoformat()
    assert found[0].evidence["regression_severity"] == "high" and found[0].evidence["baseline_p95_ms"] == 10.0
    assert det.raised() == []
    # Without it, the slow minutes become the baseline: the recovery is never reported.
    forgetful = LatencyRegressionDetector(**PARAMS)
    assert run(forgetful, slow_then_fast) == []


def test_series_not_named_start_from_nothing() -> None:
    det = LatencyRegressionDetector(raised={}.get, **PARAMS)
    found = run(det, [(0, 10.0), (1, 10.0), (2, 90.0), (3, 90.0), (4, 90.0)])
    assert [d.evidence["state"] for d in found] == ["regression"]


def test_a_replay_reaching_back_before_the_regression_does_not_recover_it() -> None:
    """A worker's by-route replay may start minutes before the stored regression (one
    re-keyed message can span them): the fast minutes that preceded the regression were
    judged before the restart and must not count as its recovery."""
    history = [(0, 10.0), (1, 10.0)] + [(m, 90.0) for m in range(2, 6)]
    live = LatencyRegressionDetector(**PARAMS)
    [regression] = run(live, history)
    assert regression.evidence["state"] == "regression"
    stored = RaisedRegression(regression.ts, baseline_p95_ms=regression.evidence["baseline_p95_ms"],
                              baseline_p50_ms=regression.evidence["baseline_p50_ms"], severity=regression.severity)
    restarted = LatencyRegressionDetector(raised={SERIES: stored}.get, **PARAMS)
    assert run(restarted, history) == []   # the replay: nothing raised again, nothing recovered
    fast = [(m, 10.0) for m in range(6, 9)]
    [recovered] = run(restarted, fast)
    [recovered_live] = run(live, fast)
    assert recovered.evidence["state"] == recovered_live.evidence["state"] == "recovered"
    assert recovered.evidence["regression_since"] == recovered_live.evidence["regression_since"] \
        == regression.ts.isoformat()


def test_windows_restored_from_the_store_resume_the_baseline_and_a_run_of_bad_windows() -> None:
    """The windows that closed before the replay span, read back from the store
    (:class:`detectors.latency.ClosedWindow`), are judged silently first: the series' long
    baseline and a run of bad windows going on at the restart (one bad minute before
    the replay, one in it) raise the regression exactly when and as the live detector
    did. Replayed samples of restored windows are late. Without the windows, the replay
    learns the slow minutes as the baseline and never raises."""
    minutes = [(m, 100.0) for m in range(12)] + [(m, 300.0) for m in range(12, 18)]
    live = LatencyRegressionDetector(**PARAMS)
    [raised] = run_spread(live, minutes)
    replay_from = 13   # the restart's replay starts at minute 13: minutes 0-12 come from the store
    history = {SERIES: [window_figures(m, ms) for m, ms in minutes[:replay_from]]}
    restored = LatencyRegressionDetector(history=history.get, **PARAMS)
    [again] = run_spread(restored, minutes[replay_from - 1:])   # the store's last minute replayed too
    assert restored.late_samples == 3
    assert (again.ts, again.detection_id, again.evidence["state"]) == (raised.ts, raised.detection_id, "regression")
    for field in ("baseline_p95_ms", "baseline_p50_ms", "threshold_ms", "current_p95_ms"):
        assert again.evidence[field] == raised.evidence[field], field
    assert len(again.evidence["bad_windows"]) == len(raised.evidence["bad_windows"]) == 2
    assert run_spread(LatencyRegressionDetector(history={}.get, **PARAMS), minutes[replay_from:]) == []


def test_a_raised_series_takes_no_windows() -> None:
    """A series raised before the start is judged against its regression's baseline; the
    stored windows are not judged again."""
    before = {SERIES: RaisedRegression(T0, baseline_p95_ms=10.0, baseline_p50_ms=9.0, severity="high")}
    history = {SERIES: [window_figures(m, 500.0) for m in range(5)]}
    det = LatencyRegressionDetector(raised=before.get, history=history.get, **PARAMS)
    [recovered] = run_spread(det, [(m, 10.0) for m in range(6, 9)])
    assert recovered.evidence["state"] == "recovered" and recovered.evidence["baseline_p95_ms"] == 10.0


SPREAD_MS = (0.0, 10.0, 20.0)   # each minute's three samples: ms, ms + 10, ms + 20


def run_spread(det: LatencyRegressionDetector, minutes_ms: list[tuple[int, float]]) -> list:
    out = []
    for minute, ms in minutes_ms:
        for second, extra in zip((0, 20, 40), SPREAD_MS):
            ts = T0 + timedelta(minutes=minute, seconds=second)
            event = RequestEvent(event_id=f"e{minute}-{second}", ts=ts, client_ip="192.0.2.1", method="GET",
                                 host="api", path="/items/1", route="/items/{id}", status=200,
                                 latency_ms=ms + extra)
            out += det.process(event, now=ts)
    return out


def window_figures(minute: int, ms: float) -> ClosedWindow:
    """The stored figures of one minute of :func:`run_spread` (numpy's percentiles, as the
    store's ``quantileExactInclusive``)."""
    p50, p95 = np.percentile([ms + extra for extra in SPREAD_MS], [50, 95])
    return ClosedWindow((T0 + timedelta(minutes=minute)).timestamp(), len(SPREAD_MS), float(p50), float(p95))
