"""Re-keying the request stream for the detectors that are not keyed by client IP.

Requests arrive keyed by client IP. Three detectors need another key, so the
request agent (:mod:`streams.detect_requests`) sorts each batch it has parsed
and sends it on. A key's partition is computed here exactly as Kafka's default
partitioner would (murmur2 of the key, :func:`partition_for`), and each batch
becomes **one message per destination partition**, not one per key or event
— per-message overhead would dominate (a batch of 1000 requests from 400
principals is 4 messages, not 400):

* **by principal** (``topic_requests_by_principal``; key of an event:
  ``principal:<id>``, or ``ip:<addr>`` for anonymous callers): upstream answers
  on routes with a ``{parameter}`` (for BOLA) and every upstream answer to an
  authenticated principal (for geo anomalies), as ``{"progress": {...},
  "events": [original event JSON, ...]}`` — every event of one principal lands
  on one partition, so its BOLA and geo state live on one worker;
* **by route** (``topic_requests_by_route``; key ``"METHOD /route"``): only what
  the latency detector reads, ``{"progress": {...}, "samples": {"GET /x":
  [[epoch_s, latency_ms, event_id], ...], ...}}`` — a tenth of the bytes;
* **logins** (``topic_logins``, one partition): upstream-answered login
  attempts, shaped like the by-principal messages — the prefix/ASN/username/global
  windows of the credential-stuffing detector see every login, whatever the worker.

``progress`` maps each source partition of the request topic that the sending
agent reads to the newest event time it has processed (epoch seconds): the
receiving agents derive their low watermark from it (:mod:`streams.watermarks`).
Messages with no events or samples carry progress only.

Messages stay under :data:`MAX_MESSAGE_BYTES` (Kafka's default limit is 1 MB).
Pure functions, no Faust: unit-tested on their own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from aiokafka.partitioner import murmur2

from detectors.latency import series_of
from gatewatch.events import MalformedRecord, RequestEvent, parse_request_event

#: Largest re-keyed message, bytes.
MAX_MESSAGE_BYTES = 256 * 1024
#: Latency samples per message (~40 bytes each).
SAMPLES_PER_MESSAGE = 4000


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java client, aiokafka, kafka-python)
    gives ``key`` among ``partitions``: murmur2, positive, modulo."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass
class Rekeyed:
    """One batch sorted by destination partition: raw event JSON for the by-principal
    partitions, latency samples by series for the by-route partitions, raw logins."""

    principal_partitions: int
    route_partitions: int
    by_principal: dict[int, list[bytes]] = field(default_factory=dict)
    by_route: dict[int, dict[str, list[list[Any]]]] = field(default_factory=dict)
    logins: list[bytes] = field(default_factory=list)
    _route_partition: dict[str, int] = field(default_factory=dict)


def principal_key(event: RequestEvent) -> bytes:
    """``principal:<id>``, or ``ip:<addr>`` when the caller is anonymous."""
    return (f"principal:{event.principal}" if event.principal else f"ip:{event.client_ip}").encode()


def sort_event(out: Rekeyed, event: RequestEvent, raw: bytes) -> None:
    """Add one parsed event (``raw`` is its JSON as received) to the destinations it needs."""
    if event.answered_by != "upstream":
        return
    if event.login is not None:
        out.logins.append(raw)
    if "{" in event.route or event.principal:  # BOLA: object routes; geo: every principal request
        partition = partition_for(principal_key(event), out.principal_partitions)
        out.by_principal.setdefault(partition, []).append(raw)
    latency = event.latency_ms
    if latency >= 0 and math.isfinite(latency):
        series = series_of(event)
        partition = out._route_partition.get(series)
        if partition is None:
            partition = out._route_partition[series] = partition_for(series.encode(), out.route_partitions)
        out.by_route.setdefault(partition, {}).setdefault(series, []).append(
            [event.ts.timestamp(), latency, event.event_id])


def pack_events(raws: list[bytes], progress: dict[int, float],
                max_bytes: int = MAX_MESSAGE_BYTES) -> Iterator[bytes]:
    """``{"progress": ..., "events": [...]}`` messages of the raw event objects, each at
    most ``max_bytes`` (a single larger event goes alone); none for no events."""
    head = b'{"progress":' + _json(progress) + b',"events":['
    chunk: list[bytes] = []
    size = len(head) + 2
    for raw in raws:
        if chunk and size + len(raw) + 1 > max_bytes:
            yield head + b",".join(chunk) + b"]}"
            chunk, size = [], len(head) + 2
        chunk.append(raw)
        size += len(raw) + 1
    if chunk:
        yield head + b",".join(chunk) + b"]}"


def pack_event_progress(progress: dict[int, float]) -> bytes:
    """An event-batch message with progress only."""
    return b'{"progress":' + _json(progress) + b',"events":[]}'


def pack_samples(by_series: dict[str, list[list[Any]]], progress: dict[int, float],
                 per_message: int = SAMPLES_PER_MESSAGE) -> Iterator[bytes]:
    """Messages of at most ``per_message`` latency samples (of one or more series), each
    with ``progress``; a single progress-only message when there are no samples."""
    chunk: dict[str, list[list[Any]]] = {}
    size = 0
    for series, samples in by_series.items():
        start = 0
        while start < len(samples):
            take = samples[start:start + per_message - size]
            chunk.setdefault(series, []).extend(take)
            size += len(take)
            start += len(take)
            if size >= per_message:
                yield _json({"progress": progress, "samples": chunk})
                chunk, size = {}, 0
    if chunk or not by_series:
        yield _json({"progress": progress, "samples": chunk})


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass(frozen=True)
class EventBatch:
    """An unpacked by-principal or logins message: its events, how many of its items
    were malformed, and the sender's progress."""

    events: list[RequestEvent]
    malformed: int
    progress: dict[int, float]


def unpack_events(value: bytes) -> EventBatch:
    """Unpack an event-batch message. Raises :class:`MalformedRecord` if it is not one."""
    try:
        doc = json.loads(value)
        items = doc["events"]
        progress = _progress(doc.get("progress", {}))
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as exc:
        raise MalformedRecord(f"malformed re-keyed event batch: {exc!r}") from None
    if not isinstance(items, list):
        raise MalformedRecord("re-keyed event batch without an events array")
    events, bad = [], 0
    for item in items:
        try:
            events.append(parse_request_event(item if isinstance(item, dict) else {}))
        except MalformedRecord:
            bad += 1
    return EventBatch(events, bad, progress)


def _progress(raw: Any) -> dict[int, float]:
    return {int(k): float(v) for k, v in raw.items()}


@dataclass(frozen=True)
class Samples:
    """An unpacked by-route message: series -> [(ts, latency_ms, event_id)], and progress."""

    by_series: dict[str, list[tuple[datetime, float, str]]]
    progress: dict[int, float]


def unpack_samples(value: bytes) -> Samples:
    """Unpack a by-route message. Raises :class:`MalformedRecord` on another shape."""
    try:
        doc = json.loads(value)
        by_series = {
            str(series): [(datetime.fromtimestamp(float(t), tz=timezone.utc), float(ms), str(eid))
                          for t, ms, eid in samples]
            for series, samples in doc["samples"].items()}
        progress = _progress(doc.get("progress", {}))
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError, OverflowError,
            OSError) as exc:
        raise MalformedRecord(f"malformed latency samples: {exc!r}") from None
    return Samples(by_series, progress)
