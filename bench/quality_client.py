"""Plays a quality-harness scenario through the gateway and records every answer.

Each actor's scripts run as asyncio tasks over one ``aiohttp`` session (a
trusted proxy in front of the gateway multiplexes clients the same way): the
client address is sent as ``X-Forwarded-For`` from 127.0.0.1, which the
harness configures as the gateway's only trusted proxy
(:mod:`inline.client_identity`). Closed-loop scripts wait for each answer,
then think; open-loop scripts (attack tools) start each request on schedule,
at most ``max_in_flight`` at once. No step starts after the run's deadline.

Each answer becomes an :class:`Outcome`: wall-clock send and receive times
(``time.time()``, the clock the gateway stamps events with, on this same
machine), status, whether a decision answered it (``ban``: 403 with
``{"error": "blocked"}``; ``throttle``: 429 naming a throttle decision;
``challenge``: 403 with ``{"error": "challenge_required"}``), the gateway's
``X-Request-Id`` (the event id in the store), and whether a 200 returned an
object of another owner than the script's user (a foreign object).
A benign actor answered a challenge solves it (as the ALTCHA widget or an SDK
would, off the event loop) and sends the request again once, with the solution;
attack tools do not solve challenges.

The ``latency`` actor's changes are sent straight to the sample API's control
endpoint (not through the gateway); their wall-clock times are recorded.

:func:`follow_requests` notes when each request event reaches the requests
topic, so a threshold-to-403 time can be split into its legs.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import altcha
from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka import KafkaConsumer
from kafka import TopicPartition as KafkaTopicPartition

from bench.quality_actors import LATENCY_ROUTE, Actor, Scenario, Script, Step
from gatewatch.broker import topic_partitions
from gatewatch.events import MalformedRecord, parse_request_event
from gatewatch.settings import GatewatchSettings
from inline.challenge import SOLUTION_HEADER
from streams.rekey import unpack_principal

#: Connections the client keeps to the gateway at most.
CONNECTIONS = 256
REQUEST_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Outcome:
    """One request and its answer. Times are wall-clock seconds (``time.time()``);
    ``status`` 0 means no answer (``error`` says why)."""

    actor: str
    request_id: str | None
    ip: str
    method: str
    path: str
    sent_at: float
    received_at: float
    status: int
    blocked_by: str | None = None  # "ban" | "throttle" | "challenge"
    decision_id: str | None = None
    foreign: bool = False
    error: str | None = None


def solve(challenge: dict[str, Any]) -> str:
    """The solution of a gateway challenge (the JSON object of its 403), as the header value."""
    parsed = altcha.Challenge.from_dict(challenge)
    return altcha.Payload(parsed, altcha.solve_challenge(parsed)).to_base64()


@dataclass
class PlayLog:
    """Everything one run produced on the client side."""

    started_at: float = 0.0  # wall clock at traffic start
    outcomes: list[Outcome] = field(default_factory=list)
    latency_changes: list[tuple[str, float, float]] = field(default_factory=list)  # (actor, wall time, ms)


def _body_json(raw: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


class Player:
    """Runs a :class:`Scenario` against ``gateway_url``; ``api_keys`` maps key ids to raw keys;
    ``sample_api_url`` receives the latency changes."""

    def __init__(self, gateway_url: str, sample_api_url: str, api_keys: dict[str, str]) -> None:
        self.gateway_url = gateway_url.rstrip("/")
        self.sample_api_url = sample_api_url.rstrip("/")
        self.api_keys = api_keys
        self.log = PlayLog()
        self._t0 = 0.0  # loop time at traffic start
        self._deadline = 0.0
        self._session: aiohttp.ClientSession | None = None

    async def play(self, scenario: Scenario) -> PlayLog:
        """Play every script and latency change; return the log when all are done."""
        loop = asyncio.get_running_loop()
        connector = aiohttp.TCPConnector(limit=CONNECTIONS)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self._session = session
            self._t0 = loop.time()
            self._deadline = self._t0 + scenario.duration_s
            self.log.started_at = time.time()
            tasks = [self._script(actor, script) for actor in scenario.actors for script in actor.scripts]
            tasks += [self._latency(actor) for actor in scenario.actors if actor.latency]
            await asyncio.gather(*tasks)
        return self.log

    async def _sleep_until(self, offset_s: float) -> None:
        delay = self._t0 + offset_s - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)

    def _over(self) -> bool:
        return asyncio.get_running_loop().time() >= self._deadline

    async def _script(self, actor: Actor, script: Script) -> None:
        await self._sleep_until(script.start_s)
        state: dict[str, str] = {}  # "token" once a login succeeded
        if not script.open_loop:
            for step in script.steps:
                if step.delay_s > 0:
                    await asyncio.sleep(step.delay_s)
                if self._over():
                    return
                await self._send(actor, script, step, state)
            return
        in_flight = asyncio.Semaphore(script.max_in_flight)
        pending: set[asyncio.Task] = set()

        async def send(step: Step) -> None:
            try:
                await self._send(actor, script, step, state)
            finally:
                in_flight.release()

        for step in script.steps:
            if step.login:  # the session is needed by what follows
                await asyncio.gather(*pending)
                await self._send(actor, script, step, state)
                continue
            await self._sleep_until(script.start_s + step.delay_s)
            await in_flight.acquire()
            if self._over():
                in_flight.release()
                break
            task = asyncio.create_task(send(step))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)

    async def _send(self, actor: Actor, script: Script, step: Step, state: dict[str, str],
                    solution: str | None = None) -> None:
        assert self._session is not None
        headers = {"X-Forwarded-For": step.ip}
        if solution is not None:
            headers[SOLUTION_HEADER] = solution
        if script.api_key_id:
            headers["X-API-Key"] = self.api_keys[script.api_key_id]
        if step.session and "token" in state:
            headers["Authorization"] = f"Bearer {state['token']}"
        sent = time.time()
        try:
            async with self._session.request(step.method, self.gateway_url + step.path, json=step.body,
                                             headers=headers) as resp:
                raw = await resp.read()
                status, request_id = resp.status, resp.headers.get("X-Request-Id")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.log.outcomes.append(Outcome(actor.name, None, step.ip, step.method, step.path, sent,
                                             time.time(), 0, error=type(exc).__name__))
            return
        received = time.time()
        body = _body_json(raw) or {}
        blocked_by = None
        if status == 403 and body.get("error") == "blocked":
            blocked_by = "ban"
        elif status == 429 and body.get("scope") == "throttle":
            blocked_by = "throttle"
        elif status == 403 and body.get("error") == "challenge_required":
            blocked_by = "challenge"
        owner = body.get("owner") if status == 200 else None
        foreign = owner is not None and script.user_id is not None and owner != script.user_id
        if step.login and status == 200 and "token" in body:
            state["token"] = str(body["token"])
        self.log.outcomes.append(Outcome(actor.name, request_id, step.ip, step.method, step.path, sent, received,
                                         status, blocked_by, body.get("decision_id") if blocked_by else None,
                                         foreign))
        if blocked_by == "challenge" and actor.solves and solution is None and not self._over():
            # People's clients run the ALTCHA widget (or an SDK): solve, send again once.
            # Attack tools do not solve challenges.
            await self._send(actor, script, step, state, await asyncio.to_thread(solve, body["challenge"]))

    async def _latency(self, actor: Actor) -> None:
        assert self._session is not None
        for at_s, ms in actor.latency:
            await self._sleep_until(at_s)
            async with self._session.put(f"{self.sample_api_url}/_control/latency",
                                         json={"route": LATENCY_ROUTE, "ms": ms}) as resp:
                resp.raise_for_status()
            self.log.latency_changes.append((actor.name, time.time(), ms))


def _note_created(msg: Any, created_at: dict[str, float]) -> str | None:
    """Note the Kafka timestamp (epoch s) of the request event in record ``msg`` under its
    event id; the id, or None for a malformed record."""
    try:
        event_id = parse_request_event(msg.value).event_id
    except MalformedRecord:
        return None
    created_at.setdefault(event_id, msg.timestamp / 1000.0)
    return event_id


def topic_records(settings: GatewatchSettings) -> dict[str, list[int]]:
    """Records each partition of gatewatch's topics holds, per topic: the broker's "latest
    offset", which Tansu answers with the start of the partition's last batch + 1 (DESIGN.md),
    so a partition's figure may miss the rest of its last batch. On Tansu's ``memory://``
    engine a read costs in proportion to the batches a partition holds
    (``bench/broker_growth.py``); every re-keyed message is a record of its own."""
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False)
    try:
        out = {}
        for topic, count in topic_partitions(settings).items():
            parts = [KafkaTopicPartition(topic, p) for p in range(count)]
            ends = consumer.end_offsets(parts)
            out[topic] = [ends[tp] for tp in parts]
        return out
    finally:
        consumer.close()


async def request_times(settings: GatewatchSettings, timeout_s: float = 60.0) -> dict[str, float]:
    """The Kafka timestamp (epoch s; CreateTime, set when the gateway handed the event to its
    producer) of every request event in ``settings.topic_requests``, by event id (see
    :func:`read_to_end`). Malformed records are skipped. Raises ``TimeoutError`` if the
    partitions are not read within ``timeout_s``."""
    created: dict[str, float] = {}
    await read_to_end(settings, settings.topic_requests, lambda msg: _note_created(msg, created), timeout_s)
    return created


async def rekeyed_times(settings: GatewatchSettings, timeout_s: float = 60.0) -> dict[str, float]:
    """The Kafka timestamp (epoch s; CreateTime, set when the worker's request consumer sent
    the re-keyed message) of the by-principal message that carried each request event, by
    event id (see :func:`read_to_end`): the BOLA loop's middle leg. Malformed messages are
    skipped. Raises ``TimeoutError`` if the partitions are not read within ``timeout_s``."""
    sent: dict[str, float] = {}

    def note(msg: Any) -> None:
        try:
            batch = unpack_principal(msg.value)
        except MalformedRecord:
            return
        for item in batch.items:
            sent.setdefault(item.event_id, msg.timestamp / 1000.0)

    await read_to_end(settings, settings.topic_requests_by_principal, note, timeout_s)
    return sent


async def read_to_end(settings: GatewatchSettings, topic: str, note: Callable[[Any], Any],
                      timeout_s: float = 60.0) -> None:
    """Pass every record of ``topic`` to ``note``: every partition read once from its
    beginning up to the high watermark that the fetches return (Tansu's "latest offset" is
    not the end, DESIGN.md). Raises ``TimeoutError`` if the partitions are not read within
    ``timeout_s``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(topic_partitions(settings)[topic])]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        deadline = time.monotonic() + timeout_s
        while True:
            for records in (await consumer.getmany(timeout_ms=200, max_records=5000)).values():
                for msg in records:
                    note(msg)
            behind = [tp for tp in parts
                      if consumer.highwater(tp) is None or await consumer.position(tp) < consumer.highwater(tp)]
            if not behind:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic} not read to its end in {timeout_s} s")
    finally:
        await consumer.stop()


async def follow_requests(settings: GatewatchSettings, seen_at: dict[str, float], created_at: dict[str, float],
                          fetch_max_wait_ms: int = 5) -> int:
    """Until cancelled, note in ``seen_at`` the wall-clock time (``time.time()``) at which
    each request event (by event id) is read from ``settings.topic_requests``, and in
    ``created_at`` its Kafka timestamp (s; CreateTime, set when the gateway handed it to its
    producer): every partition from the beginning, no consumer group (never "latest" on
    Tansu). A short fetch wait (ms) keeps this follower's own delay small. Returns the
    malformed count."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                                fetch_max_wait_ms=fetch_max_wait_ms)
    await consumer.start()
    malformed = 0
    try:
        parts = [TopicPartition(settings.topic_requests, p) for p in range(settings.requests_partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        async for msg in consumer:
            event_id = _note_created(msg, created_at)
            if event_id is None:
                malformed += 1
            else:
                seen_at.setdefault(event_id, time.time())
    finally:
        await consumer.stop()
    return malformed
