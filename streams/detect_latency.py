"""Agent: latency regression per route over samples re-keyed by route
(``topic_requests_by_route``), so each route's windows live on one partition.

A by-route partition merges the samples of every request partition, each in
event-time order but at its own pace; a minute window closes once the
partition's low watermark — the least progress of its active sources
(:mod:`streams.watermarks`) — has passed its end plus ``allowed_lateness_s``.
So samples are added first, then each partition's series are flushed up to
that partition's watermark. Alert only: the policy issues no decision.
"""

from __future__ import annotations

import time

from detectors.latency import LatencyRegressionDetector
from gatewatch.events import Detection
from streams import counters
from streams.app import app, settings
from streams.decide import detect_each, publish
from streams.merged import SOURCE_IDLE_S
from streams.rekey import unpack_samples
from streams.topics import by_route_topic, parse_or_count
from streams.watermarks import SourceWatermarks, to_datetime

detector = LatencyRegressionDetector.from_settings(settings.latency)
watermarks = SourceWatermarks(expected_sources=settings.requests_partitions, idle_s=SOURCE_IDLE_S)
series_of_partition: dict[int, set[str]] = {}


@app.agent(by_route_topic)
async def detect_latency(stream):  # type: ignore[no-untyped-def]
    """Consume batches of latency samples; emit regression and recovery detections."""
    async for batch in stream.take_events(settings.detector_batch_size,
                                          within=settings.detector_batch_within_s):
        now_s = time.monotonic()
        touched: set[int] = set()
        for item in batch:
            message = parse_or_count(unpack_samples, item.value, "malformed_by_route")
            if message is None:
                continue
            partition = item.message.partition
            touched.add(partition)
            watermarks.update(partition, message.progress, now_s)
            for series, samples in message.by_series.items():
                counters.incr("events_by_route", len(samples))
                series_of_partition.setdefault(partition, set()).add(series)
                for ts, latency_ms, event_id in samples:
                    detector.add(series, ts, latency_ms, event_id)
        found = detect_each(lambda partition: _close(partition, now_s), sorted(touched), "latency")
        if detector.late_samples:
            counters.incr("latency_late_samples", detector.late_samples)
            detector.late_samples = 0
        await publish(found)


def _close(partition: int, now_s: float) -> list[Detection]:
    """Judge the windows of ``partition``'s series that its watermark has passed."""
    watermark = watermarks.watermark(partition, now_s)
    if watermark is None:
        return []
    return detector.flush(to_datetime(watermark), series_of_partition.get(partition, ()))
