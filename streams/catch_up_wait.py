"""A longer fetch wait while a consumer is behind (the embedded broker's catch-up stall).

Tansu quirk (Tansu 0.6 ``memory://``, measured here with aiokafka 0.14): a fetch
reads a partition batch by batch, each batch read costs time in proportion to the
batches the partition holds, and the broker stops reading when the fetch's
``fetch_max_wait_ms`` is used up. On a partition holding 45,000 one-record batches
(what the gateway's ``linger_ms=0`` producer writes at 300 req/s for ~10 minutes over
4 partitions) a consumer with the decision path's 20 ms wait got **one record per
fetch**, 198 records in 60 s, while the high watermark said 45,000 were waiting; with
a 200 ms wait each fetch returned ~8,600 records and the whole backlog was read in
under a second. So a consumer that falls behind on a full partition never catches up
at the short wait: ``bench/soak.py`` stalled that way (broker at 120 % of a core,
the worker idle, 9,565 events still unstored 120 s after the traffic).

:class:`CatchUpWait` is the rule, for a consumer whose polls take at most
``max_records`` records: while its lag (high watermark − next offset, summed over its
partitions) is at least ``enter_lag`` records, a poll that brings less than a quarter
of ``max_records`` (starved by the broker) doubles the fetch wait, up to ``max_ms``,
and a full poll halves it, down to ``base_ms``; once the lag is at most ``leave_lag``
the wait is back to ``base_ms`` (the decision path's). So the wait settles where a
fetch brings about a poll's worth. A consumer behind whose polls come back full keeps
the base wait: Tansu holds a fetch until its wait is used up when the partition holds
more than the fetch takes, and a longer wait there only idles the worker between
fetches (``bench/pipeline.py``'s backlog, one run each in the same hour: 16.1k
events/s without a rule, 13.7k when every poll behind doubled the wait, 17.8k with
this rule). On Apache Kafka a fetch with records waiting returns at
once whatever its wait, so the rule changes nothing there.

:func:`lag` reads the lag from the consumer; :func:`set_fetch_wait` changes the wait
of a running aiokafka consumer (its fetcher reads ``_fetch_max_wait_ms`` for every
request it builds; :mod:`streams.fetch_wait` sets the same attribute before start).
"""

from __future__ import annotations

from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

#: Longest fetch wait while behind (ms): a 200 ms wait read ~8,600 records a fetch on the
#: 45,000-batch partition above.
MAX_CATCH_UP_WAIT_MS = 400
#: Lag (records) from which a consumer counts as behind: ~1.7 s of requests at 300 req/s,
#: far more than a poll returns when it keeps up.
ENTER_LAG = 500
#: Lag (records) at which it counts as caught up again.
LEAVE_LAG = 100


class CatchUpWait:
    """The fetch wait (ms) for the next poll, from the lag and the records of the last one.

    ``base_ms``: the wait while caught up; ``max_ms``: the cap while behind;
    ``max_records``: the most records a poll takes (a poll with as many is full, one with
    less than a quarter starved); ``enter_lag`` / ``leave_lag``: lag in records (summed
    over the partitions) from which the consumer is behind, and at which it is caught up
    again (``leave_lag <= enter_lag``). Raises ``ValueError`` on other values.

    >>> wait = CatchUpWait(base_ms=20, max_ms=400, max_records=500, enter_lag=500, leave_lag=100)
    >>> [wait.update(lag, returned=1) for lag in (3, 45_000, 44_999, 40_000, 30_000, 9_000)]
    [20, 40, 80, 160, 320, 400]
    >>> [wait.update(lag, returned=500) for lag in (8_000, 7_500, 300, 90, 5_000)]
    [200, 100, 100, 20, 20]
    """

    def __init__(self, base_ms: int, max_records: int, max_ms: int = MAX_CATCH_UP_WAIT_MS,
                 enter_lag: int = ENTER_LAG, leave_lag: int = LEAVE_LAG) -> None:
        if not 0 <= base_ms <= max_ms or not 0 <= leave_lag <= enter_lag or max_records < 1:
            raise ValueError("need 0 <= base_ms <= max_ms, 0 <= leave_lag <= enter_lag, max_records >= 1")
        self.base_ms, self.max_ms, self.max_records = base_ms, max_ms, max_records
        self.enter_lag, self.leave_lag = enter_lag, leave_lag
        self.wait_ms = base_ms

    @property
    def behind(self) -> bool:
        """True while the wait is above the base (the consumer is catching up)."""
        return self.wait_ms > self.base_ms

    def update(self, lag: int, returned: int) -> int:
        """Take the lag (records) after a poll and the records it ``returned``; return the
        wait (ms) for the next poll."""
        if lag <= self.leave_lag:
            self.wait_ms = self.base_ms
        elif lag >= self.enter_lag:
            if returned * 4 < self.max_records:
                self.wait_ms = min(self.max_ms, max(self.wait_ms * 2, 1))
            elif returned >= self.max_records:
                self.wait_ms = max(self.base_ms, self.wait_ms // 2)
        return self.wait_ms


def lag(consumer: AIOKafkaConsumer, topic: str, next_offsets: Mapping[int, int]) -> int:
    """Records between ``next_offsets`` (partition -> next offset to read) and the high
    watermark of each partition of ``topic`` as the last fetch response gave it (0 for a
    partition not fetched yet or no longer assigned)."""
    total = 0
    assigned = consumer.assignment()
    for partition, offset in next_offsets.items():
        tp = TopicPartition(topic, partition)
        if tp not in assigned:
            continue
        highwater = consumer.highwater(tp)
        if highwater is not None and highwater > offset:
            total += highwater - offset
    return total


def set_fetch_wait(consumer: AIOKafkaConsumer, wait_ms: int) -> None:
    """Make the running ``consumer`` wait at most ``wait_ms`` per fetch from its next request."""
    fetcher = consumer._fetcher
    if fetcher is not None:
        fetcher._fetch_max_wait_ms = wait_ms
