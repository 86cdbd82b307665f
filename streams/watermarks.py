"""Event-time watermarks of a re-keyed stream that merges several source partitions.

The latency samples of one route come from every partition of the request
topic (requests are keyed by principal or client IP). Each source partition is in event
time order, but sources progress at their own pace — after a restart, one may
be minutes ahead of another in a backlog. Closing a minute window because
*one* source passed it would judge it on part of its samples and drop the
rest as late.

So the request agent reports, with its samples and once a second to every
re-keyed partition, how far each of its source partitions has got (the
newest event time it processed, ``progress``). The watermark of a re-keyed
partition is the least progress among its sources — the classic low
watermark (Akidau et al., "The Dataflow Model", VLDB 2015) — with two rules
for sources that say nothing:

* a source whose progress has not advanced for ``idle_s`` seconds (processing
  time) is left out: a request partition with no new traffic must not stop every
  window. The request consumer re-sends the progress of every partition it reads
  once a second, so hearing a source is not enough: one that went quiet (its
  keys silent) would hold every window back for good. When every source is
  quiet, nothing is on its way: the watermark is the newest progress heard;
* until ``expected_sources`` sources have been heard, no watermark for the
  first ``idle_s`` seconds after the first one: the others may just be late.

Pure: the processing-time clock is passed in (seconds, e.g. ``time.monotonic()``).

Example::

    >>> w = SourceWatermarks(expected_sources=2, idle_s=10)
    >>> w.update(0, {0: 600.0}, now_s=1.0); w.watermark(0, now_s=1.0) is None
    True
    >>> w.update(0, {1: 90.0}, now_s=1.5); w.watermark(0, now_s=1.5)
    90.0
    >>> w.update(0, {0: 660.0}, now_s=11.8); w.watermark(0, now_s=12.0)  # source 1 silent > 10 s
    660.0
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone


class SourceWatermarks:
    """Least progress of the active sources, per re-keyed partition (see module docstring)."""

    def __init__(self, expected_sources: int, idle_s: float = 10.0) -> None:
        if expected_sources < 1 or idle_s <= 0:
            raise ValueError("need expected_sources >= 1 and idle_s > 0")
        self.expected_sources = expected_sources
        self.idle_s = float(idle_s)
        self._progress: dict[int, dict[int, tuple[float, float]]] = {}  # partition -> source -> (event s, heard s)
        self._first_heard: dict[int, float] = {}

    def update(self, partition: int, progress: Mapping[int, float], now_s: float) -> None:
        """Record the progress (event time, epoch seconds) of sources heard on ``partition``;
        a source's clock of activity (``now_s``) moves only when its progress does."""
        if not progress:
            return
        sources = self._progress.setdefault(partition, {})
        self._first_heard.setdefault(partition, now_s)
        for source, event_s in progress.items():
            old = sources.get(source)
            if old is None or event_s > old[0]:
                sources[source] = (event_s, now_s)

    def watermark(self, partition: int, now_s: float) -> float | None:
        """Event time (epoch seconds) every active source (one whose progress advanced within
        ``idle_s``) of ``partition`` has passed — with none active, the newest progress heard
        — or None (nothing heard yet, or still waiting for the expected sources)."""
        sources = self._progress.get(partition)
        if not sources:
            return None
        waiting = now_s - self._first_heard[partition] < self.idle_s
        if waiting and len(sources) < self.expected_sources:
            return None
        active = [event_s for event_s, heard in sources.values() if now_s - heard <= self.idle_s]
        return min(active) if active else max(event_s for event_s, _ in sources.values())

    def partitions(self) -> list[int]:
        return sorted(self._progress)

    def forget(self, partition: int) -> None:
        """Drop what was heard on ``partition`` (it is read again from a replay point)."""
        self._progress.pop(partition, None)
        self._first_heard.pop(partition, None)


#: The time of "no watermark yet": a detector given it as ``now`` forgets nothing.
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def to_datetime(epoch_s: float | None) -> datetime:
    """A watermark (epoch seconds) as a UTC datetime; None as :data:`EPOCH`."""
    return EPOCH if epoch_s is None else datetime.fromtimestamp(epoch_s, tz=timezone.utc)
