"""The catch-up fetch wait (streams/catch_up_wait.py): the rule, and on a real Tansu broker
the stall it is for — a consumer behind on a partition full of one-record batches gets
about one record per fetch at a fetch wait shorter than the broker's read of a batch."""

from __future__ import annotations

import asyncio
import doctest

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from streams import catch_up_wait
from streams.catch_up_wait import LEAVE_LAG, CatchUpWait

#: One-record batches in the partition: enough that reading one takes the broker longer
#: than BASE_WAIT_MS (a read costs in proportion to the batches held; bench/broker_growth.py).
BATCHES = 12_000
BASE_WAIT_MS = 2
POLLS = 40
MAX_RECORDS = 1000


def test_doctest() -> None:
    assert doctest.testmod(catch_up_wait).failed == 0


@pytest.mark.parametrize("polls, waits", [
    (((0, 0), (0, 3)), (20, 20)),
    # behind and starved (less than a quarter of a poll): doubles up to the cap
    (((500, 1), (10_000, 0), (10_000, 1), (10_000, 124), (10_000, 2), (10_000, 1)), (40, 80, 160, 320, 400, 400)),
    # behind with full polls: halves down to the base; partly full polls leave it
    (((10_000, 0), (10_000, 0), (9_000, 500), (8_000, 300), (7_000, 500), (6_000, 500)), (40, 80, 40, 40, 20, 20)),
    (((150_000, 500), (140_000, 125), (130_000, 500)), (20, 20, 20)),
    # between the two lags: unchanged; at the lower one: back to the base
    (((600, 0), (499, 0), (101, 0), (100, 0)), (40, 40, 40, 20)),
    (((100_000, 0), (50, 500), (100_000, 0)), (40, 20, 40)),
])
def test_wait_grows_while_starved_behind_and_is_back_to_base_once_caught_up(polls, waits) -> None:
    rule = CatchUpWait(base_ms=20, max_ms=400, max_records=500, enter_lag=500, leave_lag=100)
    assert tuple(rule.update(lag, returned) for lag, returned in polls) == waits
    assert rule.behind == (waits[-1] > 20)


def test_a_zero_base_wait_still_grows() -> None:
    rule = CatchUpWait(base_ms=0, max_ms=8, max_records=100)
    assert [rule.update(10_000, 0) for _ in range(5)] == [1, 2, 4, 8, 8]


@pytest.mark.parametrize("kwargs", [dict(base_ms=-1), dict(base_ms=50, max_ms=40),
                                    dict(base_ms=5, enter_lag=10, leave_lag=11), dict(base_ms=5, max_records=0)])
def test_bad_parameters(kwargs) -> None:
    with pytest.raises(ValueError):
        CatchUpWait(**{"max_records": 500, **kwargs})


async def _fill(bootstrap: str, topic: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1)])
    admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    try:
        for i in range(BATCHES):   # one record per batch, as the gateway writes them one by one
            await producer.send_and_wait(topic, f"event {i}".encode())
    finally:
        await producer.stop()


async def _read(bootstrap: str, topic: str, adapt: bool) -> tuple[int, list[int]]:
    """Records read from the start in POLLS polls, and the waits used; with ``adapt`` the
    wait follows CatchUpWait after every poll (as streams/checkpointed_consumer.py does)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=BASE_WAIT_MS,
                                enable_auto_commit=False)
    await consumer.start()
    rule = CatchUpWait(base_ms=BASE_WAIT_MS, max_records=MAX_RECORDS)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    read, waits, next_offsets = 0, [], {0: 0}   # the consumer knows where it seeked
    try:
        for _ in range(POLLS):
            batches = await consumer.getmany(timeout_ms=300, max_records=MAX_RECORDS)
            returned = sum(len(records) for records in batches.values())
            for records in batches.values():
                read += len(records)
                next_offsets[0] = records[-1].offset + 1
            if adapt:
                wait = rule.update(catch_up_wait.lag(consumer, topic, next_offsets), returned)
                catch_up_wait.set_fetch_wait(consumer, wait)
                waits.append(wait)
            if read >= BATCHES - LEAVE_LAG:   # caught up, by the rule's measure
                break
    finally:
        await consumer.stop()
    return read, waits


def test_a_consumer_behind_on_a_full_partition_catches_up_with_the_longer_wait(broker: str) -> None:
    topic = "catch-up"
    asyncio.run(_fill(broker, topic))
    stalled, _ = asyncio.run(_read(broker, topic, adapt=False))
    caught_up, waits = asyncio.run(_read(broker, topic, adapt=True))
    # The quirk: at the short wait the broker hands out about one batch per fetch.
    assert stalled < BATCHES // 10, stalled
    # The rule: the wait grows while the lag is large, and the backlog is read (the last
    # LEAVE_LAG records are a caught-up consumer's, read at the base wait).
    assert caught_up >= BATCHES - LEAVE_LAG, (caught_up, waits)
    assert max(waits) > BASE_WAIT_MS and waits[0] == 2 * BASE_WAIT_MS
    assert waits[-1] == BASE_WAIT_MS   # back to the base wait once caught up
