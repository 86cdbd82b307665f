"""The request stream (keyed by principal, or by client IP for login attempts and
anonymous callers: :func:`gatewatch.events.request_key`): per-IP credential stuffing
and BOLA, and re-keying for the detectors keyed otherwise (:mod:`streams.rekey`).

The request consumer (:mod:`streams.requests_consumer`) reads the topic and
parses each event once; :func:`handle` gets each parsed batch. Detections go
out first (:func:`streams.decide.publish`), then the re-keyed batches.
:func:`warm` rebuilds the windows after a restart without emitting anything.

Two detectors per source partition: each partition is one in-order stream and holds
every login attempt of its addresses and every request of its principals (and of its
anonymous addresses), so ``now`` is the event's own ``ts`` and both the per-IP login
windows and the per-principal BOLA windows (:mod:`streams.detect_bola`) are exact with
any number of workers. BOLA is judged here, where the request is first read, so its
decision loop crosses two broker hops (requests, decisions) as the per-IP rule's does,
not three through a re-keyed topic. A partition that moves to another worker (a rebalance, a restart)
gets its windows rebuilt there by the replay of :mod:`streams.checkpoints`.

Logins and by-principal rows are sent at the end of every batch :func:`handle` gets:
a batch is what the broker had (up to ``settings.detector_batch_size`` events under
load, a few when the consumer is caught up), so the messages are large when the load
is and the login rules and geo see an event one fetch after the per-IP detector,
not a timer later (a 20 ms flush timer added 0–40 ms to such a loop). By-route
latency samples wait for the next *full* flush: once they span
:data:`ROUTE_SPAN_S` of event time, before every offset commit
(``settings.commit_interval_s``, 1 s) and with the periodic progress
(:data:`PROGRESS_EVERY_S`); the event-time bound keeps a catch-up's messages as
fine as its batches, so a restart's replay starts where it did. The latency detector judges windows of a minute and
decides nothing, and every message is a batch that each read of its partition goes
through on Tansu's ``memory://`` engine (``bench/broker_growth.py``): sent per batch,
the by-route messages were as many as the by-principal ones (8,061 and 8,059 in a
``bench/quality.py`` run of 11,789 requests).

For the watermarks of the merged, re-keyed streams (:mod:`streams.watermarks`) the
request consumer tracks the newest event time of each partition it reads and sends,
with every re-keyed message and, after every full flush at most every
:data:`PROGRESS_EVERY_S` seconds, to every partition of the three re-keyed topics,
the progress of what it has sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

from detectors.bola import BolaDetector
from detectors.credential_stuffing import CredentialStuffingDetector
from gatewatch.broker import topic_partitions
from gatewatch.events import Detection, RequestEvent
from streams import counters, detect_bola
from streams.app import app, settings
from streams.decide import detect_each, publish
from streams.rekey import Rekeyed, pack_event_progress, pack_events, pack_rows, pack_samples, sort_event
from streams.topics import by_principal_topic, by_route_topic, logins_topic

#: Seconds (processing time) between progress messages to every re-keyed partition.
PROGRESS_EVERY_S = 1.0
#: Seconds between checks of the progress timer.
PROGRESS_TICK_S = 0.25
#: Seconds of event time the waiting by-route samples may span before they are sent.
ROUTE_SPAN_S = 1.0

log = logging.getLogger(__name__)
PARTITIONS = topic_partitions(settings)
detectors: dict[int, CredentialStuffingDetector] = {}  # source partition -> per-IP detector
bola_detectors: dict[int, BolaDetector] = {}  # source partition -> BOLA detector
progress: dict[int, float] = {}  # source partition -> newest event time processed (epoch s)


class _Pending:
    """Re-keyed events not sent yet; ``events``: events handled since the last full flush,
    ``since``: the oldest event time among them (epoch s)."""

    def __init__(self) -> None:
        self.rekeyed = Rekeyed(PARTITIONS[settings.topic_requests_by_principal],
                               PARTITIONS[settings.topic_requests_by_route])
        self.events, self.since = 0, float("inf")


_pending = _Pending()
_flush_lock = asyncio.Lock()
_last_broadcast_s = 0.0


def _detector(partition: int) -> CredentialStuffingDetector:
    detector = detectors.get(partition)
    if detector is None:
        detector = detectors[partition] = CredentialStuffingDetector.from_settings(
            settings.credential_stuffing, rules=("ip",))
    return detector


def _bola_detector(partition: int) -> BolaDetector:
    detector = bola_detectors.get(partition)
    if detector is None:
        detector = bola_detectors[partition] = detect_bola.detector(partition)
    return detector


async def handle(parsed: list[tuple[int, int, RequestEvent, bytes]]) -> None:
    """Handle one batch of parsed events ``(partition, offset, event, raw JSON)`` in offset
    order per partition: per-IP and BOLA detections out first, then the events re-keyed,
    each with its origin (partition, offset: :mod:`streams.resends`)."""
    oldest, newest = float("inf"), 0.0
    for partition, _, event, _ in parsed:
        epoch = event.ts.timestamp()
        oldest, newest = min(oldest, epoch), max(newest, epoch)
        if epoch > progress.get(partition, 0.0):
            progress[partition] = epoch
    await publish(detect_each(_per_ip, parsed, "credential-stuffing (ip)") + detect_each(_bola, parsed, "bola"))
    for partition, offset, event, raw in parsed:
        sort_event(_pending.rekeyed, event, raw, (partition, offset))
    _pending.events += len(parsed)
    _pending.since = min(_pending.since, oldest)
    if _pending.events:
        await _flush(full=newest - _pending.since >= ROUTE_SPAN_S)


def warm(parsed: list[tuple[int, int, RequestEvent, bytes]]) -> None:
    """Feed already-handled events to the per-IP and BOLA windows only (a restart's replay,
    :mod:`streams.checkpoints`): their detections were sent before, nothing is emitted."""
    for item in parsed:
        for detect, what in ((_per_ip, "credential-stuffing (ip)"), (_bola, "bola")):
            try:
                detect(item)
            except Exception:
                counters.incr("detector_errors")
                log.exception("%s detector failed warming on %s", what, item[2].event_id)


def forget(partition: int) -> None:
    """Drop the windows of a partition this worker no longer reads."""
    detectors.pop(partition, None)
    bola_detectors.pop(partition, None)


async def flush() -> None:
    """Send every waiting re-keyed event now, by-route samples too (before offsets are
    committed)."""
    if _pending.events:
        await _flush()


@app.timer(PROGRESS_TICK_S)
async def flush_rekeyed() -> None:
    """The periodic progress to every re-keyed partition while no batch comes."""
    if progress and time.monotonic() - _last_broadcast_s >= PROGRESS_EVERY_S:
        await _flush()


def _per_ip(item: tuple[int, int, RequestEvent, bytes]) -> list[Detection]:
    partition, _, event, _ = item
    return _detector(partition).process(event, now=event.ts)


def _bola(item: tuple[int, int, RequestEvent, bytes]) -> list[Detection]:
    partition, _, event, _ = item
    if event.login is not None:  # keyed by address, not by principal: request_key
        return []
    return _bola_detector(partition).process(event, now=event.ts)


async def _flush(full: bool = True) -> None:
    """Send the waiting logins and by-principal rows, and with ``full`` the by-route samples,
    with the progress of exactly what was sent (the snapshot and the swap happen together,
    before any await); after a full flush, the periodic progress to every re-keyed
    partition when it is due."""
    global _pending, _last_broadcast_s
    async with _flush_lock:
        rekeyed, sent = _pending.rekeyed, dict(progress)
        if full:
            _pending = _Pending()
        else:   # the by-route samples stay waiting
            _pending.rekeyed = replace(rekeyed, by_principal={}, logins=[], principal_origins={}, login_origins=[])
        for message in pack_events(rekeyed.logins, sent, origins=rekeyed.login_origins):
            await logins_topic.send(value=message, partition=0)
        for partition, rows in rekeyed.by_principal.items():
            for message in pack_rows(rows, sent, origins=rekeyed.principal_origins.get(partition)):
                await by_principal_topic.send(value=message, partition=partition)
        if not full:
            return
        for partition, by_series in rekeyed.by_route.items():
            for message in pack_samples(by_series, sent):
                await by_route_topic.send(value=message, partition=partition)
        now = time.monotonic()
        if sent and now - _last_broadcast_s >= PROGRESS_EVERY_S:
            _last_broadcast_s = now
            for topic, message in ((logins_topic, pack_event_progress(sent)),
                                   (by_principal_topic, next(pack_rows([], sent))),
                                   (by_route_topic, next(pack_samples({}, sent)))):
                for partition in range(PARTITIONS[topic.get_topic_name()]):
                    await topic.send(value=message, partition=partition)
