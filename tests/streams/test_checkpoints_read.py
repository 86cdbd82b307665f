"""Reading replay points back from the checkpoint topic (streams/checkpointed_consumer.py,
``read_checkpoints``) on a real Tansu broker, which never compacts the topic: it is
read from its end backwards, so a long-running deployment's topic is not read whole
at every assignment, and a key is still found wherever its latest message is."""

from __future__ import annotations

import asyncio
import time

from kafka import KafkaProducer

from gatewatch.settings import GatewatchSettings
from streams.checkpointed_consumer import (CHECKPOINT_REFRESH_S, REFRESH_MARGIN_S, TAIL_STEP,
                                           read_checkpoints)
from streams.checkpoints import checkpoint_key, encode_checkpoint

A, B, C, F = (checkpoint_key("g", "gatewatch.requests", p) for p in range(4))


def _produce(s: GatewatchSettings, messages: list[tuple[bytes, bytes, int]]) -> None:
    producer = KafkaProducer(bootstrap_servers=s.bootstrap_servers, linger_ms=20, batch_size=256 * 1024)
    for key, value, ts_ms in messages:
        producer.send(s.topic_checkpoints, key=key, value=value, partition=0, timestamp_ms=ts_ms)
    producer.flush()
    producer.close()


def test_the_latest_checkpoint_of_each_key_is_found_from_the_end(settings: GatewatchSettings) -> None:
    s = settings
    now = int(time.time() * 1000)
    # A once at the start, then two tail steps' worth of B, its latest value last.
    messages = [(A, encode_checkpoint(10, 5), now)]
    messages += [(B, encode_checkpoint(100 + i, 50 + i), now) for i in range(2 * TAIL_STEP)]
    messages += [(b"", b"not a checkpoint", now), (B, b"{broken", now)]
    _produce(s, messages)
    got = asyncio.run(read_checkpoints(s, [A, B, C], replay_s=65.0))
    assert got == {A: (10, 5), B: (100 + 2 * TAIL_STEP - 1, 50 + 2 * TAIL_STEP - 1)}   # C has none
    assert asyncio.run(read_checkpoints(s, [B], replay_s=65.0)) == {B: got[B]}
    assert asyncio.run(read_checkpoints(s, [], replay_s=65.0)) == {}


def test_keys_older_than_the_refresh_horizon_are_not_looked_for(settings: GatewatchSettings) -> None:
    s = settings
    now = int(time.time() * 1000)
    replay_s = 65.0
    old = now - int(1000 * (CHECKPOINT_REFRESH_S + replay_s + REFRESH_MARGIN_S)) - 100_000
    # C's only checkpoint is behind a whole step of messages older than the horizon:
    # the reader stops there instead of reading the topic to its start.
    messages = [(C, encode_checkpoint(7, 3), old)]
    messages += [(F, encode_checkpoint(i, i), old) for i in range(TAIL_STEP)]
    messages += [(B, encode_checkpoint(1000 + i, 900), now) for i in range(TAIL_STEP)]
    _produce(s, messages)
    assert asyncio.run(read_checkpoints(s, [B, C], replay_s=replay_s)) == {B: (1000 + TAIL_STEP - 1, 900)}
    # Within the horizon (a longer replay span) it is found.
    assert asyncio.run(read_checkpoints(s, [B, C], replay_s=replay_s + 1000.0))[C] == (7, 3)


def test_an_empty_topic_has_no_checkpoints(settings: GatewatchSettings) -> None:
    assert asyncio.run(read_checkpoints(settings, [A], replay_s=65.0)) == {}
