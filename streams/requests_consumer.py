"""The request topic's consumer: the worker's hot path.

The request topic carries one message per request, tens of thousands a
second. Faust dispatches every message to every agent reading its topic
(~60 µs a message measured here with ``bench/pipeline.py --profile``, which
capped the worker near 3.5k events/s), so this topic is read with aiokafka's
batch API instead (``getmany``: the records of every assigned partition at
once), inside the Faust worker, by its own consumer group
(``<app id>-requests``), with the machinery of
:mod:`streams.checkpointed_consumer` (explicit positions, manual commits,
replay points). Each batch:

1. every record is parsed once (malformed ones counted as
   ``malformed_requests`` and skipped; ``events_requests`` counts records);
2. :func:`streams.detect_requests.handle` runs the per-IP and BOLA detectors and re-keys;
3. the events' raw JSON goes to the :class:`streams.sink.RequestSink`, which
   stores them on its own task through the store process (:mod:`streams.store`):
   detection never waits for ClickHouse.

**Offsets** are committed up to where the sink has stored (or spooled)
everything, after the producer has delivered what was emitted for those
events (detections, decisions, re-keyed batches). A crash redelivers the
uncommitted tail; stored duplicates are hidden by the ReplacingMergeTree
tables, and the re-keyed consumers drop the tail's re-sent events by their
origin (:mod:`streams.resends`).

**Exact state across restarts**: when a partition is assigned, the events
between its replay point and its committed offset feed the per-IP and BOLA windows
only (:func:`streams.detect_requests.warm`, counted as ``warmed_requests``); the
replay span is the longer of the two detectors' (:data:`REPLAY_S`).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from aiokafka.structs import ConsumerRecord

from gatewatch.events import RequestEvent, parse_request_event
from streams import counters, detect_bola, detect_requests
from streams.app import app, settings, store
from streams.checkpointed_consumer import CheckpointedConsumer
from streams.sink import RequestSink
from streams.topics import parse_or_count

#: Seconds of event time replayed on assignment: the per-IP login window, or BOLA's window
#: and quiet period (:data:`streams.detect_bola.REPLAY_S`), whichever is longer.
REPLAY_S = max(settings.credential_stuffing.window_s, detect_bola.REPLAY_S)


class RequestsConsumer(CheckpointedConsumer):
    """Reads ``settings.topic_requests`` in batches (see the module docstring); the sink
    (``sink``) runs as a background task. Replays :data:`REPLAY_S` on assignment."""

    def __init__(self, group: str) -> None:
        super().__init__(group, settings.topic_requests, "requests", REPLAY_S)
        self.sink = RequestSink(store.write_requests, settings.sink_batch_size,
                                settings.sink_batch_within_s, settings.sink_max_pending_events)

    def _parse(self, partition: int, records: list[ConsumerRecord]
               ) -> list[tuple[int, float | None, tuple[int, int, RequestEvent, bytes]]]:
        counters.incr("events_requests", len(records))
        out = []
        for rec in records:
            event = parse_or_count(parse_request_event, rec.value, "malformed_requests")
            if event is None:
                if rec.value is None:
                    counters.incr("tombstones_requests")
                continue
            out.append((rec.offset, event.ts.timestamp(), (partition, rec.offset, event, rec.value)))
        return out

    def _warm(self, items: list[tuple[int, int, RequestEvent, bytes]]) -> None:
        detect_requests.warm(items)

    async def _live(self, items: list[tuple[int, int, RequestEvent, bytes]], ends: dict[int, int]) -> None:
        if items:
            await detect_requests.handle(items)
        await self.sink.put([r for _, _, _, r in items], ends)

    def _committable(self) -> dict[int, int]:
        return self.sink.committable

    def _forget(self, partition: int) -> None:
        detect_requests.forget(partition)

    async def _before_new_partitions(self, new: list[int]) -> None:
        await detect_bola.load_given(detect_requests.PARTITIONS[settings.topic_requests], new)

    async def _before_commit(self) -> None:
        await detect_requests.flush()

    async def _before_revoke(self) -> None:
        await self.sink.flush()

    def _revoked(self, partition: int) -> None:
        self.sink.forget(partition)

    def _background(self) -> list[Coroutine[Any, Any, None]]:
        return [self.sink.run()]


requests_consumer = RequestsConsumer(f"{app.conf.id}-requests")
