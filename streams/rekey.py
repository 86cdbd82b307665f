"""Re-keying the request stream for the detectors that are not keyed as it is.

Requests arrive keyed by principal, or by client IP for login attempts and anonymous
callers (:func:`gatewatch.events.request_key`). Three detectors need another key, so the
request consumer (:mod:`streams.detect_requests`) sorts each batch it has parsed
and sends it on. A key's partition is computed here exactly as Kafka's default
partitioner would (murmur2 of the key, :func:`partition_for`), and each batch
becomes **one message per destination partition**, not one per key or event
— per-message overhead would dominate (a batch of 1000 requests from 400
principals is 4 messages, not 400):

* **by principal** (``topic_requests_by_principal``; key of an event:
  ``principal:<id>``): every upstream answer to an authenticated principal (for geo
  anomalies and behaviour), login attempts too, as ``{"progress":
  {...}, "rows": [[event_id, epoch_s, client_ip, method, host, path, route,
  status, principal, country, asn], ...], "src": [partition, offset, ...]}``
  (:data:`PRINCIPAL_COLUMNS`): only what those detectors read
  (:class:`gatewatch.events.PrincipalRequest`), a third of the bytes of the
  events and a fifth of the time to read back (~1.8 µs a row against ~9 µs to
  validate an event, measured with ``bench/pipeline.py``'s traffic) — every
  event of one principal lands on one partition, so its geo and behaviour state live
  on one worker. Readers still take the older ``"events"`` shape (whole event
  objects), so workers can be upgraded one at a time;
* **by route** (``topic_requests_by_route``; key ``"METHOD /route"``): only what
  the latency detector reads, as columns per series, ``{"progress": {...},
  "columns": {"GET /x": {"t": [epoch_s, ...], "ms": [latency_ms, ...], "id":
  [event_id, ...], "src": [partition, offset, ...]}, ...}}`` (:class:`SeriesSamples`)
  — a seventh of the bytes, and columns of numbers decode ~4× faster than rows
  (0.6 µs a sample against 2.5 µs, measured with ``bench/pipeline.py``'s traffic).
  Readers still take the older ``"samples"`` shape (``[[epoch_s, latency_ms,
  event_id, partition, offset], ...]`` per series);
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
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import repeat
from typing import Any

import orjson
from aiokafka.partitioner import murmur2
from pydantic import TypeAdapter, ValidationError
from typing_extensions import NotRequired, TypedDict

from detectors.latency import series_of
from gatewatch.events import MalformedRecord, PrincipalRequest, RequestEvent, parse_request_event

#: Largest re-keyed message, bytes.
MAX_MESSAGE_BYTES = 256 * 1024
#: Latency samples per message (~40 bytes each, ~55 with their origin).
SAMPLES_PER_MESSAGE = 4000
#: Bytes an event's origin adds at most to a message (two integers and commas).
ORIGIN_BYTES = 24
#: By-principal rows per message (~150 bytes each; a message is split further if it
#: would pass :data:`MAX_MESSAGE_BYTES`).
ROWS_PER_MESSAGE = 1000
#: The columns of a by-principal row, in order (:class:`gatewatch.events.PrincipalRequest`;
#: ``ts`` as epoch seconds).
PRINCIPAL_COLUMNS = ("event_id", "ts", "client_ip", "method", "host", "path", "route", "status", "principal",
                     "country", "asn")


#: Keys whose partition is remembered (:func:`partition_for`).
PARTITION_CACHE = 65_536


@functools.lru_cache(maxsize=PARTITION_CACHE)
def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java client, aiokafka, kafka-python)
    gives ``key`` among ``partitions``: murmur2, positive, modulo. Remembered for the
    last :data:`PARTITION_CACHE` keys: aiokafka's murmur2 is pure Python (~3 µs a key)
    and a principal sends many requests."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass(slots=True)
class SeriesSamples:
    """The latency samples of one series (``"METHOD /route"``) as aligned columns: sample
    times (epoch s), upstream latencies (ms), event ids and, when known, origins (flat
    ``[partition, offset, ...]``, two numbers a sample)."""

    times: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)
    origins: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.times)

    def add(self, epoch_s: float, latency_ms: float, event_id: str, origin: tuple[int, int] | None = None) -> None:
        """Append one sample (give its ``origin`` for every sample or for none)."""
        self.times.append(epoch_s)
        self.latencies.append(latency_ms)
        self.event_ids.append(event_id)
        if origin is not None:
            self.origins += origin

    def columns(self, start: int, end: int) -> dict[str, list[Any]]:
        """The wire form of samples ``[start, end)``."""
        out: dict[str, list[Any]] = {"t": self.times[start:end], "ms": self.latencies[start:end],
                                     "id": self.event_ids[start:end]}
        if self.origins:
            out["src"] = self.origins[2 * start:2 * end]
        return out


@dataclass
class Rekeyed:
    """One batch sorted by destination partition: rows (:func:`principal_row`) for the
    by-principal partitions, latency samples by series for the by-route partitions,
    raw logins."""

    principal_partitions: int
    route_partitions: int
    by_principal: dict[int, list[list[Any]]] = field(default_factory=dict)
    by_route: dict[int, dict[str, SeriesSamples]] = field(default_factory=dict)
    logins: list[bytes] = field(default_factory=list)
    #: Origins (flat ``[partition, offset, ...]``) aligned with ``by_principal`` and ``logins``.
    principal_origins: dict[int, list[int]] = field(default_factory=dict)
    login_origins: list[int] = field(default_factory=list)
    _route_partition: dict[str, int] = field(default_factory=dict)


def principal_key(event: RequestEvent) -> bytes:
    """``principal:<id>``, or ``ip:<addr>`` when the caller is anonymous."""
    return (f"principal:{event.principal}" if event.principal else f"ip:{event.client_ip}").encode()


def principal_row(event: RequestEvent, epoch_s: float | None = None) -> list[Any]:
    """The by-principal row of ``event`` (:data:`PRINCIPAL_COLUMNS`); ``epoch_s`` is its
    ``ts`` as epoch seconds when the caller has it already."""
    return [event.event_id, event.ts.timestamp() if epoch_s is None else epoch_s, event.client_ip,
            event.method, event.host, event.path, event.route, event.status, event.principal, event.country,
            event.asn]


def sort_event(out: Rekeyed, event: RequestEvent, raw: bytes, origin: tuple[int, int] | None = None) -> None:
    """Add one parsed event (``raw`` is its JSON as received) to the destinations it needs,
    with its ``origin`` (request partition, offset) when given — give it for every event of
    ``out`` or for none."""
    if event.answered_by != "upstream":
        return
    epoch_s = event.ts.timestamp()
    if event.login is not None:
        out.logins.append(raw)
        if origin is not None:
            out.login_origins += origin
    if event.principal:  # geo and behaviour: every principal request
        partition = partition_for(principal_key(event), out.principal_partitions)
        out.by_principal.setdefault(partition, []).append(principal_row(event, epoch_s))
        if origin is not None:
            out.principal_origins.setdefault(partition, []).extend(origin)
    latency = event.latency_ms
    if latency >= 0 and math.isfinite(latency):
        series = series_of(event)
        partition = out._route_partition.get(series)
        if partition is None:
            partition = out._route_partition[series] = partition_for(series.encode(), out.route_partitions)
        by_series = out.by_route.get(partition)
        if by_series is None:
            by_series = out.by_route[partition] = {}
        samples = by_series.get(series)
        if samples is None:
            samples = by_series[series] = SeriesSamples()
        samples.add(epoch_s, latency, event.event_id, origin)


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


def pack_rows(rows: list[list[Any]], progress: dict[int, float], origins: list[int] | None = None,
              per_message: int = ROWS_PER_MESSAGE, max_bytes: int = MAX_MESSAGE_BYTES) -> Iterator[bytes]:
    """``{"progress": ..., "rows": [...], "src": [...]}`` messages of by-principal rows,
    at most ``per_message`` rows each and at most ``max_bytes`` unless a single row is
    larger; a single progress-only message when there are no rows. ``origins``: flat
    ``[partition, offset, ...]`` aligned with ``rows`` (``src`` is left out without
    them). Raises ``ValueError`` if they are not aligned."""
    if origins is not None and len(origins) != 2 * len(rows):
        raise ValueError(f"{len(origins)} origin numbers for {len(rows)} rows")
    if not rows:
        yield _json({"progress": progress, "rows": []})
        return
    for start in range(0, len(rows), per_message):
        yield from _rows_messages(rows, origins, progress, start, min(start + per_message, len(rows)), max_bytes)


def _rows_messages(rows: list[list[Any]], origins: list[int] | None, progress: dict[int, float],
                   start: int, end: int, max_bytes: int) -> Iterator[bytes]:
    doc: dict[str, Any] = {"progress": progress, "rows": rows[start:end]}
    if origins is not None:
        doc["src"] = origins[2 * start:2 * end]
    message = _json(doc)
    if len(message) <= max_bytes or end - start == 1:
        yield message
        return
    middle = (start + end) // 2
    yield from _rows_messages(rows, origins, progress, start, middle, max_bytes)
    yield from _rows_messages(rows, origins, progress, middle, end, max_bytes)


def pack_event_progress(progress: dict[int, float]) -> bytes:
    """An event-batch message with progress only."""
    return b'{"progress":' + _json(progress) + b',"events":[]}'


def pack_samples(by_series: dict[str, SeriesSamples], progress: dict[int, float],
                 per_message: int = SAMPLES_PER_MESSAGE) -> Iterator[bytes]:
    """``{"progress": ..., "columns": {series: {"t", "ms", "id"[, "src"]}}}`` messages of at
    most ``per_message`` latency samples (of one or more series), each with ``progress``;
    a single progress-only message when there are no samples."""
    chunk: dict[str, dict[str, list[Any]]] = {}
    size = 0
    for series, samples in by_series.items():
        start = 0
        while start < len(samples):
            end = min(len(samples), start + per_message - size)
            chunk[series] = samples.columns(start, end)  # a series is split only at a message's end
            size += end - start
            start = end
            if size >= per_message:
                yield _json({"progress": progress, "columns": chunk})
                chunk, size = {}, 0
    if chunk or not by_series:
        yield _json({"progress": progress, "columns": chunk})


def _json(value: Any) -> bytes:
    # orjson: ~0.1 µs a by-principal row against ~1.5 with json.dumps (bench/pipeline.py's
    # traffic); integer keys (progress by partition) become strings, as with json.dumps.
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


@dataclass(frozen=True)
class Batch:
    """An unpacked re-keyed message: its ``items`` (request events or their projections, or
    latency samples ``(series, epoch_s, latency_ms, event_id)``), their event ``times`` (epoch s, aligned),
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


def unpack_principal(value: bytes) -> Batch:
    """Unpack a by-principal message into :class:`gatewatch.events.PrincipalRequest` items
    (the ``"rows"`` shape of :func:`pack_rows`; the older ``"events"`` shape is read with
    :func:`unpack_events`). Malformed rows are counted in ``malformed`` and left out;
    raises :class:`MalformedRecord` if the message is neither shape."""
    try:
        doc = orjson.loads(value)
        if "rows" not in doc and "events" in doc:
            return unpack_events(value)
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise MalformedRecord(f"malformed by-principal batch: {exc!r}") from None
    return _batch_of(doc, "rows", _principal_request)


def _principal_request(row: Any) -> tuple[PrincipalRequest, float] | None:
    """The request of one row and its time (epoch s), or None if it is not a well-formed row."""
    if type(row) is not list or len(row) != len(PRINCIPAL_COLUMNS):
        return None
    event_id, ts, client_ip, method, host, path, route, status, principal, country, asn = row
    if not (type(event_id) is str and type(client_ip) is str and type(method) is str and type(host) is str
            and type(path) is str and type(route) is str and type(principal) is str
            and type(status) is int and (country is None or type(country) is str)
            and (asn is None or type(asn) is int) and type(ts) in (float, int) and math.isfinite(ts)):
        return None
    try:
        when = datetime.fromtimestamp(ts, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
    return PrincipalRequest(event_id, when, client_ip, method, host, path, route, status, principal, country,
                            asn), ts


def _unpack_events_each(value: bytes) -> Batch:
    try:
        doc = orjson.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedRecord(f"malformed re-keyed event batch: {exc!r}") from None
    return _batch_of(doc, "events", _request_event)


def _request_event(item: Any) -> tuple[RequestEvent, float] | None:
    """The event of one decoded item and its time (epoch s), or None if it is malformed."""
    try:
        event = parse_request_event(item if isinstance(item, dict) else {})
    except MalformedRecord:
        return None
    return event, event.ts.timestamp()


def _batch_of(doc: Any, key: str, convert: Callable[[Any], tuple[Any, float] | None]) -> Batch:
    """The batch of a decoded re-keyed message whose items are under ``key``: each item
    through ``convert`` (None: malformed, counted and left out, with its origin)."""
    try:
        items = doc[key]
        progress = _progress(doc.get("progress", {}))
        src = doc.get("src")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise MalformedRecord(f"malformed re-keyed batch: {exc!r}") from None
    if not isinstance(items, list):
        raise MalformedRecord(f"re-keyed batch without a {key} array")
    pairs = _origins(src, len(items))
    out, times, origins, bad = [], [], [], 0
    for i, item in enumerate(items):
        got = convert(item)
        if got is None:
            bad += 1
            continue
        out.append(got[0])
        times.append(got[1])
        if pairs is not None:
            origins.append(pairs[i])
    return Batch(out, times, origins if pairs is not None else None, progress, bad)


def _origins(src: Any, n: int) -> list[tuple[int, int]] | None:
    if src is None:
        return None
    if not isinstance(src, list) or len(src) != 2 * n or not all(type(v) is int for v in src):
        raise MalformedRecord(f"re-keyed batch with a malformed src array for {n} events")
    return list(zip(src[::2], src[1::2]))


def _progress(raw: Any) -> dict[int, float]:
    return {int(k): float(v) for k, v in raw.items()}


def unpack_samples(value: bytes) -> Batch:
    """Unpack a by-route message into samples ``(series, epoch_s, latency_ms, event_id)``
    (the ``"columns"`` shape of :func:`pack_samples`, or the older ``"samples"`` rows);
    their origins are kept only when every sample has one. Raises
    :class:`MalformedRecord` on another shape or any malformed sample."""
    samples: list[tuple[str, float, float, str]] = []
    times: list[float] = []
    origins: list[tuple[int, int]] = []
    try:
        doc = orjson.loads(value)
        progress = _progress(doc.get("progress", {}))
        if "columns" in doc:
            _unpack_columns(doc["columns"], samples, times, origins)
        else:
            _unpack_sample_rows(doc["samples"], samples, times, origins)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, UnicodeDecodeError) as exc:
        raise MalformedRecord(f"malformed latency samples: {exc!r}") from None
    return Batch(samples, times, origins if len(origins) == len(samples) else None, progress)


def _is_number(value: Any) -> bool:
    return (type(value) is float and math.isfinite(value)) or type(value) is int


def _unpack_columns(columns: dict[str, Any], samples: list[tuple[str, float, float, str]], times: list[float],
                    origins: list[tuple[int, int]]) -> None:
    """Append the samples of a ``"columns"`` document (raises ``ValueError`` and others on
    a malformed one)."""
    for series, cols in columns.items():
        t, ms, ids, src = cols["t"], cols["ms"], cols["id"], cols.get("src")
        if not (type(t) is list and type(ms) is list and type(ids) is list and len(t) == len(ms) == len(ids)):
            raise ValueError(f"columns of {series!r} are not aligned lists")
        if not (all(map(_is_number, t)) and all(map(_is_number, ms)) and all(type(i) is str for i in ids)):
            raise ValueError(f"a malformed sample in {series!r}")
        samples += zip(repeat(series), t, ms, ids)
        times += t
        if src is not None:
            pairs = _origins(src, len(t))
            origins += pairs or ()


def _unpack_sample_rows(rows_by_series: dict[str, Any], samples: list[tuple[str, float, float, str]],
                        times: list[float], origins: list[tuple[int, int]]) -> None:
    """Append the samples of an older ``"samples"`` document (rows)."""
    for series, rows in rows_by_series.items():
        for row in rows:
            t = float(row[0])
            samples.append((str(series), t, float(row[1]), str(row[2])))
            times.append(t)
            if len(row) == 5:
                origins.append((int(row[3]), int(row[4])))
            elif len(row) != 3:
                raise ValueError(f"a sample of {len(row)} items")
