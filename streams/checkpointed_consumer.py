"""A consumer-group member whose detector state survives a restart exactly: explicit
positions, manual commits, replay points and warm replay. The request topic's
consumer (:mod:`streams.requests_consumer`) and the re-keyed topics' consumers
(:mod:`streams.rekeyed_consumer`) are subclasses; this module holds what they share.

Each reads one topic with aiokafka's batch API (``getmany``) inside the Faust
worker, in its own consumer group (``<app id>-<kind>``); Faust's producer sends
what it emits. A subclass says how to parse a batch of records, how to feed
already-handled ones to its detectors (*warm*), how to handle new ones
(*live*), up to which offset everything is done (*committable*), and how to
drop a partition's state. Each fetch waits at most ``settings.fetch_max_wait_ms``,
longer while the consumer is far behind (:mod:`streams.catch_up_wait`).

**Offsets** are committed manually every ``settings.commit_interval_s``
seconds, on a revocation and at shutdown: up to the subclass's committable
offsets, after the producer has delivered what was emitted for those records
(detections, decisions, re-keyed batches). A crash redelivers the uncommitted
tail: at-least-once, no loss; detections and decisions have ids derived from
their trigger, so a repeat replaces rather than adds.

**Exact state across restarts** (:mod:`streams.checkpoints`): before a commit
the replay point of each partition is published on ``topic_checkpoints``
(every :data:`CHECKPOINT_EVERY_S` when it moved, every
:data:`CHECKPOINT_REFRESH_S` when it did not: a re-keyed partition gets progress
messages every second even without traffic, and Tansu does not compact the
topic; an older checkpoint with the same replay point replays the same
records); when a partition is assigned, its latest checkpoint is read from
the end of the topic backwards (:func:`read_checkpoints`: the topic only
grows), the consumer seeks back to its replay point and feeds the records before the
committed offset to the detectors only (counted as ``warmed_<kind>``). The
decision policy is seeded at start-up with the active decisions on the
decisions topic (:func:`streams.decide.seed_policy`), so a threshold crossed
again after a restart does not decide twice.

Group settings follow the Faust app's (Tansu quirks, DESIGN.md): short
session timeout, the fetch wait of the decision path. Positions are never
reset implicitly (``auto_offset_reset="none"``): a partition without a
committed offset is read from its beginning, and a position found past the
end (the broker lost its data and came back) starts again at the beginning,
both by explicit seeks. Tansu answers a fetch past the end of a log with no
records and no error, but with the right high-watermark: a next offset above
the high-watermark fetched there means the log is shorter than what was read
(the broker came back with empty storage). After a rejoin, a partition read
before is read again from its last record, which must be the same record (the
same value and producer timestamp: progress-only messages of an idle
re-keyed partition repeat the same bytes): a new log that already grew past
the old position is noticed that way. Either
way the new log is read from its start. (A re-keyed partition always has a
position — progress messages arrive every second — so without the first check
it would wait, after a broker loss, until the new log reached the old length.) Checkpoints are read to the
high-watermark returned with fetched records, never to Tansu's wrong "latest
offset" answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Coroutine, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import NoOffsetForPartitionError, OffsetOutOfRangeError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from gatewatch.settings import GatewatchSettings
from streams import catch_up_wait, counters
from streams.app import HEARTBEAT_INTERVAL_S, REBALANCE_TIMEOUT_S, SESSION_TIMEOUT_S, app, settings
from streams.checkpoints import ReplayPoints, checkpoint_key, decode_checkpoint, encode_checkpoint
from streams.topics import checkpoints_topic

log = logging.getLogger(__name__)

#: Seconds between checkpoint messages of a partition (a replay point a little old only
#: makes the warm-up replay a little more; see streams/checkpoints.py).
CHECKPOINT_EVERY_S = 10.0
#: Seconds between checkpoint messages of a partition whose replay point did not move.
CHECKPOINT_REFRESH_S = 600.0
#: Longest wait to read the checkpoint topic (s).
READ_TIMEOUT_S = 30.0
#: Checkpoint messages read per step when the topic is read from its end backwards.
TAIL_STEP = 5000
#: Seconds beyond CHECKPOINT_REFRESH_S a key is looked for (late commits, clock skew).
REFRESH_MARGIN_S = 60.0

#: Checkpoints as read from the topic: key (``group|topic|partition``) -> (committed, replay_from).
Checkpoints = dict[bytes, tuple[int, int]]


async def read_checkpoints(s: GatewatchSettings, wanted: Collection[bytes], replay_s: float) -> Checkpoints:
    """The latest checkpoint of each key in ``wanted`` on ``s.topic_checkpoints`` (broker
    ``s.bootstrap_servers``).

    The topic only grows (Tansu does not compact, DESIGN.md; up to one message per
    partition every :data:`CHECKPOINT_EVERY_S`, ~180k a day for 20 busy partitions),
    so it is read **from its end backwards**, :data:`TAIL_STEP` records at a time —
    each step forwards, later messages winning — until every wanted key is found,
    the topic's start is reached, or a step's messages are older than
    :data:`CHECKPOINT_REFRESH_S` + ``replay_s`` (the reader's replay span, s) +
    :data:`REFRESH_MARGIN_S` before the newest one: a partition that takes records is
    checkpointed at least every :data:`CHECKPOINT_REFRESH_S`, and one that took none
    for longer than its replay span has nothing to replay. The end is the
    high-watermark returned with fetched records (Tansu quirk: never its "latest
    offset")."""
    wanted = set(wanted)
    out: Checkpoints = {}
    if not wanted:
        return out
    consumer = AIOKafkaConsumer(bootstrap_servers=s.bootstrap_servers, enable_auto_commit=False,
                                fetch_max_wait_ms=s.fetch_max_wait_ms)
    await consumer.start()
    try:
        tp = TopicPartition(s.topic_checkpoints, 0)
        consumer.assign([tp])
        deadline = time.monotonic() + READ_TIMEOUT_S
        end = await _high_watermark(consumer, tp, deadline)
        newest_ms: int | None = None
        while end > 0:
            start = max(0, end - TAIL_STEP)
            step = await _read_range(consumer, tp, start, end, deadline)
            if step is None:
                log.warning("checkpoint topic not read in %.0f s; starting without the rest", READ_TIMEOUT_S)
                return out
            found, oldest_ms, step_newest_ms = step
            for key, value in found.items():
                if key in wanted and key not in out:
                    out[key] = value
            if newest_ms is None:
                newest_ms = step_newest_ms
            horizon_ms = None if newest_ms is None else \
                newest_ms - 1000 * (CHECKPOINT_REFRESH_S + replay_s + REFRESH_MARGIN_S)
            if wanted <= out.keys() or (horizon_ms is not None and oldest_ms is not None and oldest_ms < horizon_ms):
                break
            end = start
        return out
    finally:
        await consumer.stop()


async def _high_watermark(consumer: AIOKafkaConsumer, tp: TopicPartition, deadline: float) -> int:
    """The partition's end, from a fetch at its start (0 if it is empty)."""
    await consumer.seek_to_beginning(tp)
    while time.monotonic() < deadline:
        await consumer.getmany(tp, timeout_ms=200, max_records=1)
        high = consumer.highwater(tp)
        if high is not None:
            return high
    return 0


async def _read_range(consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, end: int,
                      deadline: float) -> tuple[Checkpoints, int | None, int | None] | None:
    """The latest checkpoint per key among offsets ``[start, end)``, with the oldest and
    newest message timestamps (ms) of the range; None past ``deadline``."""
    consumer.seek(tp, start)
    found: Checkpoints = {}
    oldest_ms = newest_ms = None
    position = start
    while position < end:
        if time.monotonic() > deadline:
            return None
        records = (await consumer.getmany(tp, timeout_ms=200)).get(tp, [])
        for rec in records:
            if rec.offset >= end:
                break
            oldest_ms = rec.timestamp if oldest_ms is None else min(oldest_ms, rec.timestamp)
            newest_ms = rec.timestamp if newest_ms is None else max(newest_ms, rec.timestamp)
            value = decode_checkpoint(rec.value)
            if rec.key and value is not None:
                found[rec.key] = value
        if records:
            position = max(position, records[-1].offset + 1)
    return found, oldest_ms, newest_ms


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, owner: CheckpointedConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.owner.revoke(list(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.owner.assign(list(assigned))


class CheckpointedConsumer:
    """Reads ``topic`` in batches of at most ``max_records`` records (default
    ``settings.detector_batch_size``) in group ``group`` (see the module docstring);
    replays ``replay_s`` seconds of event time into the detectors when a partition is
    assigned.

    :meth:`start` joins the group and starts the loop (and the subclass's background
    tasks; checkpoints are read when partitions are assigned); :meth:`stop` commits
    what is done and leaves the group. ``assigned`` is the partitions it reads now; ``joined`` turns true at its
    first assignment (possibly of no partition). Subclasses implement the hooks
    below; counters are named after ``kind``.
    """

    def __init__(self, group: str, topic: str, kind: str, replay_s: float, max_records: int | None = None) -> None:
        self.group, self.topic, self.kind = group, topic, kind
        self.max_records = max_records or settings.detector_batch_size
        self.points = ReplayPoints(window_s=replay_s)
        self.assigned: set[int] = set()
        self.joined = False
        self._consumer: AIOKafkaConsumer | None = None
        self._checkpoints: dict[int, tuple[int, int]] = {}   # partition -> (committed, replay_from)
        self._warm_until: dict[int, int] = {}
        self._last_read: dict[int, tuple[int, int, int]] = {}   # partition -> (offset, hash of value, ts)
        self._verify: dict[int, tuple[int, int, int]] = {}      # partition -> record expected first
        self._next: dict[int, int] = {}                    # partition -> offset to read next
        self._committed: dict[int, int] = {}
        self._checkpointed_at: dict[int, float] = {}   # partition -> last considered
        self._written_at: dict[int, float] = {}        # partition -> last written
        self._lock = asyncio.Lock()
        self._catch_up = catch_up_wait.CatchUpWait(base_ms=settings.fetch_max_wait_ms,
                                                   max_records=self.max_records)
        self._tasks: list[asyncio.Task[Any]] = []
        self._loop_task: asyncio.Task[Any] | None = None
        self._stopping = False

    # --- what a subclass provides ---------------------------------------------------------

    def _parse(self, partition: int, records: list[ConsumerRecord]) -> list[tuple[int, float | None, Any]]:
        """``(offset, newest event time in epoch s or None, item)`` for each usable record of
        ``partition``, in offset order (malformed ones counted and left out)."""
        raise NotImplementedError

    def _warm(self, items: list[Any]) -> None:
        """Feed items handled before a restart to the detectors: state only, nothing emitted."""
        raise NotImplementedError

    async def _live(self, items: list[Any], ends: dict[int, int]) -> None:
        """Handle new items; ``ends``: per partition, the offset after the batch's last record."""
        raise NotImplementedError

    def _committable(self) -> dict[int, int]:
        """Per partition, the offset before which every record is done (may be committed)."""
        raise NotImplementedError

    def _forget(self, partition: int) -> None:
        """Drop the detector state of ``partition`` (new here, or another worker went further)."""
        raise NotImplementedError

    def _new_log(self, partition: int) -> None:
        """``partition``'s log is not the one read before (offsets start over)."""

    async def _before_commit(self) -> None:
        """Send what must be delivered before offsets are committed."""

    async def _before_revoke(self) -> None:
        """Finish what was read before a revocation's commit."""

    def _revoked(self, partition: int) -> None:
        """``partition`` was revoked and committed."""

    def _replay_low_s(self, partition: int) -> float | None:
        """A low watermark (epoch s) bounding the replay span of ``partition``, or None."""
        return None

    async def _before_new_partitions(self, new: list[int]) -> None:
        """Called on an assignment with partitions not read here before (``new``), before
        they are placed (and replayed): state the detectors read from elsewhere is loaded here."""

    def _background(self) -> list[Coroutine[Any, Any, None]]:
        """Coroutines run as tasks while the consumer runs (a dead one stops the worker)."""
        return []

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Join the group, start the loop."""
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers, group_id=self.group,
            client_id=f"{self.group}-{id(self):x}", enable_auto_commit=False,
            auto_offset_reset="none", fetch_max_wait_ms=settings.fetch_max_wait_ms,
            session_timeout_ms=int(SESSION_TIMEOUT_S * 1000),
            heartbeat_interval_ms=int(HEARTBEAT_INTERVAL_S * 1000),
            rebalance_timeout_ms=int(REBALANCE_TIMEOUT_S * 1000))
        self._consumer.subscribe([self.topic], listener=_Rebalance(self))
        await self._consumer.start()
        self._tasks = [asyncio.create_task(c, name=f"{self.kind}-{c.__name__}") for c in self._background()]
        self._loop_task = asyncio.create_task(self._loop(), name=f"{self.kind}-consumer")
        self._tasks.append(self._loop_task)
        for task in self._tasks:
            task.add_done_callback(self._watch)

    async def stop(self) -> None:
        """Stop reading, finish what was read, commit, leave the group. Idempotent."""
        if self._stopping or self._consumer is None:
            return
        self._stopping = True
        if self._loop_task is not None:
            try:
                await asyncio.wait_for(self._loop_task, timeout=5.0)
            except (asyncio.TimeoutError, Exception):
                self._loop_task.cancel()
        try:
            async with self._lock:
                await self._commit(force_checkpoint=True)
        except Exception:
            log.exception("final commit of the %s consumer failed (the tail is redelivered)", self.kind)
        for task in self._tasks:
            task.cancel()
        await self._consumer.stop()

    def committed_total(self) -> int:
        """Sum of the offsets committed for the partitions read now (health, tests)."""
        return sum(self._committed.get(p, 0) for p in self.assigned)

    # --- the loop -------------------------------------------------------------------------

    def _watch(self, task: asyncio.Task[Any]) -> None:
        # A dead loop or background task must not go unnoticed: the worker stops (and is
        # restarted by its supervisor) rather than keep answering health checks.
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
                batches = await self._consumer.getmany(timeout_ms=100, max_records=self.max_records)
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
                self._adapt_fetch_wait(sum(len(records) for records in batches.values()))
                self._check_log_ends()
                if time.monotonic() - last_commit >= settings.commit_interval_s:
                    last_commit = time.monotonic()
                    try:
                        await self._commit()
                    except Exception as exc:  # broker trouble: the next commit covers it
                        counters.incr("commit_errors")
                        log.warning("%s offset commit failed (%s: %s); retrying later", self.kind,
                                    type(exc).__name__, exc)

    def _adapt_fetch_wait(self, returned: int) -> None:
        """A longer fetch wait while behind and starved (the last poll ``returned`` few
        records), the base one once caught up (:mod:`streams.catch_up_wait`: the embedded
        broker's catch-up stall)."""
        assert self._consumer is not None
        was_behind, before = self._catch_up.behind, self._catch_up.wait_ms
        lag = catch_up_wait.lag(self._consumer, self.topic, self._next)
        wait_ms = self._catch_up.update(lag, returned)
        if wait_ms == before:
            return
        catch_up_wait.set_fetch_wait(self._consumer, wait_ms)
        if self._catch_up.behind and not was_behind:
            counters.incr(f"catch_up_{self.kind}")
            log.info("%s consumer %d records behind: fetch wait up to %d ms until caught up",
                     self.kind, lag, self._catch_up.max_ms)
        elif not self._catch_up.behind:
            log.info("%s consumer caught up: fetch wait %d ms", self.kind, wait_ms)

    async def _handle(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        warm: list[Any] = []
        live: list[Any] = []
        ends: dict[int, int] = {}
        observe = self.points.observe
        for tp, records in batches.items():
            partition = tp.partition
            if partition not in self.assigned or not records:
                continue
            self._next[partition] = records[-1].offset + 1
            expected = self._verify.pop(partition, None)
            if expected is not None:
                first = records[0]
                if (first.offset, hash(first.value), first.timestamp) != expected:
                    self._log_replaced(tp, f"the record at offset {expected[0]} is not the one read before")
                    continue
                records = records[1:]   # the last record read before, read again to compare
                if not records:
                    continue
            warm_until = self._warm_until.get(partition, -1)
            for offset, ts_s, item in self._parse(partition, records):
                if ts_s is not None:
                    observe(partition, offset, ts_s)
                (warm if offset < warm_until else live).append(item)
            if records[-1].offset + 1 >= warm_until:
                self._warm_until.pop(partition, None)
            ends[partition] = records[-1].offset + 1
            last = records[-1]
            self._last_read[partition] = (last.offset, hash(last.value), last.timestamp)
        if warm:
            self._warm(warm)
            counters.incr(f"warmed_{self.kind}", len(warm))
        await self._live(live, ends)

    # --- positions ----------------------------------------------------------------------

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
            self._seek(tp, last[0])
            return
        # New here, or another worker went further: rebuild the state from the replay point.
        self._forget(partition)
        self.points.forget(partition)
        self._last_read.pop(partition, None)
        if committed is None:
            self._seek(tp, 0)   # the log's start; if retention removed it, see _out_of_range
            return
        self._committed[partition] = committed
        checkpoint = self._checkpoints.get(partition)
        replay_from = committed if checkpoint is None else min(checkpoint[1], committed)
        self._seek(tp, replay_from)
        if replay_from < committed:
            self._warm_until[partition] = committed
            log.info("%s partition %d: replaying offsets %d..%d into the detectors", self.kind,
                     partition, replay_from, committed - 1)

    def _seek(self, tp: TopicPartition, offset: int) -> None:
        assert self._consumer is not None
        self._consumer.seek(tp, offset)
        self._next[tp.partition] = offset

    def _check_log_ends(self) -> None:
        """A partition whose next offset is above the high-watermark fetched there has a
        shorter log than the one read (Tansu: no out-of-range error; module docstring)."""
        assert self._consumer is not None
        for partition in list(self.assigned):
            tp = TopicPartition(self.topic, partition)
            high, next_offset = self._consumer.highwater(tp), self._next.get(partition)
            if high is not None and next_offset is not None and next_offset > high:
                self._log_replaced(tp, f"the log ends at offset {high}, before offset {next_offset} read next")

    def _forget_position(self, partition: int) -> None:
        # The partition's log is not the one read before: offsets start over.
        self.points.forget(partition)
        self._checkpoints.pop(partition, None)
        self._committed.pop(partition, None)
        self._warm_until.pop(partition, None)
        self._last_read.pop(partition, None)
        self._verify.pop(partition, None)
        self._next.pop(partition, None)
        self._new_log(partition)

    def _log_replaced(self, tp: TopicPartition, why: str) -> None:
        """The broker lost the partition's log (``why`` says how it shows) and a new one
        is in its place. Read it from the beginning."""
        counters.incr("partition_log_replaced")
        log.warning("%s partition %d: %s (the broker lost its log); reading the new log from its "
                    "beginning", self.kind, tp.partition, why)
        self._forget_position(tp.partition)
        self._seek(tp, 0)

    async def _out_of_range(self, positions: dict[TopicPartition, int]) -> None:
        """A position past the partition's end (a broker that lost its data came back, or
        retention deleted it): read what the partition holds from its beginning. Resets
        are explicit: Tansu answers offset queries unreliably (DESIGN.md)."""
        assert self._consumer is not None
        for tp, offset in positions.items():
            counters.incr("offsets_out_of_range")
            log.warning("%s partition %d: offset %s is out of range (the broker lost or deleted data); "
                        "reading it from its beginning", self.kind, tp.partition, offset)
            self._forget_position(tp.partition)
            if offset:
                self._seek(tp, 0)
            else:   # offset 0 itself is gone (retention): ask the broker where the log starts
                await self._consumer.seek_to_beginning(tp)

    # --- commits and checkpoints -------------------------------------------------------

    async def _commit(self, force_checkpoint: bool = False) -> None:
        """Commit, per assigned partition, the offset up to which everything is done and
        emitted; publish replay points first (see the module docstring)."""
        assert self._consumer is not None
        # Never past the offset read next: after a log was replaced, the committable offsets
        # of the old log must not be committed into the new one (its first records would be
        # taken for handled ones at the next assignment).
        done = {p: end for p, end in self._committable().items()
                if p in self.assigned and self._committed.get(p, -1) < end <= self._next.get(p, -1)}
        if not done:
            return
        await self._before_commit()
        now = time.monotonic()
        considered: list[int] = []
        written: dict[int, tuple[int, int]] = {}
        for partition, end in done.items():
            if not force_checkpoint and now - self._checkpointed_at.get(partition, 0.0) < CHECKPOINT_EVERY_S:
                continue
            considered.append(partition)
            replay_from = self.points.replay_from(partition, end, self._replay_low_s(partition))
            last = self._checkpoints.get(partition)
            if last is not None and last[1] == replay_from and \
                    now - self._written_at.get(partition, 0.0) < CHECKPOINT_REFRESH_S:
                continue   # the checkpoint on the topic replays the same records
            await checkpoints_topic.send(key=checkpoint_key(self.group, self.topic, partition),
                                         value=encode_checkpoint(end, replay_from))
            written[partition] = (end, replay_from)
        await app.producer.flush()
        # Delivered: later commits may rely on them (a failed flush leaves them due).
        self._checkpointed_at.update((p, now) for p in considered)
        self._checkpoints.update(written)
        self._written_at.update((p, now) for p in written)
        await self._consumer.commit({TopicPartition(self.topic, p): OffsetAndMetadata(end, "")
                                     for p, end in done.items()})
        self._committed.update(done)
        counters.incr("commits")

    # --- rebalances -------------------------------------------------------------------

    async def revoke(self, revoked: list[TopicPartition]) -> None:
        """Finish and commit what was read from ``revoked``. Their state stays until
        :meth:`assign` knows whether they come back unchanged (see :meth:`_place`)."""
        mine = [tp.partition for tp in revoked if tp.topic == self.topic]
        if not mine:
            return
        async with self._lock:
            await self._before_revoke()
            try:
                await self._commit(force_checkpoint=True)
            except Exception:
                log.exception("%s commit on revocation failed (the tail is redelivered to the next owner)",
                              self.kind)
            for partition in mine:
                self.assigned.discard(partition)
                self._revoked(partition)
                self._warm_until.pop(partition, None)
                self._committed.pop(partition, None)
                self._checkpointed_at.pop(partition, None)
                self._written_at.pop(partition, None)
                self._next.pop(partition, None)
        log.info("%s partitions revoked: %s", self.kind, sorted(mine))

    async def assign(self, assigned: list[TopicPartition]) -> None:
        """Start reading ``assigned``: a partition already read goes on where it was; a new
        one starts at its replay point when a checkpoint says so, else at its committed
        offset, else at the beginning. Positions are always set explicitly: the
        consumer's own "earliest" reset was seen to start at the partition's end on
        Tansu (its offset answers are unreliable)."""
        assert self._consumer is not None
        mine = [tp for tp in assigned if tp.topic == self.topic]
        new = [tp.partition for tp in mine if tp.partition not in self._last_read]
        if new:
            await self._before_new_partitions(new)
            # Another worker may have owned them: its latest checkpoints are on the topic.
            wanted = [checkpoint_key(self.group, self.topic, tp.partition) for tp in mine
                      if tp.partition not in self._last_read]
            self._checkpoints.update(self._mine(await read_checkpoints(settings, wanted, self.points.span_s)))
        for tp in mine:
            await self._place(tp)
            self.assigned.add(tp.partition)
        self.joined = True
        log.info("%s partitions assigned: %s", self.kind, sorted(tp.partition for tp in mine))

    def _mine(self, checkpoints: Checkpoints) -> dict[int, tuple[int, int]]:
        """This group's and topic's checkpoints, by partition."""
        prefix = checkpoint_key(self.group, self.topic, 0)[:-1]
        out = {}
        for key, value in checkpoints.items():
            if key.startswith(prefix) and key[len(prefix):].isdigit():
                out[int(key[len(prefix):])] = value
        return out
