"""The quality harness's read of request-event timestamps after the traffic, on a real broker:
``bench.quality_client.request_times`` reads every partition once, to the high watermark
its fetches return, skipping a malformed record; ``rekeyed_times`` does the same for the
by-principal messages that carried each event.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

from aiokafka import AIOKafkaProducer

from bench.quality_client import rekeyed_times, request_times
from gatewatch.events import RequestEvent
from gatewatch.settings import GatewatchSettings
from streams.rekey import pack_rows, principal_row

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)


async def _send(settings: GatewatchSettings, count: int) -> set[str]:
    """``count`` request events over every partition in batches (linger 50 ms) plus one
    malformed record; the event ids."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=50)
    await producer.start()
    try:
        sent = {}
        for i in range(count):
            event = RequestEvent(event_id=f"ev{i}", ts=T0, client_ip="203.0.113.7", method="GET", host="api",
                                 path=f"/items/{i}", route="/items/{id}", status=200)
            sent[event.event_id] = await producer.send(settings.topic_requests, event.model_dump_json().encode(),
                                                       partition=i % settings.requests_partitions)
        malformed = await producer.send(settings.topic_requests, b"{not json", partition=0)
        await asyncio.gather(*sent.values(), malformed)
        return set(sent)
    finally:
        await producer.stop()


def test_request_times_reads_every_partition_to_its_end(settings: GatewatchSettings) -> None:
    before = time.time()
    sent = asyncio.run(_send(settings, 403))
    after = time.time()
    assert settings.requests_partitions > 1
    created = asyncio.run(request_times(settings, timeout_s=30.0))
    assert set(created) == sent   # every event, the malformed record skipped
    # CreateTime, set by the producer while sending (ms resolution)
    assert all(before - 0.001 <= ts <= after + 0.001 for ts in created.values())


async def _send_rekeyed(settings: GatewatchSettings, count: int) -> dict[str, int]:
    """``count`` events in by-principal messages of 10 rows, one partition after another,
    plus one malformed message; the Kafka timestamp (ms) of the message that carried each."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    try:
        carried = {}
        for start in range(0, count, 10):
            events = [RequestEvent(event_id=f"ev{i}", ts=T0, client_ip="203.0.113.7", method="GET", host="api",
                                   path=f"/items/{i}", route="/items/{id}", status=200, principal="key-1")
                      for i in range(start, min(count, start + 10))]
            [message] = pack_rows([principal_row(e) for e in events], {})
            meta = await producer.send_and_wait(settings.topic_requests_by_principal, message,
                                                partition=start // 10 % settings.requests_partitions)
            carried.update((e.event_id, meta.timestamp) for e in events)
        await producer.send_and_wait(settings.topic_requests_by_principal, b"[]", partition=0)
        return carried
    finally:
        await producer.stop()


def test_rekeyed_times_name_the_message_that_carried_each_event(settings: GatewatchSettings) -> None:
    carried = asyncio.run(_send_rekeyed(settings, 95))
    sent = asyncio.run(rekeyed_times(settings, timeout_s=30.0))
    assert sent == {event_id: ms / 1000.0 for event_id, ms in carried.items()}
