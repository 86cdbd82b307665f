"""Re-keying the request stream for the detectors that are not keyed by client IP.

Requests arrive keyed by client IP. Three detectors need another key, so the
request consumer (:mod:`streams.detect_requests`) sorts each batch it has parsed
and sends it on. A key's partition is computed here exactly as Kafka's default
partitioner would (murmur2 of the key, :func:`partition_for`), and each batch
becomes **one message per destination partition**, not one per key or event
— per-message overhead would dominate (a batch of 1000 requests from 400
principals is 4 messages, not 400):

* **by principal** (``topic_requests_by_principal``; key of an event:
  ``principal:<id>``, or ``ip:<addr>`` for anonymous callers): upstream answers
  on routes with a ``{parameter}`` (for BOLA) and every upstream answer to an
  authenticated principal (for geo anomalies), as ``{"progress": {...},
  "events": [original event JSON, ...], "src": [partition, offset, ...]}`` —
  every event of one principal lands on one partition, so its BOLA and geo
  state live on one worker;
* **by route** (``topic_requests_by_route``; key ``"METHOD /route"``): only what
  the latency detector reads, ``{"progress": {...}, "samples": {"GET /x":
  [[epoch_s, latency_ms, event_id, partition, offset], ...], ...}}`` — a tenth
  of the bytes;
* **logins** (``topic_logins``, one partition): upstream-answered login
  attempts, shaped like the by-principal messages — the prefix/ASN/username/global
  windows of the credential-stuffing detector see every login, whatever the worker.

``progress`` maps each source partition of the request topic that the sending
consumer reads to the newest event time it has processed (epoch seconds): the
receiving consumers derive their low watermark from it (:mod:`streams.watermarks`).
Messages with no events or samples carry progress only.

Each event or sample carries its **origin**: the request partition and offset
it was read from (``src``, two integers per event, aligned with ``events``; the
last two items of a sample). A worker that dies after re-keying events but
before committing their request offsets leaves them to be re-keyed again by
the next owner; the receiving side drops such re-sends by their origin
(:mod:`streams.resends`). Messages without origins are read as before, with
nothing dropped.

Messages stay under :data:`MAX_MESSAGE_BYTES` (Kafka's default limit is 1 MB).
Pure functions, no Faust: unit-tested on their own.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from aiokafka.partitioner import murmur2
from pydantic import TypeAdapter, ValidationError
from typing_extensions import NotRequired, TypedDict

from detectors.latency import series_of
from gatewatch.events import MalformedRecord, RequestEvent, parse_request_event

#: Largest re-keyed message, bytes.
MAX_MESSAGE_BYTES = 256 * 1024
#: Latency samples per message (~40 bytes each, ~55 with their origin).
SAMPLES_PER_MESSAGE = 4000
#: Bytes an event's origin adds at most to a message (two integers and commas).
ORIGIN_BYTES = 24


#: Keys whose partition is remembered (:func:`partition_for`).
PARTITION_CACHE = 65_536


@functools.lru_cache(maxsize=PARTITION_CACHE)
def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java client, aiokafka, kafka-python)
    gives ``key`` among ``partitions``: murmur2, positive, modulo. Remembered for the
    last :data:`PARTITION_CACHE` keys: aiokafka's murmur2 is pure Python (~3 µs a key)
    and a principal sends many requests."""
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
    #: Origins (flat ``[partition, offset, ...]``) aligned with ``by_principal`` and ``logins``.
    principal_origins: dict[int, list[int]] = field(default_factory=dict)
    login_origins: list[int] = field(default_factory=list)
    _route_partition: dict[str, int] = field(default_factory=dict)


def principal_key(event: RequestEvent) -> bytes:
    """``principal:<id>``, or ``ip:<addr>`` when the caller is anonymous."""
    return (f"principal:{event.principal}" if event.principal else f"ip:{event.client_ip}").encode()


def sort_event(out: Rekeyed, event: RequestEvent, raw: bytes, origin: tuple[int, int] | None = None) -> None:
    """Add one parsed event (``raw`` is its JSON as received) to the destinations it needs,
    with its ``origin`` (request partition, offset) when given — give it for every event of
    ``out`` or for none."""
    if event.answered_by != "upstream":
        return
    if event.login is not None:
        out.logins.append(raw)
        if origin is not None:
            out.login_origins += origin
    if "{" in event.route or event.principal:  # BOLA: object routes; geo: every principal request
        partition = partition_for(principal_key(event), out.principal_partitions)
        out.by_principal.setdefault(partition, []).append(raw)
        if origin is not None:
            out.principal_origins.setdefault(partition, []).extend(origin)
    latency = event.latency_ms
    if latency >= 0 and math.isfinite(latency):
        series = series_of(event)
        partition = out._route_partition.get(series)
        if partition is None:
            partition = out._route_partition[series] = partition_for(series.encode(), out.route_partitions)
        sample = [event.ts.timestamp(), latency, event.event_id]
        if origin is not None:
            sample += origin
        out.by_route.setdefault(partition, {}).setdefault(series, []).append(sample)


def pack_events(raws: list[bytes], progress: dict[int, float], max_bytes: int = MAX_MESSAGE_BYTES,
                origins: list[int] | None = None) -> Iterator[bytes]:
    """``{"progress": ..., "events": [...], "src": [...]}`` messages of the raw event
    objects, each at most ``max_bytes`` (a single larger event goes alone); none for no
    events. ``origins``: flat ``[partition, offset, ...]`` aligned with ``raws`` (``src``
    is left out without them). Raises ``ValueError`` if they are not aligned."""
    if origins is not None and len(origins) != 2 * len(raws):
        raise ValueError(f"{len(origins)} origin numbers for {len(raws)} events")
    head = b'{"progress":' + _json(progress) + b',"events":['
    per_origin = ORIGIN_BYTES if origins is not None else 0
    start, size = 0, len(head) + 12
    for i, raw in enumerate(raws):
        if i > start and size + len(raw) + 1 + per_origin > max_bytes:
            yield _events_message(head, raws, origins, start, i)
            start, size = i, len(head) + 12
        size += len(raw) + 1 + per_origin
    if start < len(raws):
        yield _events_message(head, raws, origins, start, len(raws))


def _events_message(head: bytes, raws: list[bytes], origins: list[int] | None, start: int, end: int) -> bytes:
    body = head + b",".join(raws[start:end]) + b"]"
    if origins is not None:
        body += b',"src":' + _json(origins[2 * start:2 * end])
    return body + b"}"


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
class Batch:
    """An unpacked re-keyed message: its ``items`` (request events, or latency samples
    ``(series, ts, latency_ms, event_id)``), their event ``times`` (epoch s, aligned),
    their ``origins`` (request partition, offset; aligned; None when the message has
    none), how many items were ``malformed`` (left out), and the sender's ``progress``."""

    items: list[Any]
    times: list[float]
    origins: list[tuple[int, int]] | None
    progress: dict[int, float]
    malformed: int = 0

    @property
    def newest_s(self) -> float | None:
        """The newest event time of the items (epoch s), None without items."""
        return max(self.times) if self.times else None


class _EventsMessage(TypedDict):
    events: list[RequestEvent]
    progress: NotRequired[Any]
    src: NotRequired[Any]


_EVENTS_MESSAGE = TypeAdapter(_EventsMessage)


def unpack_events(value: bytes) -> Batch:
    """Unpack a by-principal or logins message. Raises :class:`MalformedRecord` if it is
    not one (malformed items are counted in ``malformed``, not raised).

    A message whose events are all valid is validated in one pass over its JSON
    (~4 µs an event instead of ~7 for decoding it, then validating each decoded
    object); any other goes item by item (:func:`_unpack_events_each`), which gives
    the same result for valid events and counts the malformed ones."""
    try:
        doc = _EVENTS_MESSAGE.validate_json(value)
        progress = _progress(doc.get("progress", {}))
    except (ValidationError, ValueError, TypeError, AttributeError):
        return _unpack_events_each(value)
    events = doc["events"]
    return Batch(events, [event.ts.timestamp() for event in events], _origins(doc.get("src"), len(events)),
                 progress)


def _unpack_events_each(value: bytes) -> Batch:
    try:
        doc = json.loads(value)
        items = doc["events"]
        progress = _progress(doc.get("progress", {}))
        src = doc.get("src")
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as exc:
        raise MalformedRecord(f"malformed re-keyed event batch: {exc!r}") from None
    if not isinstance(items, list):
        raise MalformedRecord("re-keyed event batch without an events array")
    pairs = _origins(src, len(items))
    events, times, origins, bad = [], [], [], 0
    for i, item in enumerate(items):
        try:
            event = parse_request_event(item if isinstance(item, dict) else {})
        except MalformedRecord:
            bad += 1
            continue
        events.append(event)
        times.append(event.ts.timestamp())
        if pairs is not None:
            origins.append(pairs[i])
    return Batch(events, times, origins if pairs is not None else None, progress, bad)


def _origins(src: Any, n: int) -> list[tuple[int, int]] | None:
    if src is None:
        return None
    if not isinstance(src, list) or len(src) != 2 * n or not all(type(v) is int for v in src):
        raise MalformedRecord(f"re-keyed batch with a malformed src array for {n} events")
    return list(zip(src[::2], src[1::2]))


def _progress(raw: Any) -> dict[int, float]:
    return {int(k): float(v) for k, v in raw.items()}


def unpack_samples(value: bytes) -> Batch:
    """Unpack a by-route message into samples ``(series, ts, latency_ms, event_id)``; their
    origins are kept only when every sample has one. Raises :class:`MalformedRecord` on
    another shape."""
    try:
        doc = json.loads(value)
        samples: list[tuple[str, datetime, float, str]] = []
        times: list[float] = []
        origins: list[tuple[int, int]] = []
        for series, rows in doc["samples"].items():
            for row in rows:
                t = float(row[0])
                samples.append((str(series), datetime.fromtimestamp(t, tz=timezone.utc), float(row[1]),
                                str(row[2])))
                times.append(t)
                if len(row) == 5:
                    origins.append((int(row[3]), int(row[4])))
                elif len(row) != 3:
                    raise ValueError(f"a sample of {len(row)} items")
        progress = _progress(doc.get("progress", {}))
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, UnicodeDecodeError,
            OverflowError, OSError) as exc:
        raise MalformedRecord(f"malformed latency samples: {exc!r}") from None
    return Batch(samples, times, origins if len(origins) == len(samples) else None, progress)
