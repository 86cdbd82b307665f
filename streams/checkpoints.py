"""Replay points: where a restarted worker must start reading a partition (of the
request topic or of a re-keyed topic) so that its detectors' windows are exactly
what they were.

A partition's committed offset ``C`` says what was fully handled (stored,
re-keyed, detections sent). The windows of the detectors also hold the events
of the last ``window_s`` seconds before ``C`` (the replay span: the longest
window plus quiet period of the detectors reading the topic); the smallest
offset still inside that span is the partition's **replay point** ``R``. On
assignment, the worker seeks to ``R`` and feeds ``[R, C)`` to the detectors
*warm* (state only: nothing emitted, stored or re-keyed), then handles ``C``
onwards as usual. The detectors then cross their thresholds at the same event
as if nothing had happened, and the decision policy, seeded from the
decisions topic, does not decide twice.

A re-keyed partition merges several request partitions, each at its own pace:
the span is then counted back from the partition's low watermark (the least
progress of its sources, :mod:`streams.watermarks`) when that is older than
its newest event, so that the windows of a lagging source's keys are rebuilt
too (up to :data:`KEEP_SPANS` spans behind the newest event).

Tansu keeps no metadata with committed offsets (measured: it answers ``''``),
so replay points are published on their own topic (``topic_checkpoints``, one
partition), keyed ``group|topic|partition``, value ``{"committed": C,
"replay_from": R}``, just before each offset commit; the latest message per
key wins. A crash between the two leaves a checkpoint older than the commit:
its ``R`` is then earlier than needed, which is harmless (events older than
the windows fall out of them).

:class:`ReplayPoints` is pure (no I/O): it tracks, per partition, the first
offset of every second of event time seen, in a bounded deque.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field

#: Seconds of event time kept beyond the window: events arrive up to this late
#: (several gateways write one partition, each with its own clock).
LATENESS_MARGIN_S = 5.0
#: Seconds kept per partition, in spans (window + margin): the committed offset lags
#: behind the newest event by the store's batching, usually well under a second.
KEEP_SPANS = 2


def checkpoint_key(group: str, topic: str, partition: int) -> bytes:
    """The checkpoint topic's key of one partition of one consumer group."""
    return f"{group}|{topic}|{partition}".encode()


def encode_checkpoint(committed: int, replay_from: int) -> bytes:
    """The checkpoint topic's value: ``{"committed": C, "replay_from": R}``."""
    return json.dumps({"committed": committed, "replay_from": replay_from}).encode()


def decode_checkpoint(value: bytes | None) -> tuple[int, int] | None:
    """``(committed, replay_from)`` from a checkpoint value, or None if it is not one
    (a tombstone, or malformed: the worker then starts at the committed offset)."""
    if value is None:
        return None
    try:
        data = json.loads(value)
        committed, replay_from = int(data["committed"]), int(data["replay_from"])
    except (ValueError, TypeError, KeyError):
        return None
    if committed < 0 or not 0 <= replay_from <= committed:
        return None
    return committed, replay_from


@dataclass
class _Partition:
    #: (whole second of event time, first offset seen in it), oldest first.
    seconds: deque[tuple[int, int]] = field(default_factory=deque)
    newest_s: float = -math.inf


class ReplayPoints:
    """Per-partition replay points for windows of ``window_s`` seconds of event time.

    ``observe(partition, offset, ts_s)`` for every event handled (``ts_s``: epoch
    seconds of the event's own time); ``replay_from(partition, committed)`` is
    the offset to replay from so that the windows are rebuilt exactly for a
    restart at ``committed``. Memory: one entry per second of event time in
    the window (plus :data:`LATENESS_MARGIN_S`), per partition.

    >>> points = ReplayPoints(window_s=60)
    >>> for offset, ts in enumerate([1000.0, 1000.5, 1030.2, 1075.0, 1090.9]):
    ...     points.observe(0, offset, ts)
    >>> points.replay_from(0, committed=5)   # windows end in second 1090: from 1091 - 65 s = 1026 on
    2
    >>> points.replay_from(0, committed=3)   # windows end in second 1030: everything before
    0
    >>> points.replay_from(1, committed=7)   # nothing seen: no replay
    7
    >>> points.replay_from(0, committed=5, low_s=1050.0)   # a source still at 1050: from 986 on
    0
    """

    def __init__(self, window_s: float, margin_s: float = LATENESS_MARGIN_S) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, not {window_s}")
        self.span_s = window_s + margin_s
        self._partitions: dict[int, _Partition] = {}

    def observe(self, partition: int, offset: int, ts_s: float) -> None:
        """Record an event at ``offset`` with event time ``ts_s`` (epoch seconds)."""
        state = self._partitions.setdefault(partition, _Partition())
        second = int(ts_s)
        seconds = state.seconds
        if not seconds or second > seconds[-1][0]:
            seconds.append((second, offset))
        if ts_s > state.newest_s:
            state.newest_s = ts_s
        horizon = state.newest_s - KEEP_SPANS * self.span_s   # commits lag a little behind
        while len(seconds) > 1 and seconds[1][0] <= horizon:
            seconds.popleft()

    def replay_from(self, partition: int, committed: int, low_s: float | None = None) -> int:
        """The offset from which to replay ``partition`` for a restart at ``committed``
        (``committed`` itself when nothing of the partition was observed).

        The windows at ``committed`` end at the newest second seen before it, or at
        ``low_s`` (epoch s: the low watermark of a merged partition) if that is
        earlier; the replay starts at the first second within ``window_s`` + margin
        of that (every event before it is older)."""
        state = self._partitions.get(partition)
        if state is None or not state.seconds:
            return committed
        before = [second for second, offset in state.seconds if offset < committed]
        if not before:
            return min(state.seconds[0][1], committed)
        end = before[-1] if low_s is None else min(before[-1], int(low_s))
        horizon = end + 1 - self.span_s
        for second, offset in state.seconds:
            if second + 1 > horizon:
                return min(offset, committed)
        return committed

    def forget(self, partition: int) -> None:
        """Drop a partition (revoked: another worker reads it now)."""
        self._partitions.pop(partition, None)
