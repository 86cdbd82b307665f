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
replayed into a fresh detector. Exact: the open minute windows (their
percentiles below ``max_samples_per_window``; above it the reservoir's random
draws differ). Not exact: the baseline, the runs of bad and good windows and
whether a route is raised — they are relearned from the replayed windows
(``baseline_windows`` of warm-up, then ``bad_windows`` + 1 judged) instead of
the route's whole history, so a regression raised before a restart may not get
its recovery, or may be raised again.
"""

from __future__ import annotations

from datetime import datetime

from detectors.latency import LatencyRegressionDetector
from gatewatch.events import Detection
from streams import counters
from streams.app import settings

_cfg = settings.latency
#: Seconds of event time replayed: enough windows to relearn a baseline and judge a run of bad
#: ones, plus the allowed lateness.
REPLAY_S = _cfg.window_s * (_cfg.baseline_windows + _cfg.bad_windows + 1) + _cfg.allowed_lateness_s


class LatencyStage:
    """The detector of one by-route partition as a stage: samples
    ``(series, epoch_s, latency_ms, event_id)`` are added, windows judged on the watermark."""

    def __init__(self) -> None:
        self.detector = LatencyRegressionDetector.from_settings(_cfg)

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
