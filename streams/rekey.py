"""Re-keying the request stream for the detectors that are not keyed by client IP.

Requests arrive keyed by client IP. Three detectors need another key, so the
request agent (:mod:`streams.detect_requests`) sorts each batch it has
parsed and sends it on, batched (one Kafka message per key and batch, not per
event — per-message overhead would dominate):

* **by principal** (``topic_requests_by_principal``, key ``principal:<id>`` or
  ``ip:<addr>`` for anonymous callers): upstream answers on routes with a
  ``{parameter}``, as ``{"progress": {...}, "events": [original event JSON, ...]}``
  — BOLA state per principal lives on one partition;
* **by route** (``topic_requests_by_route``, key ``"METHOD /route"``): only what the
  latency detector reads, ``{"series": ..., "samples": [[epoch_s, latency_ms,
  event_id], ...], "progress": {source partition: epoch_s}}`` — a tenth of the
  bytes of the events, plus how far each source partition of the request agent
  has got in event time (:mod:`streams.watermarks`); a message with
  ``"series": null`` carries progress only;
* **logins** (``topic_logins``, one partition): upstream-answered login
  attempts, in the same shape — the prefix/ASN/username/global windows of the
  credential-stuffing detector see every login, whatever the worker.

``progress`` maps each source partition of the request topic that the sending
agent reads to the newest event time it has processed (epoch seconds): the
receiving agents derive their low watermark from it (:mod:`streams.watermarks`).
Messages with no events/samples carry progress only.

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

from detectors.latency import series_of
from gatewatch.events import MalformedRecord, RequestEvent, parse_request_event

#: Largest re-keyed message, bytes.
MAX_MESSAGE_BYTES = 256 * 1024
#: Latency samples per message (~40 bytes each).
SAMPLES_PER_MESSAGE = 4000


@dataclass
class Rekeyed:
    """One batch sorted by destination: raw event JSON by principal key, latency samples
    by series, raw login events."""

    by_principal: dict[bytes, list[bytes]] = field(default_factory=dict)
    by_route: dict[bytes, list[list[Any]]] = field(default_factory=dict)
    logins: list[bytes] = field(default_factory=list)


def principal_key(event: RequestEvent) -> bytes:
    """``principal:<id>``, or ``ip:<addr>`` when the caller is anonymous."""
    return (f"principal:{event.principal}" if event.principal else f"ip:{event.client_ip}").encode()


def sort_event(out: Rekeyed, event: RequestEvent, raw: bytes) -> None:
    """Add one parsed event (``raw`` is its JSON as received) to the destinations it needs."""
    if event.answered_by != "upstream":
        return
    if event.login is not None:
        out.logins.append(raw)
    if "{" in event.route:
        out.by_principal.setdefault(principal_key(event), []).append(raw)
    latency = event.latency_ms
    if latency >= 0 and math.isfinite(latency):
        out.by_route.setdefault(series_of(event).encode(), []).append(
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


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def pack_samples(series: bytes, samples: list[list[Any]], progress: dict[int, float],
                 per_message: int = SAMPLES_PER_MESSAGE) -> Iterator[bytes]:
    """Messages of at most ``per_message`` latency samples of one series, each with
    ``progress`` (source partition -> newest event time processed, epoch seconds)."""
    name = series.decode()
    for start in range(0, len(samples), per_message):
        yield json.dumps({"series": name, "samples": samples[start:start + per_message],
                          "progress": progress}, separators=(",", ":")).encode()


def pack_progress(progress: dict[int, float]) -> bytes:
    """A message with progress only (sent to every by-route partition now and then)."""
    return json.dumps({"series": None, "samples": [], "progress": progress}, separators=(",", ":")).encode()


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
    """An unpacked by-route message."""

    series: str | None
    samples: list[tuple[datetime, float, str]]  # (ts, latency_ms, event_id)
    progress: dict[int, float]


def unpack_samples(value: bytes) -> Samples:
    """The series, samples and progress of a by-route message.

    Raises :class:`MalformedRecord` on a message of another shape.
    """
    try:
        doc = json.loads(value)
        series = doc["series"]
        samples = [(datetime.fromtimestamp(float(t), tz=timezone.utc), float(ms), str(eid))
                   for t, ms, eid in doc["samples"]]
        progress = _progress(doc.get("progress", {}))
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError, OverflowError,
            OSError) as exc:
        raise MalformedRecord(f"malformed latency samples: {exc!r}") from None
    if not (isinstance(series, str) or (series is None and not samples)):
        raise MalformedRecord("latency samples without a series name")
    return Samples(series, samples, progress)
