"""Latency regression per route over samples re-keyed by route (``topic_requests_by_route``),
so each route's windows live on one partition: one detector per by-route partition
(:mod:`streams.rekeyed_consumer`).

A by-route partition merges the samples of every request partition, each in
event-time order but at its own pace; a minute window closes once the
partition's low watermark — the least progress of its active sources
(:mod:`streams.watermarks`) — has passed its end plus ``allowed_lateness_s``.
So a message's samples are added first, then the partition's series are
flushed up to its new watermark (:mod:`streams.merged`). Alert only: the policy
issues no decision.

After a restart the last :data:`REPLAY_S` seconds of the partition are
replayed into a fresh detector, and the routes raised before come back from the
store: before by-route partitions are placed (:func:`load_raised`, the consumer's
assignment hook) the stored detections say which series' last regression has no
recovery after it (named query ``latency_raised``, over ``latency.state_ttl_s``);
such a series starts raised, judged against that regression's baseline, so it is
not raised a second time and its recovery is reported; replayed windows that had
closed by the time it was raised are skipped (a re-keyed message can span minutes
before the regression, and their fast windows are not its recovery). Exact: the open minute
windows (their percentiles below ``max_samples_per_window``; above it the
reservoir's random draws differ) and whether a route is raised. Not exact: the
baseline of a route that is not raised, and the runs of bad and good windows —
relearned from the replayed windows (``baseline_windows`` of warm-up, then
``bad_windows`` + 1 judged) instead of the route's whole history; a raised
route's baseline spread (0: its threshold is the ratio's or the floor's). If the
store cannot answer (counted as ``latency_raised_errors``), raised routes are
relearned as before.
"""

from __future__ import annotations

import logging
from datetime import datetime

from detectors.latency import LatencyRegressionDetector, RaisedRegression
from gatewatch.events import Detection
from streams import counters
from streams.app import settings, store

log = logging.getLogger(__name__)

_cfg = settings.latency
#: Seconds of event time replayed: enough windows to relearn a baseline and judge a run of bad
#: ones, plus the allowed lateness.
REPLAY_S = _cfg.window_s * (_cfg.baseline_windows + _cfg.bad_windows + 1) + _cfg.allowed_lateness_s


#: Longest wait for the store's answer, s: it runs while the group's assignment is handled.
STORE_READ_TIMEOUT_S = 20.0
#: Series -> the regression it is in, as of the last :func:`load_raised`.
_raised: dict[str, RaisedRegression] = {}


def raised_of(series: str) -> RaisedRegression | None:
    """The stored regression ``series`` is in, if any (the detectors' ``raised`` lookup)."""
    return _raised.get(series)


async def load_raised(now: datetime | None = None) -> int:
    """Read from the stored detections which series are in a regression (their last one
    within ``latency.state_ttl_s`` before ``now``, default the current time, is a regression).
    Returns how many; on a store error the previous ones stay (``latency_raised_errors``)."""
    global _raised
    try:
        rows = await store.query_last("latency_raised", _cfg.state_ttl_s, STORE_READ_TIMEOUT_S, now)
        _raised = {str(series): RaisedRegression(datetime.fromisoformat(str(at)), float(p95), float(p50),
                                                 severity)
                   for series, at, severity, p95, p50 in rows}
    except Exception as exc:   # the store down or failing: relearn (module docstring)
        counters.incr("latency_raised_errors")
        log.warning("raised latency routes not read from the store (%s: %s)", type(exc).__name__, exc)
        return len(_raised)
    counters.incr("latency_raised_loads")
    if _raised:
        log.info("latency: %d route(s) raised before the start: %s", len(_raised), sorted(_raised))
    return len(_raised)


class LatencyStage:
    """The detector of one by-route partition as a stage: samples
    ``(series, epoch_s, latency_ms, event_id)`` are added, windows judged on the watermark."""

    def __init__(self) -> None:
        self.detector = LatencyRegressionDetector.from_settings(_cfg, raised_of)

    def process(self, items: list[tuple[str, float, float, str]], now: datetime) -> list[Detection]:
        add = self.detector.add_at
        for series, epoch_s, latency_ms, event_id in items:
            add(series, epoch_s, latency_ms, event_id)
        return []

    def advance(self, watermark: datetime) -> list[Detection]:
        found = self.detector.flush(watermark)
        if self.detector.late_samples:
            counters.incr("latency_late_samples", self.detector.late_samples)
            self.detector.late_samples = 0
        return found


def stages() -> list[LatencyStage]:
    """The latency detector of one by-route partition."""
    return [LatencyStage()]
