"""Re-sent events on a re-keyed stream, recognised by their origin and dropped.

The request consumer commits a request offset only after the re-keyed batches
of the events before it were delivered (:mod:`streams.requests_consumer`). A
worker that dies between the two leaves a tail of events that were re-keyed
but not committed; whoever reads the request partition next handles that
tail again and re-keys its events a second time. Counted twice, they would
make a re-keyed window cross its threshold early — a failed login counted
twice in a username window — so a restart would not be exact.

Every re-keyed event carries its origin, the request partition and offset it
was read from (:mod:`streams.rekey`). A request partition is read in order by
one worker at a time and its events reach a re-keyed partition in that order,
so per re-keyed partition and request partition the filter keeps the newest
origin offset seen and the newest event time: an event at or below that
offset and not newer than that time is a re-send. One at or below the offset
but *newer* is taken as the first of a new log (a broker that lost its data
came back empty, Tansu's memory storage; offsets start over) and resets the
mark. Not caught: re-sends whose originals are older than the replay span of
a restarted worker (their marks are rebuilt from the replay only), and a new
log whose first events are not newer than the old one's last.

Within one message, items are checked against the marks from before the
message (latency samples are grouped by route, so one message's origins are
not in offset order).

Pure; state: two numbers per (re-keyed partition, request partition).

Example::

    >>> f = ResendFilter()
    >>> f.fresh(0, ["a", "b"], [(3, 10), (3, 11)], [100.0, 101.0])
    ['a', 'b']
    >>> f.fresh(0, ["b", "c"], [(3, 11), (3, 12)], [101.0, 102.0])   # b came again
    ['c']
    >>> f.fresh(0, ["x"], [(3, 0)], [500.0])   # offset 0, but newer: a new log
    ['x']
"""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


class ResendFilter:
    """Drops re-sent items of re-keyed partitions (see the module docstring)."""

    def __init__(self) -> None:
        # re-keyed partition -> request partition -> [newest origin offset, newest event time]
        self._marks: dict[int, dict[int, list[Any]]] = {}

    def fresh(self, partition: int, items: list[T], origins: list[tuple[int, int]] | None,
              times: list[float]) -> list[T]:
        """The items of one message of re-keyed ``partition`` that were not seen before, in
        order. ``origins`` (request partition, offset) and ``times`` (epoch s) are aligned
        with ``items``; without origins every item is fresh."""
        if origins is None:
            return items
        marks = self._marks.setdefault(partition, {})
        out: list[T] = []
        seen: dict[int, list[Any]] = {}   # source -> [newest offset, newest time, new log]
        for item, (source, offset), ts in zip(items, origins, times):
            mark = marks.get(source)
            new_log = False
            if mark is not None and offset <= mark[0]:
                if ts <= mark[1]:
                    continue
                new_log = True
            out.append(item)
            got = seen.get(source)
            if got is None:
                seen[source] = [offset, ts, new_log]
            else:
                got[0], got[1], got[2] = max(got[0], offset), max(got[1], ts), got[2] or new_log
        for source, (offset, ts, new_log) in seen.items():
            mark = marks.get(source)
            if mark is None or new_log:
                marks[source] = [offset, ts]
            else:
                mark[0], mark[1] = max(mark[0], offset), max(mark[1], ts)
        return out

    def forget(self, partition: int) -> None:
        """Drop the marks of a re-keyed partition (its state is rebuilt, or its log is new)."""
        self._marks.pop(partition, None)
