"""Storing requests, detections and decisions in ClickHouse, in batches, losing nothing.

* **Requests** come from the request consumer (:mod:`streams.requests_consumer`),
  already parsed once and handled by the detectors: it hands each batch (the
  events' raw JSON) to a :class:`RequestSink`, which writes batches in order
  through the store process (:mod:`streams.store`),
  coalescing up to ``settings.sink_batch_size`` events or what arrives within
  ``settings.sink_batch_within_s`` seconds. The detectors never wait for the
  store. The consumer commits an offset only once the sink has written (or
  spooled) everything before it (:attr:`RequestSink.committable`).
* **Detections** and **decisions** are Faust agents on their topics
  (batches of ``sink_batch_size`` or ``sink_batch_within_s``); Faust acks a
  batch when the agent asks for the next one. Decisions are stored only when
  their signature verifies (:mod:`gatewatch.signing`); the others are
  counted (``unsigned_decisions``, ``bad_signature_decisions``) and skipped.

Malformed messages are counted and skipped (``malformed_<kind>``); a record
the table cannot hold (a ``client_ip`` that is not an address) is rejected
alone and counted (``rejected_<kind>``).

When the engine fails (down, disk full), the batch goes to the store spool
(:mod:`streams.store_spool`) at once and a background task writes it back
once ClickHouse takes it again: detection and decisions go on during a store
outage and no accepted record is lost. If the spool itself is full or
unwritable, the batch is retried with back-off and not acknowledged
(fail-closed for storage: the consumer slows to the store's pace). Writes
are at-least-once; the ReplacingMergeTree tables hide duplicates (queries use
``FINAL``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from gatewatch.events import parse_decision, parse_detection
from storage.writer import WriteResult
from streams import counters
from streams.app import app, settings, store
from streams.store_spool import RETRY_MAX_S, RETRY_MIN_S, StoreSpool, SpoolUnavailable
from streams.topics import decisions_topic, detections_topic, parse_or_count, verified_decisions

log = logging.getLogger(__name__)
T = TypeVar("T")

_spool: StoreSpool | None = None


def store_spool() -> StoreSpool:
    """The worker's store spool, opened on first use (``settings.store_spool_dir``, by
    default ``chdb_path/../store-spool``). Raises :class:`gatewatch.spool.SpoolLocked`
    if another process owns the directory."""
    global _spool
    if _spool is None:
        directory = settings.store_spool_dir or settings.chdb_path.parent / "store-spool"
        _spool = StoreSpool(directory, settings.store_spool_max_bytes)
        if _spool.pending_bytes:
            log.warning("store spool holds %d bytes from a previous run; writing them first",
                        _spool.pending_bytes)
    return _spool


def parse_pairs(parser: Callable[[bytes], T], values: Sequence[bytes | None],
                kind: str) -> tuple[list[T], list[bytes]]:
    """Parse a batch of topic ``kind``: the records and their raw values, aligned;
    malformed values are counted (``malformed_<kind>``) and skipped, tombstones
    counted (``tombstones_<kind>``)."""
    records: list[T] = []
    raws: list[bytes] = []
    for value in values:
        if value is None:
            counters.incr(f"tombstones_{kind}")
            continue
        record = parse_or_count(parser, value, f"malformed_{kind}")
        if record is not None:
            records.append(record)
            raws.append(value)
    return records, raws


def _count(kind: str, result: WriteResult) -> None:
    counters.incr(f"stored_{kind}", result.inserted)
    if result.rejected:
        counters.incr(f"rejected_{kind}", len(result.rejected))
        log.warning("rejected %d %s: %s", len(result.rejected), kind, result.rejected[:3])


async def write_or_spool(kind: str, records: Sequence[T], raws: Sequence[bytes],
                         write: Callable[[Sequence[T]], Awaitable[WriteResult]]) -> None:
    """Write one parsed batch of ``kind``; if the engine fails, put its raw records
    (``raws``, aligned with ``records``) in the store spool instead. Returns once
    the batch is in ClickHouse or on disk; while the spool cannot take it
    either, retries both with capped back-off (never drops)."""
    if not records:
        return
    delay = RETRY_MIN_S
    while True:
        try:
            _count(kind, await write(records))
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # engine errors: spool (see module docstring)
            counters.incr("store_errors")
            log.error("storing %d %s failed (%s: %s); spooling them", len(records), kind,
                      type(exc).__name__, exc)
        try:
            store_spool().put(kind, raws)
            return
        except SpoolUnavailable as exc:
            counters.incr("store_spool_full")
            log.error("%s; retrying %d %s in %.1f s", exc, len(records), kind, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)


async def _write_raw(kind: str, parser: Callable[[bytes], T] | None,
                     write: Callable[[Sequence[Any]], Awaitable[WriteResult]], values: Sequence[bytes]) -> None:
    """Write spooled ``values`` back: parsed with ``parser`` first, or as they are
    (``None``: requests, which the store process parses)."""
    records = list(values) if parser is None else parse_pairs(parser, values, kind)[0]
    if records:
        _count(kind, await write(records))


@app.task
async def drain_store_spool() -> None:
    """Write what the store spool holds back to ClickHouse (see :mod:`streams.store_spool`)."""
    await store_spool().drain({
        "requests": lambda v: _write_raw("requests", None, store.write_requests, v),
        "detections": lambda v: _write_raw("detections", parse_detection, store.write_detections, v),
        "decisions": lambda v: _write_raw("decisions", parse_decision, store.write_decisions, v),
    })


@dataclass
class _Batch:
    raws: list[bytes]
    #: partition -> the offset after the last message of that partition in the batch.
    ends: dict[int, int]


class RequestSink:
    """Request events from the consumer to the store, in order, decoupled from detection.

    :meth:`put` queues a parsed batch with, per partition, the offset after its
    last message (waits while ``max_pending`` events are already queued:
    back-pressure on the consumer); :meth:`run` (a task) writes them with
    :func:`write_or_spool`; :attr:`committable` maps each partition to the
    offset up to which everything is stored or spooled; :meth:`flush` waits
    until everything queued is.
    """

    def __init__(self, write: Callable[[Sequence[bytes]], Awaitable[WriteResult]],
                 batch_events: int, within_s: float, max_pending: int) -> None:
        self._write = write
        self.batch_events = batch_events
        self.within_s = within_s
        self.max_pending = max_pending
        self._queue: list[_Batch] = []
        self._pending = 0
        self._writing = False
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self.committable: dict[int, int] = {}

    @property
    def pending(self) -> int:
        """Events queued or being written."""
        return self._pending

    async def put(self, raws: list[bytes], ends: dict[int, int]) -> None:
        """Queue a batch of events (their raw JSON, each already parsed and valid); see the
        class docstring."""
        while self._pending >= self.max_pending:
            self._changed.clear()
            await self._changed.wait()
        self._queue.append(_Batch(raws, dict(ends)))
        self._pending += len(raws)
        self._wake.set()

    async def flush(self) -> None:
        """Return once every batch queued so far is stored or spooled."""
        while self._queue or self._writing:
            self._changed.clear()
            await self._changed.wait()

    def forget(self, partition: int) -> None:
        """Stop reporting ``partition`` (revoked, after a flush)."""
        self.committable.pop(partition, None)

    async def run(self) -> None:
        """Forever: take what is queued (waiting up to ``within_s`` for a full batch), write it."""
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            if sum(len(b.raws) for b in self._queue) < self.batch_events:
                try:
                    await asyncio.wait_for(self._full(), self.within_s)
                except asyncio.TimeoutError:
                    pass
            taken, self._queue = self._queue, []
            self._writing = True
            try:
                raws = [r for b in taken for r in b.raws]
                await write_or_spool("requests", raws, raws, self._write)
                for batch in taken:
                    self.committable.update(batch.ends)
                self._pending -= len(raws)
            finally:
                self._writing = False
                self._changed.set()

    async def _full(self) -> None:
        while sum(len(b.raws) for b in self._queue) < self.batch_events:
            self._wake.clear()
            await self._wake.wait()


@app.agent(detections_topic)
async def sink_detections(stream):  # type: ignore[no-untyped-def]
    """Store detections."""
    async for values in stream.take(settings.sink_batch_size, within=settings.sink_batch_within_s):
        records, raws = parse_pairs(parse_detection, values, "detections")
        await write_or_spool("detections", records, raws, store.write_detections)


@app.agent(decisions_topic)
async def sink_decisions(stream):  # type: ignore[no-untyped-def]
    """Store decisions (manual ones from the CLI too) whose signature verifies."""
    async for events in stream.take_events(settings.sink_batch_size, within=settings.sink_batch_within_s):
        values: list[Any] = [event.message.value for event in verified_decisions(events)]
        records, raws = parse_pairs(parse_decision, values, "decisions")
        await write_or_spool("decisions", records, raws, store.write_decisions)
