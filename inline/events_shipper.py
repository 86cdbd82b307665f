"""Request-event shipping: one :class:`gatewatch.events.RequestEvent` per request, to Kafka.

The event is built when the request is answered: in ``response()`` (which
mitmproxy also calls for answers the gateway's addons made in
``request()``) or in ``error()`` when no response came (upstream down:
status 502, ``answered_by="error"``; a request that never arrived whole:
status 400, ``answered_by="bad_request"``). The event id is also sent to
the client as ``X-Request-Id``.

Hooks never wait on the broker: an event goes into a bounded
``asyncio.Queue`` (``put_nowait``; when full the event is dropped and
counted), and a background task started in ``running()`` drains the queue
into an aiokafka producer (sends are not awaited one by one; delivery is
counted by callbacks). While the broker is unreachable the task keeps
retrying and the queue fills, then drops. Messages are keyed by client IP,
so every event of one client lands on one partition and per-IP state in the
workers lives in one place. ``done()`` waits for the queue to be sent,
then stops the producer (which flushes), each within
:data:`FLUSH_TIMEOUT_S`; what is left is counted as dropped.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from mitmproxy import ctx, exceptions, http

from gatewatch.events import AnsweredBy, RequestEvent
from gatewatch.settings import load_settings
from inline import brokers
from inline.flowstate import FlowFacts
from inline.routes import ensure_facts

logger = logging.getLogger(__name__)

#: Longest wait of ``done()`` for the queue to drain, and again for the producer to flush, seconds.
FLUSH_TIMEOUT_S = 3.0
#: Text fields are cut to these many characters (events stay small and bounded).
MAX_PATH = 4096
MAX_USER_AGENT = 512
MAX_HOST = 255


def _text(value: str | None, limit: int) -> str:
    """Printable UTF-8 text of a header/path value (undecodable bytes become U+FFFD), cut to ``limit``."""
    if not value:
        return ""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")[:limit]


def error_status(flow: http.HTTPFlow) -> tuple[int, AnsweredBy]:
    """Status and ``answered_by`` of a request that ended in ``error()``:
    ``(400, "bad_request")`` if the request never arrived whole (client-side
    problem), else ``(502, "error")`` (the upstream failed or was unreachable)."""
    if flow.request is None or flow.request.timestamp_end is None:
        return 400, "bad_request"
    return 502, "error"


def build_event(flow: http.HTTPFlow, facts: FlowFacts, status: int, answered_by: AnsweredBy) -> RequestEvent:
    """The request event of ``flow`` from its facts, answered with ``status`` by ``answered_by``.

    ``latency_ms`` is the upstream's time to answer (first response byte
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
        path=_text(req.path, MAX_PATH),
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
    )


@dataclass(frozen=True)
class ShipSpec:
    """Parsed options of the event shipper."""

    bootstrap_servers: str
    topic: str
    queue_max: int


@dataclass
class ShipperStats:
    """Counters for metrics: events ``queued``, ``sent`` (acknowledged),
    ``failed`` (send or delivery failed), ``dropped`` (queue full, not
    running, or left over at shutdown), producer start failures
    (``reconnects``)."""

    queued: int = 0
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    reconnects: int = 0


class EventShipper:
    """Addon: builds one request event per request and ships it to Kafka in the background.

    Options: ``gatewatch_bootstrap_servers``, ``gatewatch_topic_requests``,
    ``gatewatch_event_queue_max``. Must be the last addon, so that every
    other addon has recorded its facts when ``response()`` runs.
    """

    def __init__(self) -> None:
        self.spec: ShipSpec | None = None
        self.stats = ShipperStats()
        self.queue: asyncio.Queue[RequestEvent] | None = None
        self._task: asyncio.Task | None = None

    def load(self, loader) -> None:
        s = load_settings()
        brokers.add_bootstrap_option(loader)
        loader.add_option("gatewatch_topic_requests", str, s.topic_requests,
                          "Topic the gateway writes request events to.")
        loader.add_option("gatewatch_event_queue_max", int, s.event_queue_max,
                          "Events waiting for the broker at most; more are dropped and counted.")

    def configure(self, updated: set[str]) -> None:
        if not updated & {"gatewatch_bootstrap_servers", "gatewatch_topic_requests", "gatewatch_event_queue_max"}:
            return
        o = ctx.options
        if not o.gatewatch_bootstrap_servers.strip():
            raise exceptions.OptionsError("gatewatch_bootstrap_servers must not be empty")
        if not o.gatewatch_topic_requests.strip():
            raise exceptions.OptionsError("gatewatch_topic_requests must not be empty")
        if o.gatewatch_event_queue_max < 1:
            raise exceptions.OptionsError("gatewatch_event_queue_max must be >= 1")
        if self._task is not None and self.spec is not None:
            raise exceptions.OptionsError("event shipping options cannot change while running")
        self.spec = ShipSpec(o.gatewatch_bootstrap_servers.strip(), o.gatewatch_topic_requests.strip(),
                             o.gatewatch_event_queue_max)

    def running(self) -> None:
        brokers.quiet_aiokafka_errors()
        if self._task is None and self.spec is not None:
            self.queue = asyncio.Queue(maxsize=self.spec.queue_max)
            self._task = asyncio.create_task(self._ship(self.spec, self.queue), name="gatewatch event shipper")

    async def done(self) -> None:
        if self._task is None or self.queue is None:
            return
        # Let the shipper send what is queued (it may still be connecting), then
        # stop it: the producer's stop() flushes its batches. Both bounded.
        try:
            await asyncio.wait_for(self.queue.join(), FLUSH_TIMEOUT_S)
        except asyncio.TimeoutError:
            logger.warning("%d request events not sent at shutdown", self.queue.qsize())
        self._task.cancel()
        try:
            await asyncio.wait_for(self._task, FLUSH_TIMEOUT_S)
        except (asyncio.CancelledError, asyncio.TimeoutError):
            pass
        self.stats.dropped += self.queue.qsize()
        self._task, self.queue = None, None

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
            self.stats.dropped += 1
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.stats.dropped += 1
        else:
            self.stats.queued += 1

    def _delivered(self, fut: asyncio.Future) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self.stats.failed += 1
        else:
            self.stats.sent += 1

    async def _send(self, producer, topic: str, event: RequestEvent) -> None:
        try:
            fut = await producer.send(topic, value=event.to_json(), key=event.client_ip.encode())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # e.g. a record too large or a send timeout: count, go on
            self.stats.failed += 1
            logger.warning("request event %s not sent: %s: %s", event.event_id, type(exc).__name__, exc)
        else:
            fut.add_done_callback(self._delivered)

    async def _ship(self, spec: ShipSpec, queue: asyncio.Queue[RequestEvent]) -> None:
        """Start a producer (retrying while the broker is away), then drain ``queue`` into it
        until cancelled; stopping the producer flushes what it still holds."""
        producer = await self._start_producer(spec)
        try:
            while True:
                event = await queue.get()
                try:
                    await self._send(producer, spec.topic, event)
                finally:
                    queue.task_done()
        finally:
            try:
                await producer.stop()
            except Exception as exc:
                logger.warning("closing event producer: %s: %s", type(exc).__name__, exc)

    async def _start_producer(self, spec: ShipSpec):
        from aiokafka import AIOKafkaProducer

        delays = brokers.backoff()
        while True:
            producer = AIOKafkaProducer(bootstrap_servers=spec.bootstrap_servers, linger_ms=5,
                                        acks=1, enable_idempotence=False,
                                        client_id="gatewatch-gateway-events")
            try:
                await producer.start()
                return producer
            except asyncio.CancelledError:
                await producer.stop()
                raise
            except Exception as exc:
                self.stats.reconnects += 1
                # Warning, not error: see inline/brokers.py (mitmdump start-up quirk).
                logger.warning("event producer for %s unavailable (%s: %s); retrying",
                               spec.bootstrap_servers, type(exc).__name__, exc)
                await producer.stop()
            await asyncio.sleep(next(delays))
