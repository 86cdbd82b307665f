"""Running detectors over a re-keyed stream (by principal, logins, by route), which merges
the request partitions.

For each re-keyed partition this worker reads, a :class:`MergedInput` keeps:

* the partition's own detectors, one **stage** each (:class:`Stage`), built by a
  factory: a partition's state can be dropped and rebuilt on its own when it
  moves between workers (:mod:`streams.checkpoints`);
* the watermarks of its sources (:mod:`streams.watermarks`): each message's
  items go through the stages with ``now`` = the partition's low watermark
  *before* this batch, so state a lagging source still needs is never
  forgotten; then the batch's progress reports move the watermarks on, and each
  stage's :meth:`Stage.advance` judges what the new watermark has closed
  (behaviour windows, latency minutes);
* the re-send filter (:mod:`streams.resends`), which drops events a restarted
  request consumer re-keyed a second time (counted as ``resent_<kind>``).

The same path serves live messages and a restart's warm replay (nothing of the
latter is emitted), so the state after a replay is the state the detectors had.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from gatewatch.events import Detection
from streams import counters
from streams.app import settings
from streams.decide import detect_each
from streams.rekey import Batch
from streams.resends import ResendFilter
from streams.watermarks import SourceWatermarks, to_datetime

#: A request partition silent for this long (processing time, s) no longer holds back a watermark.
SOURCE_IDLE_S = 10.0


class Stage(Protocol):
    """One detector of one re-keyed partition."""

    def process(self, items: list[Any], now: datetime) -> list[Detection]:
        """Learn from a message's items (``now``: the partition's low watermark); detections."""
        ...

    def advance(self, watermark: datetime) -> list[Detection]:
        """Judge what closed by ``watermark`` (the partition's new low watermark); detections."""
        ...


class EventStage:
    """A detector with ``process(event, now)`` (BOLA, geo, the login rules) as a stage;
    ``what`` names it in error logs."""

    def __init__(self, detector: Any, what: str) -> None:
        self.detector, self.what = detector, what

    def process(self, items: list[Any], now: datetime) -> list[Detection]:
        return detect_each(lambda event: self.detector.process(event, now=now), items, self.what)

    def advance(self, watermark: datetime) -> list[Detection]:
        return []


class MergedInput:
    """The re-keyed partitions of one topic that this worker reads (module docstring).

    ``kind`` names the counters (``events_<kind>``, ``malformed_<kind>``,
    ``resent_<kind>``); ``stages`` builds the detectors of one partition.
    """

    def __init__(self, kind: str, stages: Callable[[], list[Stage]]) -> None:
        self.kind = kind
        self.make_stages = stages
        self.watermarks = SourceWatermarks(expected_sources=settings.requests_partitions,
                                           idle_s=SOURCE_IDLE_S)
        self.resends = ResendFilter()
        self._stages: dict[int, list[Stage]] = {}

    def run(self, messages: list[tuple[int, Batch]], live: bool = True) -> list[Detection]:
        """Feed one batch of unpacked messages ``(partition, batch)`` (offset order per
        partition) to the stages; their detections. ``live=False``: a warm replay (not
        counted as events)."""
        now_s = time.monotonic()
        found: list[Detection] = []
        for partition, batch in messages:
            items = self.resends.fresh(partition, batch.items, batch.origins, batch.times)
            if len(items) < len(batch.items):
                counters.incr(f"resent_{self.kind}", len(batch.items) - len(items))
            if live:
                counters.incr(f"events_{self.kind}", len(items))
                if batch.malformed:
                    counters.incr(f"malformed_{self.kind}", batch.malformed)
            if items:
                now = to_datetime(self.watermarks.watermark(partition, now_s))
                for stage in self._stages_of(partition):
                    found += stage.process(items, now)
        for partition, batch in messages:
            self.watermarks.update(partition, batch.progress, now_s)
        for partition in sorted({p for p, _ in messages}):
            mark = self.watermarks.watermark(partition, now_s)
            if mark is not None:
                closed_by = to_datetime(mark)
                found += detect_each(lambda stage: stage.advance(closed_by), self._stages_of(partition),
                                     self.kind)
        return found

    def watermark(self, partition: int) -> float | None:
        """The low watermark of ``partition`` now (epoch s), or None."""
        return self.watermarks.watermark(partition, time.monotonic())

    def forget(self, partition: int) -> None:
        """Drop everything of ``partition``: detectors, watermarks, re-send marks."""
        self._stages.pop(partition, None)
        self.watermarks.forget(partition)
        self.resends.forget(partition)

    def _stages_of(self, partition: int) -> list[Stage]:
        stages = self._stages.get(partition)
        if stages is None:
            stages = self._stages[partition] = self.make_stages()
        return stages
