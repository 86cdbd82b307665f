"""The request topic's consumer: the worker's hot path.

The request topic carries one message per request, tens of thousands a
second. Faust dispatches every message to every agent reading its topic
(~60 µs a message measured here with ``bench/pipeline.py --profile``, which
capped the worker near 3.5k events/s), so this topic is read with aiokafka's
batch API instead (``getmany``: the records of every assigned partition at
once), inside the Faust worker, by its own consumer group
(``<app id>-requests``). Faust still runs everything else (re-keyed
topics, decisions, detections, timers, the web API) and its producer sends
what this path emits. Each batch:

1. every record is parsed once (malformed ones counted as
   ``malformed_requests`` and skipped; ``events_requests`` counts records);
2. :func:`streams.detect_requests.handle` runs the per-IP detector and re-keys;
3. the parsed events go to the :class:`streams.sink.RequestSink`, which stores
   them on its own task: detection never waits for ClickHouse.

**Offsets** are committed manually every ``settings.commit_interval_s``
seconds, on a revocation and at shutdown: up to where the sink has stored
(or spooled) everything, after the producer has delivered what was emitted
for those events (detections, decisions, re-keyed batches). A crash
redelivers the uncommitted tail: at-least-once, no loss; stored duplicates
are hidden by the ReplacingMergeTree tables, detections and decisions have
ids derived from their trigger, so a repeat replaces rather than adds.

**Exact state across restarts** (:mod:`streams.checkpoints`): before a commit
the replay point of each partition is published on ``topic_checkpoints``
(every :data:`CHECKPOINT_EVERY_S`); when a partition is assigned, the
consumer seeks back to its replay point and feeds the events before the
committed offset to the per-IP windows only (:func:`streams.detect_requests.warm`,
counted as ``warmed_requests``). The decision policy is seeded at start-up
with the active decisions on the decisions topic, so a threshold crossed
again after a restart does not decide twice.

Group settings follow the Faust app's (Tansu quirks, DESIGN.md): short
session timeout, the fetch wait of the decision path. Positions are never
reset implicitly (``auto_offset_reset="none"``): a partition without a
committed offset is read from its beginning, and a position found past the
end (the broker lost its data and came back) starts again at the beginning,
both by explicit seeks. After a rejoin, a partition read before is read again
from its last record, which must be the same record: a broker restarted with
empty storage whose new log already grew past the old position is noticed
that way, and the new log is read from its start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import NoOffsetForPartitionError, OffsetOutOfRangeError
from aiokafka.structs import OffsetAndMetadata

from gatewatch.decision_feed import read_decisions
from gatewatch.events import RequestEvent, parse_request_event
from streams import counters, detect_requests
from streams.app import HEARTBEAT_INTERVAL_S, REBALANCE_TIMEOUT_S, SESSION_TIMEOUT_S, app, settings, store
from streams.checkpoints import ReplayPoints, checkpoint_key, decode_checkpoint, encode_checkpoint
from streams.decide import policy
from streams.sink import RequestSink
from streams.topics import checkpoints_topic, parse_or_count

log = logging.getLogger(__name__)

#: Seconds between checkpoint messages of a partition (a replay point a little old only
#: makes the warm-up replay a little more; see streams/checkpoints.py).
CHECKPOINT_EVERY_S = 10.0
#: Longest wait to read the checkpoint or decisions topic at start-up (s).
READ_TIMEOUT_S = 30.0


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, owner: RequestsConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.owner.revoke(list(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.owner.assign(list(assigned))


class RequestsConsumer:
    """Reads ``settings.topic_requests`` in batches (see the module docstring).

    :meth:`start` seeds the decision policy, reads the checkpoints, joins the
    group and starts the loop and the sink; :meth:`stop` commits what is
    done and leaves the group. ``assigned`` is the partitions it reads now;
    ``joined`` turns true at its first assignment (possibly of no partition).
    """

    def __init__(self, group: str) -> None:
        self.group = group
        self.topic = settings.topic_requests
        self.sink = RequestSink(store.write_requests, settings.sink_batch_size,
                                settings.sink_batch_within_s, settings.sink_max_pending_events)
        self.points = ReplayPoints(window_s=settings.credential_stuffing.window_s)
        self.assigned: set[int] = set()
        self.joined = False
        self._consumer: AIOKafkaConsumer | None = None
        self._checkpoints: dict[int, tuple[int, int]] = {}   # partition -> (committed, replay_from)
        self._warm_until: dict[int, int] = {}
        self._last_read: dict[int, tuple[int, int]] = {}   # partition -> (offset, hash of value)
        self._verify: dict[int, tuple[int, int]] = {}      # partition -> record expected first
        self._committed: dict[int, int] = {}
        self._checkpointed_at: dict[int, float] = {}
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Seed the policy, read checkpoints, join the group, start the loop and the sink."""
        await self._seed_policy()
        self._checkpoints = await self._read_checkpoints()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers, group_id=self.group,
            client_id=f"{self.group}-{id(self):x}", enable_auto_commit=False,
            auto_offset_reset="none", fetch_max_wait_ms=settings.fetch_max_wait_ms,
            session_timeout_ms=int(SESSION_TIMEOUT_S * 1000),
            heartbeat_interval_ms=int(HEARTBEAT_INTERVAL_S * 1000),
            rebalance_timeout_ms=int(REBALANCE_TIMEOUT_S * 1000))
        self._consumer.subscribe([self.topic], listener=_Rebalance(self))
        await self._consumer.start()
        self._tasks = [asyncio.create_task(self.sink.run(), name="request-sink"),
                       asyncio.create_task(self._loop(), name="request-consumer")]
        for task in self._tasks:
            task.add_done_callback(self._watch)

    async def stop(self) -> None:
        """Stop reading, store what was read, commit, leave the group. Idempotent."""
        if self._stopping or self._consumer is None:
            return
        self._stopping = True
        loop_task = self._tasks[1] if len(self._tasks) > 1 else None
        if loop_task is not None:
            try:
                await asyncio.wait_for(loop_task, timeout=5.0)
            except (asyncio.TimeoutError, Exception):
                loop_task.cancel()
        try:
            async with self._lock:
                await self._commit(force_checkpoint=True)
        except Exception:
            log.exception("final commit of the request consumer failed (the tail is redelivered)")
        for task in self._tasks:
            task.cancel()
        await self._consumer.stop()

    # --- the loop -------------------------------------------------------------------------

    def _watch(self, task: asyncio.Task[Any]) -> None:
        # A dead loop or sink must not go unnoticed: the worker stops (and is restarted by
        # its supervisor) rather than keep answering health checks without consuming.
        if task.cancelled() or self._stopping:
            return
        exc = task.exception()
        log.critical("%s stopped: %r; the worker stops", task.get_name(), exc, exc_info=exc)
        asyncio.ensure_future(app.crash(exc if exc is not None else RuntimeError(f"{task.get_name()} ended")))

    async def _loop(self) -> None:
        assert self._consumer is not None
        last_commit = time.monotonic()
        while not self._stopping:
            try:
                batches = await self._consumer.getmany(timeout_ms=100, max_records=settings.detector_batch_size)
            except OffsetOutOfRangeError as exc:
                await self._out_of_range(exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {})
                continue
            except NoOffsetForPartitionError as exc:
                # A fetch raced the assignment callback, which places every partition.
                counters.incr("fetch_before_placement")
                for tp in exc.args:
                    if isinstance(tp, TopicPartition) and tp.partition in self.assigned:
                        await self._place(tp)
                await asyncio.sleep(0.05)
                continue
            async with self._lock:
                if batches:
                    await self._handle(batches)
                if time.monotonic() - last_commit >= settings.commit_interval_s:
                    last_commit = time.monotonic()
                    try:
                        await self._commit()
                    except Exception as exc:  # broker trouble: the next commit covers it
                        counters.incr("commit_errors")
                        log.warning("offset commit failed (%s: %s); retrying later", type(exc).__name__, exc)

    async def _handle(self, batches: dict[TopicPartition, list[Any]]) -> None:
        live: list[tuple[int, RequestEvent, bytes]] = []
        warm: list[tuple[int, RequestEvent, bytes]] = []
        ends: dict[int, int] = {}
        for tp, records in batches.items():
            partition = tp.partition
            if partition not in self.assigned or not records:
                continue
            expected = self._verify.pop(partition, None)
            if expected is not None:
                first = records[0]
                if (first.offset, hash(first.value)) != expected:
                    self._log_replaced(tp, expected[0])
                    continue
                records = records[1:]   # the last record read before, read again to compare
                if not records:
                    continue
            warm_until = self._warm_until.get(partition, -1)
            counters.incr("events_requests", len(records))
            for rec in records:
                event = parse_or_count(parse_request_event, rec.value, "malformed_requests")
                if event is None:
                    if rec.value is None:
                        counters.incr("tombstones_requests")
                    continue
                self.points.observe(partition, rec.offset, event.ts.timestamp())
                item = (partition, event, rec.value)
                (warm if rec.offset < warm_until else live).append(item)
            if records[-1].offset + 1 >= warm_until:
                self._warm_until.pop(partition, None)
            ends[partition] = records[-1].offset + 1
            self._last_read[partition] = (records[-1].offset, hash(records[-1].value))
        if warm:
            detect_requests.warm(warm)
            counters.incr("warmed_requests", len(warm))
        if live:
            await detect_requests.handle(live)
        await self.sink.put([e for _, e, _ in live], [r for _, _, r in live], ends)

    def committed_total(self) -> int:
        """Sum of the offsets committed for the partitions read now (health, tests)."""
        return sum(self._committed.get(p, 0) for p in self.assigned)

    async def _place(self, tp: TopicPartition) -> None:
        """Seek ``tp`` to where this worker must read it next (see :meth:`assign`)."""
        assert self._consumer is not None
        partition = tp.partition
        committed = await self._consumer.committed(tp)
        last = self._last_read.get(partition)
        if last is not None and (committed is None or committed <= last[0] + 1):
            # Read here before (a rejoin): go on, re-reading the last record to check that the
            # broker still holds the same log (one restarted with empty storage does not).
            self._verify[partition] = last
            self._consumer.seek(tp, last[0])
            return
        # New here, or another worker went further: rebuild the windows from the replay point.
        detect_requests.forget(partition)
        self.points.forget(partition)
        self._last_read.pop(partition, None)
        if committed is None:
            self._consumer.seek(tp, 0)   # the log's start; if retention removed it, see _out_of_range
            return
        self._committed[partition] = committed
        checkpoint = self._checkpoints.get(partition)
        replay_from = committed if checkpoint is None else min(checkpoint[1], committed)
        self._consumer.seek(tp, replay_from)
        if replay_from < committed:
            self._warm_until[partition] = committed
            log.info("partition %d: replaying offsets %d..%d into the windows",
                     partition, replay_from, committed - 1)

    def _forget_position(self, partition: int) -> None:
        # The partition's log is not the one read before: offsets start over.
        self.points.forget(partition)
        self._checkpoints.pop(partition, None)
        self._committed.pop(partition, None)
        self._warm_until.pop(partition, None)
        self._last_read.pop(partition, None)
        self._verify.pop(partition, None)

    def _log_replaced(self, tp: TopicPartition, offset: int) -> None:
        """The record at ``offset`` is not the one read there before: the broker lost the
        partition's log and a new one grew in its place. Read it from the beginning."""
        assert self._consumer is not None
        counters.incr("partition_log_replaced")
        log.warning("partition %d: the record at offset %d is not the one read before (the broker "
                    "lost its log); reading the new log from its beginning", tp.partition, offset)
        self._forget_position(tp.partition)
        self._consumer.seek(tp, 0)

    async def _out_of_range(self, positions: dict[TopicPartition, int]) -> None:
        """A position past the partition's end (a broker that lost its data came back, or
        retention deleted it): read what the partition holds from its beginning. Resets
        are explicit: Tansu answers offset queries unreliably (DESIGN.md)."""
        assert self._consumer is not None
        for tp, offset in positions.items():
            counters.incr("offsets_out_of_range")
            log.warning("partition %d: offset %s is out of range (the broker lost or deleted data); "
                        "reading it from its beginning", tp.partition, offset)
            self._forget_position(tp.partition)
            if offset:
                self._consumer.seek(tp, 0)
            else:   # offset 0 itself is gone (retention): ask the broker where the log starts
                await self._consumer.seek_to_beginning(tp)

    # --- commits and checkpoints -------------------------------------------------------

    async def _commit(self, force_checkpoint: bool = False) -> None:
        """Commit, per assigned partition, the offset up to which everything is stored and
        emitted; publish replay points first (see the module docstring)."""
        assert self._consumer is not None
        done = {p: end for p, end in self.sink.committable.items()
                if p in self.assigned and end > self._committed.get(p, -1)}
        if not done:
            return
        await detect_requests.flush()
        now = time.monotonic()
        for partition, end in done.items():
            if force_checkpoint or now - self._checkpointed_at.get(partition, 0.0) >= CHECKPOINT_EVERY_S:
                replay_from = self.points.replay_from(partition, end)
                await checkpoints_topic.send(key=checkpoint_key(self.group, self.topic, partition),
                                             value=encode_checkpoint(end, replay_from))
                self._checkpoints[partition] = (end, replay_from)
                self._checkpointed_at[partition] = now
        await app.producer.flush()
        await self._consumer.commit({TopicPartition(self.topic, p): OffsetAndMetadata(end, "")
                                     for p, end in done.items()})
        self._committed.update(done)
        counters.incr("commits")

    # --- rebalances -------------------------------------------------------------------

    async def revoke(self, revoked: list[TopicPartition]) -> None:
        """Store and commit what was read from ``revoked``. Their windows stay until
        :meth:`assign` knows whether they come back unchanged (see :meth:`_place`)."""
        mine = [tp.partition for tp in revoked if tp.topic == self.topic]
        if not mine:
            return
        async with self._lock:
            await self.sink.flush()
            try:
                await self._commit(force_checkpoint=True)
            except Exception:
                log.exception("commit on revocation failed (the tail is redelivered to the next owner)")
            for partition in mine:
                self.assigned.discard(partition)
                self.sink.forget(partition)
                self._warm_until.pop(partition, None)
                self._committed.pop(partition, None)
                self._checkpointed_at.pop(partition, None)
        log.info("request partitions revoked: %s", sorted(mine))

    async def assign(self, assigned: list[TopicPartition]) -> None:
        """Start reading ``assigned``: a partition already read goes on where it was; a new
        one starts at its replay point when a checkpoint says so, else at its committed
        offset, else at the beginning. Positions are always set explicitly: the
        consumer's own "earliest" reset was seen to start at the partition's end on
        Tansu (its offset answers are unreliable)."""
        assert self._consumer is not None
        mine = [tp for tp in assigned if tp.topic == self.topic]
        if any(tp.partition not in self._last_read for tp in mine):
            # Another worker may have owned them: its latest checkpoints are on the topic.
            self._checkpoints.update(await self._read_checkpoints())
        for tp in mine:
            await self._place(tp)
            self.assigned.add(tp.partition)
        self.joined = True
        log.info("request partitions assigned: %s", sorted(tp.partition for tp in mine))

    # --- start-up reads -----------------------------------------------------------------

    async def _seed_policy(self) -> None:
        """Feed the decision policy the active detector decisions on the decisions topic."""
        try:
            decisions = await asyncio.get_running_loop().run_in_executor(
                None, lambda: read_decisions(settings, timeout_s=READ_TIMEOUT_S))
        except Exception as exc:  # no broker yet: start empty (a repeat decision is deduplicated by id)
            log.warning("decisions topic not read at start-up (%s: %s); the policy starts empty",
                        type(exc).__name__, exc)
            return
        now = datetime.now(timezone.utc)
        seeded = 0
        for decision in decisions.active(now):
            if decision.origin == "detector":
                policy.remember(decision)
                seeded += 1
        counters.incr("policy_seeded_decisions", seeded)
        log.info("decision policy seeded with %d active decisions", seeded)

    async def _read_checkpoints(self) -> dict[int, tuple[int, int]]:
        """The latest checkpoint of each partition of this group, read to the topic's end
        (Tansu quirk: to the high-watermark of fetched records, never "latest")."""
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                                    fetch_max_wait_ms=settings.fetch_max_wait_ms)
        out: dict[int, tuple[int, int]] = {}
        prefix = f"{self.group}|{self.topic}|".encode()
        await consumer.start()
        try:
            tp = TopicPartition(settings.topic_checkpoints, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            deadline = time.monotonic() + READ_TIMEOUT_S
            while True:
                for rec in (await consumer.getmany(tp, timeout_ms=200)).get(tp, []):
                    if rec.key and rec.key.startswith(prefix):
                        value = decode_checkpoint(rec.value)
                        if value is not None:
                            out[int(rec.key[len(prefix):])] = value
                high = consumer.highwater(tp)
                if high is not None and await consumer.position(tp) >= high:
                    return out
                if time.monotonic() > deadline:
                    log.warning("checkpoint topic not read to its end in %.0f s; starting without "
                                "the rest", READ_TIMEOUT_S)
                    return out
        finally:
            await consumer.stop()


requests_consumer = RequestsConsumer(f"{app.conf.id}-requests")
app.before_stop.append(requests_consumer.stop)


@app.task
async def run_requests_consumer() -> None:
    """Start the request consumer once the app (and its producer) runs."""
    await requests_consumer.start()
