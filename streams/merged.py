"""Running a detector over a re-keyed event stream (by principal, logins), which merges
the request partitions: each message's events go through the detector with ``now``
= the low watermark of its partition *before* this batch (:mod:`streams.watermarks`),
so state a lagging source still needs is never forgotten; then the batch's
progress reports move the watermarks on.

Several agents read the by-principal topic (BOLA, geo, behaviour): a message is
parsed once and its unpacked batch kept for the others in a small cache of the
last :data:`UNPACKED_CACHE` messages (a miss only parses again).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from gatewatch.events import Detection
from streams import counters
from streams.app import settings
from streams.decide import detect_each
from gatewatch.events import MalformedRecord
from streams.rekey import EventBatch, unpack_events
from streams.topics import parse_or_count
from streams.watermarks import SourceWatermarks, to_datetime

#: A request partition silent for this long (processing time, s) no longer holds back a watermark.
SOURCE_IDLE_S = 10.0
#: Unpacked re-keyed messages kept for the other agents of the same topic.
UNPACKED_CACHE = 64

_unpacked: OrderedDict[bytes, EventBatch | MalformedRecord] = OrderedDict()


def unpack_once(value: bytes) -> EventBatch:
    """:func:`streams.rekey.unpack_events`, parsed once for every agent reading the same
    message (see the module docstring; keyed by the message value, whose hash Python
    keeps on the object). Raises :class:`MalformedRecord`."""
    found = _unpacked.get(value)
    if found is None:
        try:
            found = unpack_events(value)
        except MalformedRecord as exc:
            found = exc
        _unpacked[value] = found
        if len(_unpacked) > UNPACKED_CACHE:
            _unpacked.popitem(last=False)
    if isinstance(found, MalformedRecord):
        raise found
    return found


class MergedInput:
    """The watermarks of one re-keyed topic and the loop body of its agent."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.watermarks = SourceWatermarks(expected_sources=settings.requests_partitions,
                                           idle_s=SOURCE_IDLE_S)

    def detect(self, items: Iterable[Any], detector: Any) -> list[Detection]:
        """Unpack a batch of Faust events and run ``detector`` over their request events."""
        now_s = time.monotonic()
        found: list[Detection] = []
        reports = []
        for item in items:
            batch = parse_or_count(unpack_once, item.value, f"malformed_{self.kind}")
            if batch is None:
                continue
            partition = item.message.partition
            if batch.malformed:
                counters.incr(f"malformed_{self.kind}", batch.malformed)
            now = to_datetime(self.watermarks.watermark(partition, now_s))
            counters.incr(f"events_{self.kind}", len(batch.events))
            found += detect_each(lambda event: detector.process(event, now=now), batch.events, self.kind)
            reports.append((partition, batch.progress))
        for partition, progress in reports:
            self.watermarks.update(partition, progress, now_s)
        return found

    def low_watermark(self) -> datetime | None:
        """The least watermark of every partition heard so far (None while one has none):
        a time every event this worker will still read is past."""
        now_s = time.monotonic()
        marks = [self.watermarks.watermark(p, now_s) for p in self.watermarks.partitions()]
        if not marks or None in marks:
            return None
        return to_datetime(min(marks))  # type: ignore[type-var]
