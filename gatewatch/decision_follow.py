"""Follow the decisions topic from an asyncio loop (aiokafka): every partition, from the
beginning, then live; reconnect for ever.

The gateway (:mod:`inline.enforcement`: decisions and allow entries) and the worker
(:mod:`streams.allow_entries`: allow entries for its decision policy) both need
every message of the topic, so this reader uses no consumer group: it assigns
itself all partitions (CrowdSec's bouncer "stream, startup=true" model, pushed
rather than polled). Signatures and parsing are the caller's business.

Quirks designed around (measured, DESIGN.md):

* Tansu answers "latest offset" with the start of the last batch + 1, so this
  reader never seeks to the end nor uses ``auto_offset_reset="latest"``; it
  reads from the beginning and knows it has caught up when every partition's
  position reaches the high watermark returned with fetched records.
* Tansu does not wake a waiting fetch, so ``fetch_max_wait_ms`` (10–50 ms on the
  decision path) bounds how late a new message is seen.
* Errors of the broker connection are reported through ``on_retry`` and logged at
  warning level, never error (mitmdump exits on an error logged at start-up,
  see :mod:`inline.brokers`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

logger = logging.getLogger(__name__)

#: First and largest delay between reconnection attempts, seconds (doubling).
RETRY_MIN_S = 0.2
RETRY_MAX_S = 5.0
#: Longest wait of one poll, ms: the loop yields at least this often (for expiry sweeps).
POLL_MS = 1000
#: Most records handed over per poll.
MAX_RECORDS = 1000


async def follow(bootstrap_servers: str, topic: str, fetch_max_wait_ms: int, client_id: str,
                 on_retry: Callable[[Exception], None] | None = None,
                 ) -> AsyncIterator[tuple[list[Any], bool]]:
    """Yield ``(records, caught_up)`` after every poll of ``topic``, for ever.

    ``records``: aiokafka ``ConsumerRecord`` objects (``key``, ``value`` — None for a
    tombstone —, ``headers``) in partition order, possibly none (a poll waits at
    most :data:`POLL_MS` ms). ``caught_up``: True from the first poll after which
    every partition was read up to its high watermark (it stays True across
    reconnections). When the broker is unreachable or the topic missing, the
    exception is passed to ``on_retry``, logged as a warning, and the reader
    reconnects after :data:`RETRY_MIN_S` … :data:`RETRY_MAX_S` seconds. Cancelling
    the task closes the consumer.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    delay = RETRY_MIN_S
    caught_up = False
    while True:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_wait_ms=fetch_max_wait_ms, client_id=client_id)
        try:
            await consumer.start()
            await consumer.topics()  # refresh metadata so the topic's partitions are known
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                raise LookupError(f"topic {topic} not found")
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)   # Tansu quirk: never "latest"
            delay = RETRY_MIN_S
            while True:
                batches = await consumer.getmany(timeout_ms=POLL_MS, max_records=MAX_RECORDS)
                records = [record for part in batches.values() for record in part]
                if not caught_up:
                    caught_up = await _caught_up(consumer, tps)
                yield records, caught_up
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the broker is away or the topic missing: retry
            if on_retry is not None:
                on_retry(exc)
            logger.warning("decisions feed %s/%s unavailable (%s: %s); retrying",
                           bootstrap_servers, topic, type(exc).__name__, exc)
        finally:
            try:
                await consumer.stop()
            except Exception as exc:  # closing a half-started consumer
                logger.debug("closing decisions consumer: %s", exc)
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX_S)


async def _caught_up(consumer: Any, tps: list[Any]) -> bool:
    """True when every partition's position has reached its high watermark
    (the watermark returned with fetched records, which is right on Tansu)."""
    for tp in tps:
        highwater = consumer.highwater(tp)
        if highwater is None or await consumer.position(tp) < highwater:
            return False
    return True
