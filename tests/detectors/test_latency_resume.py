"""The latency detector resumed after a restart from the regressions raised before it
started (:class:`detectors.latency.RaisedRegression`, read back from the stored detections)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from detectors.latency import LatencyRegressionDetector, RaisedRegression
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
