"""Request-event shipping: one :class:`gatewatch.events.RequestEvent` per request, to Kafka,
without losing events while the broker is away.

The event is built when the request is answered: in ``response()`` (which
mitmproxy also calls for answers the gateway's addons made in
``request()``) or in ``error()`` when no response came (upstream down:
status 502, ``answered_by="error"``; a request that never arrived whole:
status 400, ``answered_by="bad_request"``; a body above the size limit:
status 413). The event id is also sent to
the client as ``X-Request-Id``. Messages are keyed by principal, or by client IP
for login attempts and anonymous callers (:func:`gatewatch.events.request_key`), so
every event of one key lands on one partition, in order.

Path of an event (hooks never wait, never touch the disk)::

    hook ──put_nowait──► bounded asyncio.Queue ──pump task──► producer (mode "direct")
                                                    └────────► disk spool (mode "spool")
    link task: connects the producer; in "spool" mode replays the spool in order
               and switches to "direct" once it is empty

- **direct**: the pump hands events to the aiokafka producer; delivery is
  confirmed by callbacks (``sent``, send→ack latency histogram).
- A failed delivery or send (broker gone; the producer gives up after
  :data:`REQUEST_TIMEOUT_MS`) switches to **spool**: the pump stops taking
  from the queue until every in-flight send has settled, writes the failed
  events (in acceptance order) to the spool, then keeps writing the queue's
  events behind them. So the spool holds events in the order they were
  accepted.
- The link task probes the broker (metadata request); when it answers it
  replays the spool in batches of :data:`REPLAY_BATCH`, committing the
  spool's cursor after each delivered batch (re-sending only the records of
  a batch that failed), and switches back to **direct** when the spool is
  empty — atomically with respect to the pump, so newer events never
  overtake spooled ones.
- The gateway starts in **spool** mode: events accepted before the producer
  is up, and any spool left by the previous run (a restart, a crash), are
  sent first.
- ``done()`` lets in-flight sends settle (:data:`FLUSH_TIMEOUT_S`), then
  writes the failed ones and whatever is still queued to the spool, so a
  restart sends them.

Nothing accepted is lost unless the queue is full (``dropped`` reason
``queue_full``), the spool is full or unwritable (``spool_full``,
``spool_error``) or there is no spool (``no_spool``: another process holds
the directory) — each drop is counted. Delivery is at-least-once: a batch
delivered but not acknowledged (the broker died in between), or a crash
between delivery and the cursor commit, is sent again.

Fail-open vs fail-closed (``gatewatch_events_fail_open``): when an event
could not be recorded (queue and spool full), requests pass (open, the
default; drops are counted) or are answered 503 before reaching the
upstream (closed: every answered request is recorded).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from mitmproxy import ctx, exceptions, http

from gatewatch.events import AnsweredBy, RequestEvent, request_key
from gatewatch.settings import load_settings
from inline import brokers
from inline.flowstate import FlowFacts, answered, get_facts, json_answer
from inline.histogram import LatencyHistogram
from inline.redaction import redact_target
from inline.routes import ensure_facts
from gatewatch.spool import Spool, SpoolLocked

logger = logging.getLogger(__name__)

#: Longest wait of ``done()`` for everything to be delivered, and again for the producer
#: to flush, seconds.
FLUSH_TIMEOUT_S = 3.0
#: Producer request timeout (ms): after this a send to an unreachable broker fails and the
#: events go to the spool (aiokafka's default, 40 s, would hold them in memory that long).
REQUEST_TIMEOUT_MS = 3000
#: Events moved from the queue per pump step, and records per replay batch.
PUMP_BATCH = 500
REPLAY_BATCH = 500
#: Longest wait of the broker probe (metadata request), seconds.
PROBE_TIMEOUT_S = 2.0
#: Text fields are cut to these many characters (events stay small and bounded).
MAX_PATH = 4096
MAX_USER_AGENT = 512
MAX_HOST = 255


def _text(value: str | None, limit: int) -> str:
    """Printable UTF-8 text of a header/path value (undecodable bytes become U+FFFD), cut to ``limit``."""
    if not value:
        return ""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")[:limit]


#: Start of mitmproxy's error message for a request body above ``body_size_limit``
#: (``HttpStream.check_body_size``, mitmproxy 11.0.2), answered 413.
BODY_TOO_LARGE = "Request body exceeds"


def error_status(flow: http.HTTPFlow) -> tuple[int, AnsweredBy]:
    """Status and ``answered_by`` of a request that ended in ``error()``:
    ``(413, "bad_request")`` for a request body above the size limit
    (:mod:`inline.size_limits`), ``(400, "bad_request")`` if the request never
    arrived whole (client-side problem), else ``(502, "error")`` (the upstream
    failed or was unreachable)."""
    if flow.error is not None and flow.error.msg.startswith(BODY_TOO_LARGE):
        return 413, "bad_request"
    if flow.request is None or flow.request.timestamp_end is None:
        return 400, "bad_request"
    return 502, "error"


def build_event(flow: http.HTTPFlow, facts: FlowFacts, status: int, answered_by: AnsweredBy) -> RequestEvent:
    """The request event of ``flow`` from its facts, answered with ``status`` by ``answered_by``.

    ``path`` is the request target with its secrets replaced by ``REDACTED``
    (:func:`inline.redaction.redact_target`). ``latency_ms`` is the upstream's time to answer (first response byte
    minus last request byte, ms; 0 when the gateway answered); ``bytes_in``
    and ``bytes_out`` are body sizes as transferred (before any
    content-encoding is undone).
    """
    req, resp = flow.request, flow.response
    latency_ms = 0.0
    if answered_by == "upstream" and resp is not None and resp.timestamp_start and req.timestamp_end:
        latency_ms = max(0.0, (resp.timestamp_start - req.timestamp_end) * 1000.0)
    return RequestEvent(
        event_id=facts.event_id,
        ts=datetime.fromtimestamp(req.timestamp_start, timezone.utc),
        client_ip=facts.client_ip,
        method=_text(req.method, 32),
        host=_text(req.pretty_host, MAX_HOST),
        path=_text(redact_target(req.path), MAX_PATH),
        route=_text(facts.route, MAX_PATH),
        status=status,
        latency_ms=latency_ms,
        bytes_in=len(req.raw_content or b""),
        bytes_out=len(resp.raw_content or b"") if resp is not None else 0,
        principal=facts.principal,
        auth=facts.auth,
        answered_by=answered_by,
        user_agent=_text(req.headers.get("user-agent"), MAX_USER_AGENT),
        login=facts.login,
        username_hash=facts.username_hash,
        decision_id=facts.decision_id,
        asn=facts.asn,
        country=facts.country,
    )


@dataclass(frozen=True)
class ShipSpec:
    """Parsed options of the event shipper (sizes in bytes)."""

    bootstrap_servers: str
    topic: str
    queue_max: int
    spool_dir: Path
    spool_max_bytes: int
    spool_segment_bytes: int
    fail_open: bool = True


@dataclass
class ShipperStats:
    """Counters for metrics: events ``queued`` (accepted), ``sent`` (acknowledged),
    ``failed`` (send attempts that failed; the events were kept), ``spooled``
    (written to disk), ``dropped`` (lost, total; by reason in ``drops``),
    producer start/probe failures (``reconnects``), send latency."""

    queued: int = 0
    sent: int = 0
    failed: int = 0
    spooled: int = 0
    dropped: int = 0
    reconnects: int = 0
    refused: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` lost events for ``reason``."""
        if n > 0:
            self.dropped += n
            self.drops[reason] += n

    def dropped_by_reason(self) -> dict[str, int]:
        return dict(self.drops)


#: One event on its way: (acceptance sequence number, key, value).
Record = tuple[int, bytes, bytes]


class EventShipper:
    """Addon: builds one request event per request and ships it to Kafka in the background,
    through a disk spool while the broker is away (see the module docstring).

    Options: ``gatewatch_bootstrap_servers``, ``gatewatch_topic_requests``,
    ``gatewatch_event_queue_max``, ``gatewatch_spool_dir``,
    ``gatewatch_spool_max_bytes``, ``gatewatch_spool_segment_bytes``,
    ``gatewatch_events_fail_open``. Must be the last addon, so that every
    other addon has recorded its facts when ``response()`` runs.
    """

    def __init__(self) -> None:
        self.spec: ShipSpec | None = None
        self.stats = ShipperStats()
        self.queue: asyncio.Queue[RequestEvent] | None = None
        self.spool: Spool | None = None
        self.mode = "spool"
        self.producer = None
        self._seq = 0
        self._inflight = 0
        self._settled = asyncio.Event()
        self._failed: list[Record] = []
        self._held: list[Record] = []
        self._replay_pending: tuple[list[tuple[bytes, bytes]], object] | None = None
        self._spool_wanted = asyncio.Event()
        self._direct = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    # --- options and life cycle ---------------------------------------------------------

    def load(self, loader) -> None:
        s = load_settings()
        brokers.add_bootstrap_option(loader)
        loader.add_option("gatewatch_topic_requests", str, s.topic_requests,
                          "Topic the gateway writes request events to.")
        loader.add_option("gatewatch_event_queue_max", int, s.event_queue_max,
                          "Events waiting in memory at most; more are dropped and counted.")
        loader.add_option("gatewatch_spool_dir", str, str(s.spool_dir),
                          "Directory of the on-disk event spool (one gateway process per directory).")
        loader.add_option("gatewatch_spool_max_bytes", int, s.spool_max_bytes,
                          "Most bytes of events waiting on disk; more are dropped and counted.")
        loader.add_option("gatewatch_spool_segment_bytes", int, s.spool_segment_bytes,
                          "Size of one spool segment file, bytes.")
        loader.add_option("gatewatch_events_fail_open", bool, s.events_fail_open,
                          "When events cannot be recorded: pass requests (true) or answer 503 (false).")

    def configure(self, updated: set[str]) -> None:
        names = {"gatewatch_bootstrap_servers", "gatewatch_topic_requests", "gatewatch_event_queue_max",
                 "gatewatch_spool_dir", "gatewatch_spool_max_bytes", "gatewatch_spool_segment_bytes",
                 "gatewatch_events_fail_open"}
        if not updated & names:
            return
        o = ctx.options
        if not o.gatewatch_bootstrap_servers.strip():
            raise exceptions.OptionsError("gatewatch_bootstrap_servers must not be empty")
        if not o.gatewatch_topic_requests.strip():
            raise exceptions.OptionsError("gatewatch_topic_requests must not be empty")
        if o.gatewatch_event_queue_max < 1:
            raise exceptions.OptionsError("gatewatch_event_queue_max must be >= 1")
        if o.gatewatch_spool_max_bytes < 1 or o.gatewatch_spool_segment_bytes < 1:
            raise exceptions.OptionsError("spool sizes must be >= 1")
        if not o.gatewatch_spool_dir.strip():
            raise exceptions.OptionsError("gatewatch_spool_dir must not be empty")
        if self._tasks and self.spec is not None:
            raise exceptions.OptionsError("event shipping options cannot change while running")
        self.spec = ShipSpec(o.gatewatch_bootstrap_servers.strip(), o.gatewatch_topic_requests.strip(),
                             o.gatewatch_event_queue_max, Path(o.gatewatch_spool_dir.strip()),
                             o.gatewatch_spool_max_bytes, o.gatewatch_spool_segment_bytes,
                             o.gatewatch_events_fail_open)

    def running(self) -> None:
        brokers.quiet_aiokafka_errors()
        if self._tasks or self.spec is None:
            return
        spec = self.spec
        try:
            self.spool = Spool(spec.spool_dir, spec.spool_max_bytes, spec.spool_segment_bytes)
        except (SpoolLocked, OSError) as exc:
            # Warning, not error: see inline/brokers.py (mitmdump start-up quirk).
            logger.warning("event spool unavailable (%s); events are dropped while the broker is away", exc)
            self.spool = None
        if self.spool is not None and not self.spool.empty:
            logger.warning("event spool holds %d bytes from a previous run; sending them first",
                           self.spool.pending_bytes)
        self.queue = asyncio.Queue(maxsize=spec.queue_max)
        self.mode = "spool"
        self._settled.set()
        self._tasks = [asyncio.create_task(self._pump(spec, self.queue), name="gatewatch event pump"),
                       asyncio.create_task(self._link(spec), name="gatewatch event link")]

    def drained(self) -> bool:
        """True when every accepted event has been acknowledged (nothing queued, held,
        in flight, failed or spooled)."""
        return (self.mode == "direct" and self._inflight == 0 and not self._held and not self._failed
                and (self.queue is None or self.queue.empty())
                and (self.spool is None or self.spool.empty))

    async def done(self) -> None:
        if not self._tasks or self.queue is None:
            return
        # Give the background tasks up to FLUSH_TIMEOUT_S to deliver everything
        # (quick when the broker is up); what is left goes to the spool below.
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while not self.drained() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await asyncio.wait_for(task, FLUSH_TIMEOUT_S)
            except (asyncio.CancelledError, asyncio.TimeoutError):
                pass
        self._tasks = []
        if self.producer is not None:
            try:   # stop() flushes: in-flight sends are delivered or fail into self._failed
                await asyncio.wait_for(self.producer.stop(), FLUSH_TIMEOUT_S)
            except Exception as exc:
                logger.warning("closing event producer: %s: %s", type(exc).__name__, exc)
            self.producer = None
        await asyncio.sleep(0)   # let the delivery callbacks run
        held, self._held = self._held, []
        leftover = self._take_failed() + held + [self._record(e) for e in self._drain_queue()]
        if leftover:
            self._to_spool(leftover, reason_if_no_spool="shutdown")
            logger.warning("%d request events not sent at shutdown; kept in the spool: %d",
                           len(leftover), self.stats.spooled)
        if self.spool is not None:
            self.spool.close()
            self.spool = None
        self.queue = None

    # --- hooks ----------------------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> None:
        """Fail-closed only: refuse a request whose event could not be recorded."""
        if self.spec is None or self.spec.fail_open or answered(flow) or get_facts(flow) is None:
            return
        if self.queue is None or (self.queue.full() and (self.spool is None or self.spool.full(4096))):
            self.stats.refused += 1
            json_answer(flow, 503, {"error": "unavailable", "detail": "request log unavailable"},
                        "error", {"Retry-After": "1"})

    def response(self, flow: http.HTTPFlow) -> None:
        facts = ensure_facts(flow)
        if facts.shipped or flow.response is None:
            return
        flow.response.headers["X-Request-Id"] = facts.event_id
        self.offer(flow, facts, flow.response.status_code, facts.answered_by)

    def error(self, flow: http.HTTPFlow) -> None:
        if flow.request is None:
            return
        facts = ensure_facts(flow)
        if facts.shipped:
            return
        status, answered_by = error_status(flow)
        facts.answered_by = answered_by
        self.offer(flow, facts, status, answered_by)

    def offer(self, flow: http.HTTPFlow, facts: FlowFacts, status: int, answered_by: AnsweredBy) -> None:
        """Build the flow's event and queue it without waiting; count a drop if the queue is full."""
        facts.shipped = True
        event = build_event(flow, facts, status, answered_by)
        if self.queue is None:
            self.stats.drop("not_running")
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.stats.drop("queue_full")
        else:
            self.stats.queued += 1

    # --- for metrics ----------------------------------------------------------------------

    def queue_depth(self) -> int:
        """Events waiting in memory."""
        return self.queue.qsize() if self.queue is not None else 0

    def spool_bytes(self) -> int:
        """Bytes of events waiting on disk."""
        return self.spool.pending_bytes if self.spool is not None else 0

    # --- background -----------------------------------------------------------------------

    def _record(self, event: RequestEvent) -> Record:
        self._seq += 1
        return self._seq, request_key(event), event.to_json()

    def _drain_queue(self, limit: int | None = None) -> list[RequestEvent]:
        out: list[RequestEvent] = []
        if self.queue is None:
            return out
        while not self.queue.empty() and (limit is None or len(out) < limit):
            out.append(self.queue.get_nowait())
            self.queue.task_done()
        return out

    def _take_failed(self) -> list[Record]:
        failed, self._failed = sorted(self._failed), []
        return failed

    def _to_spool(self, records: list[Record], reason_if_no_spool: str = "no_spool") -> None:
        """Append ``records`` (in order) to the spool, counting what it cannot hold."""
        if not records:
            return
        if self.spool is None:
            self.stats.drop(reason_if_no_spool, len(records))
            return
        try:
            written = self.spool.append((key, value) for _, key, value in records)
        except (OSError, ValueError) as exc:
            logger.warning("event spool write failed: %s: %s", type(exc).__name__, exc)
            self.stats.drop("spool_error", len(records))
            return
        self.stats.spooled += written
        self.stats.drop("spool_full", len(records) - written)

    def _enter_spool_mode(self) -> None:
        if self.mode != "spool":
            self.mode = "spool"
            self._direct.clear()
            self._spool_wanted.set()

    def _enter_direct_mode(self) -> None:
        self.mode = "direct"
        self._direct.set()

    async def _pump(self, spec: ShipSpec, queue: asyncio.Queue[RequestEvent]) -> None:
        """Move events from the queue to the producer (direct mode) or the spool, in order.

        The pump is the only writer of new events to the spool. In spool mode it
        first waits until every in-flight send has settled, so that the events
        whose delivery failed (older) are spooled before the ones it holds."""
        while True:
            if self.spool is None and self.mode != "direct":
                await self._direct.wait()   # no spool: events wait in the bounded queue
            first = await queue.get()
            queue.task_done()
            self._held = [self._record(e) for e in (first, *self._drain_queue(PUMP_BATCH - 1))]
            while self._held and self.mode == "direct" and self.producer is not None:
                seq, key, value = self._held[0]
                try:
                    fut = await self.producer.send(spec.topic, value=value, key=key)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # broker gone / metadata timeout: keep the event
                    self.stats.failed += 1
                    logger.warning("request event not sent (%s: %s); spooling", type(exc).__name__, exc)
                    self._failed.append(self._held.pop(0))
                    self._enter_spool_mode()
                    break
                self._track(fut, self._held.pop(0))
            if self._held:
                await self._settled.wait()
                held, self._held = self._held, []
                self._to_spool(self._take_failed() + held)

    def _track(self, fut: asyncio.Future, record: Record) -> None:
        self._inflight += 1
        self._settled.clear()
        started = time.monotonic()

        def delivered(f: asyncio.Future) -> None:
            self._inflight -= 1
            if f.cancelled() or f.exception() is not None:
                self.stats.failed += 1
                self._failed.append(record)
                self._enter_spool_mode()
            else:
                self.stats.sent += 1
                self.stats.latency.observe(time.monotonic() - started)
            if self._inflight == 0:
                self._settled.set()
        fut.add_done_callback(delivered)

    async def _link(self, spec: ShipSpec) -> None:
        """Keep a producer; in spool mode replay the spool once the broker answers, then go direct."""
        delays = brokers.backoff()
        while True:
            try:
                if self.producer is None:
                    self.producer = await self._start_producer(spec)
                if self.mode == "spool":
                    await self._settled.wait()
                    if self._failed and self.spool is not None:   # to disk now: older than anything held
                        self._to_spool(self._take_failed())
                    await self._probe()
                    await self._replay(spec)
                    delays = brokers.backoff()
                if self.mode == "direct":
                    await self._spool_wanted.wait()
                    self._spool_wanted.clear()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker is away: retry with back-off
                self.stats.reconnects += 1
                # Warning, not error: see inline/brokers.py (mitmdump start-up quirk).
                logger.warning("event producer for %s unavailable (%s: %s); retrying",
                               spec.bootstrap_servers, type(exc).__name__, exc)
                await asyncio.sleep(next(delays))

    async def _probe(self) -> None:
        """Raise ``ConnectionError`` unless the broker answers a metadata request."""
        ok = await asyncio.wait_for(self.producer.client.force_metadata_update(), PROBE_TIMEOUT_S)
        if not ok:
            raise ConnectionError("broker did not answer a metadata request")

    async def _replay(self, spec: ShipSpec) -> None:
        """Send the spool in order, batch by batch; switch to direct mode once nothing
        older than the queue's events is left (spool empty, no failed or held events).

        A batch is committed (cursor moved) once every record of it is delivered;
        when some fail, only those are re-sent on the next attempt. Raises when a
        batch cannot be delivered (the caller probes and retries later)."""
        while True:
            if self.spool is None:   # no spool: re-send the failed events from memory
                if self._replay_pending is None:
                    if not self._failed:
                        self._enter_direct_mode()
                        return
                    self._replay_pending = ([(k, v) for _, k, v in self._take_failed()], None)
            elif self._failed and self._settled.is_set():
                self._to_spool(self._take_failed())   # older than anything the pump holds
            if self._replay_pending is None:
                records, pos = self.spool.read(REPLAY_BATCH)
                if not records:
                    self.spool.commit(pos)
                    if self._held or self._failed or not self._settled.is_set():
                        await asyncio.sleep(0.01)   # the pump is about to spool older events
                        continue
                    self._enter_direct_mode()   # no await since the checks: the pump goes direct from now on
                    logger.info("event spool empty; sending directly")
                    return
                self._replay_pending = (records, pos)
            pending, pos = self._replay_pending
            started = time.monotonic()
            futures = [await self.producer.send(spec.topic, value=value, key=key) for key, value in pending]
            results = await asyncio.gather(*futures, return_exceptions=True)
            elapsed = time.monotonic() - started
            failed = [rec for rec, res in zip(pending, results) if isinstance(res, BaseException)]
            self.stats.sent += len(pending) - len(failed)
            for _ in range(len(pending) - len(failed)):
                self.stats.latency.observe(elapsed)
            if failed:
                self.stats.failed += len(failed)
                self._replay_pending = (failed, pos)
                raise ConnectionError(f"{len(failed)} of {len(pending)} spooled events not delivered")
            self._replay_pending = None
            if pos is not None:
                self.spool.commit(pos)

    async def _start_producer(self, spec: ShipSpec):
        from aiokafka import AIOKafkaProducer

        # linger_ms=0: an event leaves at once (it is the first leg of the decision loop); under
        # load the sender still batches what queued while the previous request was in flight
        # (DESIGN.md). bench/quality.py seed 1, one run each: the harness read the threshold
        # request's event 4.6-9.4 ms after the threshold (4.5-23.8 ms at linger 5), the fast
        # per-IP stuffing runs had 1-4 requests answered after it (2-6); bench/gateway.py:
        # 1170 req/s for one minimal gateway (1190 at linger 5), 1894 for two (2047).
        producer = AIOKafkaProducer(bootstrap_servers=spec.bootstrap_servers, linger_ms=0,
                                    acks=1, enable_idempotence=False, request_timeout_ms=REQUEST_TIMEOUT_MS,
                                    client_id="gatewatch-gateway-events")
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer
