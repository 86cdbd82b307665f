"""Agents: store requests, detections and decisions in ClickHouse, in batches.

Each agent takes up to ``settings.sink_batch_size`` messages or what arrived
within ``settings.sink_batch_within_s`` seconds (per-message inserts would
dominate), parses them (malformed messages counted and skipped) and inserts
the batch on the store's single thread (:mod:`streams.store`). Offsets are
acknowledged after the batch is handled, so a crash redelivers it; the
ReplacingMergeTree tables hide such duplicates in queries.

A record the table cannot hold (e.g. a ``client_ip`` that is not an address)
is rejected alone and counted (``rejected_<kind>``). If the engine itself
fails, the batch is retried :data:`WRITE_ATTEMPTS` times with back-off, then
counted as ``dropped_<kind>`` and logged: storage trouble must not stall the
detection agent that shares the consumer.

Decisions are stored only when their signature verifies (:mod:`gatewatch.signing`);
the others are counted here (``unsigned_decisions``, ``bad_signature_decisions``)
and skipped, so a forged decision never reaches the store or ``gatewatch explain``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from gatewatch.events import parse_decision, parse_detection, parse_request_event
from storage.writer import WriteResult
from streams import counters
from streams.app import app, settings, store
from streams.topics import decisions_topic, detections_topic, parse_many, requests_topic, verified_decisions

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Tries per batch when the engine fails, and the first back-off (s), doubled each time.
WRITE_ATTEMPTS = 3
RETRY_BACKOFF_S = 0.5


async def store_batch(kind: str, records: Sequence[T],
                      write: Callable[[Sequence[T]], Awaitable[WriteResult]]) -> None:
    """Write one parsed batch of topic ``kind``, counting stored/rejected/dropped rows."""
    if not records:
        return
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            result = await write(records)
        except Exception as exc:  # engine errors: retry, then drop (see module docstring)
            counters.incr("store_errors")
            log.error("storing %d %s failed (attempt %d/%d): %s", len(records), kind, attempt,
                      WRITE_ATTEMPTS, exc)
            if attempt < WRITE_ATTEMPTS:
                await asyncio.sleep(RETRY_BACKOFF_S * 2 ** (attempt - 1))
            continue
        counters.incr(f"stored_{kind}", result.inserted)
        if result.rejected:
            counters.incr(f"rejected_{kind}", len(result.rejected))
            log.warning("rejected %d %s: %s", len(result.rejected), kind, result.rejected[:3])
        return
    counters.incr(f"dropped_{kind}", len(records))


async def _sink(stream: Any, kind: str, parser: Callable[[bytes], T],
                write: Callable[[Sequence[T]], Awaitable[WriteResult]]) -> None:
    async for values in stream.take(settings.sink_batch_size, within=settings.sink_batch_within_s):
        await store_batch(kind, parse_many(parser, values, kind), write)


@app.agent(requests_topic)
async def sink_requests(stream):  # type: ignore[no-untyped-def]
    """Store request events."""
    await _sink(stream, "requests", parse_request_event, store.write_requests)


@app.agent(detections_topic)
async def sink_detections(stream):  # type: ignore[no-untyped-def]
    """Store detections."""
    await _sink(stream, "detections", parse_detection, store.write_detections)


@app.agent(decisions_topic)
async def sink_decisions(stream):  # type: ignore[no-untyped-def]
    """Store decisions (manual ones from the CLI too) whose signature verifies."""
    async for events in stream.take_events(settings.sink_batch_size, within=settings.sink_batch_within_s):
        values = [event.message.value for event in verified_decisions(events)]
        await store_batch("decisions", parse_many(parse_decision, values, "decisions"), store.write_decisions)
