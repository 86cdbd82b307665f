"""Batch inserts of gatewatch records into ``requests``, ``detections`` and ``decisions``.

Columns follow :mod:`gatewatch.events` field for field (see
``storage/migrations``). Every record is checked against what its column types
accept *before* the insert (for example a ``client_ip`` that is not an IP
address, or a status above 65535): such a record is rejected on its own and
reported, instead of failing the whole batch. Errors from the engine itself
(connection lost, disk full) propagate to the caller.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, TypeVar

from clickhouse_connect.driver.client import Client

from gatewatch.events import Decision, Detection, RequestEvent

T = TypeVar("T")

REQUEST_COLUMNS = (
    "v", "event_id", "ts", "client_ip", "method", "host", "path", "route", "status",
    "latency_ms", "bytes_in", "bytes_out", "principal", "auth", "answered_by",
    "user_agent", "login", "username_hash", "decision_id", "asn", "country",
)
#: The ``requests`` column types the insert declares (those of ``storage/migrations``, checked
#: against the engine by tests/storage/test_storage_writer_queries.py), except ``client_ip``:
#: sent as the address's 16 bytes (``FixedString(16)``, IPv4 mapped), which the engine converts
#: to its ``IPv6`` column. Declaring them spares a ``DESCRIBE`` per insert, and the 16 bytes
#: spare clickhouse-connect parsing every address again (its IPv6 writer calls
#: ``ipaddress.ip_address`` on each value: about half of the insert's Python time).
REQUEST_INSERT_TYPES = (
    "UInt8", "String", "DateTime64(3, 'UTC')", "FixedString(16)", "LowCardinality(String)",
    "LowCardinality(String)", "String", "LowCardinality(String)", "UInt16", "Float64", "UInt64", "UInt64",
    "LowCardinality(String)", "LowCardinality(String)", "LowCardinality(String)", "String",
    "LowCardinality(Nullable(String))", "Nullable(String)", "Nullable(String)", "Nullable(UInt32)",
    "LowCardinality(Nullable(String))",
)
DETECTION_COLUMNS = (
    "v", "detection_id", "ts", "detector", "scope", "value", "severity", "score",
    "summary", "evidence", "sample_event_ids",
)
DECISION_COLUMNS = (
    "v", "id", "scope", "value", "action", "reason", "detector", "evidence",
    "created_at", "expires_at", "origin", "detection_id",
)

_UINT8 = 255
_UINT16 = 65_535
_UINT32 = 2**32 - 1
_UINT64 = 2**64 - 1


class RowRejected(ValueError):
    """A record that its table's column types cannot hold."""


@dataclass
class WriteResult:
    """Outcome of one batch: ``inserted`` rows, and ``rejected`` as ``(id, reason)`` pairs."""

    inserted: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)


def _uint(value: int, limit: int, name: str) -> int:
    if not 0 <= value <= limit:
        raise RowRejected(f"{name}={value} out of range 0..{limit}")
    return value


def _evidence(evidence: dict[str, Any]) -> str:
    # default=str: evidence is free-form; a datetime or set must not lose the row.
    return json.dumps(evidence, sort_keys=True, default=str)


#: IPv4 addresses are stored IPv4-mapped in the ``IPv6`` column (``::ffff:a.b.c.d``).
_V4_MAPPED = bytes(10) + b"\xff\xff"
_IP_CACHE_SIZE = 65_536


@functools.lru_cache(maxsize=_IP_CACHE_SIZE)
def _ip16(text: str) -> bytes:
    # Cached per address text (a client sends many requests): parsing one costs ~3 µs.
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        raise RowRejected(f"client_ip {text!r} is not an IP address") from None
    return _V4_MAPPED + ip.packed if ip.version == 4 else ip.packed


def _ticks_ms(ts: Any) -> int:
    # DateTime64(3) ticks computed as clickhouse-connect computes them from a datetime
    # (floor of the POSIX timestamp, then the microseconds), so the stored value is the same.
    return ((math.floor(ts.timestamp()) * 1_000_000 + ts.microsecond) * 1000) // 1_000_000


def request_address(event: RequestEvent) -> bytes:
    """Check that ``event`` fits the ``requests`` columns; return its ``client_ip`` as the 16
    bytes of an IPv6 address (IPv4 mapped, ``::ffff:a.b.c.d``). Raises :class:`RowRejected`
    naming the first value that does not fit (a ``client_ip`` that is not an address, an
    integer out of its column's range)."""
    ip = _ip16(event.client_ip)
    asn = event.asn
    if (0 <= event.v <= _UINT8 and 0 <= event.status <= _UINT16 and 0 <= event.bytes_in <= _UINT64
            and 0 <= event.bytes_out <= _UINT64 and (asn is None or 0 <= asn <= _UINT32)):
        return ip  # the common case in one test; the checks below name what does not fit
    _uint(event.v, _UINT8, "v")
    _uint(event.status, _UINT16, "status")
    _uint(event.bytes_in, _UINT64, "bytes_in")
    _uint(event.bytes_out, _UINT64, "bytes_out")
    if asn is not None:
        _uint(asn, _UINT32, "asn")
    return ip


def _latency_ms(event: RequestEvent) -> float:
    return float(event.latency_ms)


#: Getters of the columns after ``client_ip``, in :data:`REQUEST_COLUMNS` order.
_REQUEST_TAIL = tuple(_latency_ms if name == "latency_ms" else attrgetter(name) for name in REQUEST_COLUMNS[4:])


def request_columns(events: Sequence[RequestEvent]) -> tuple[list[list[Any]], list[tuple[str, str]]]:
    """The ``requests`` columns (in :data:`REQUEST_COLUMNS` order, one list per column) of the
    events that fit, and ``(event_id, reason)`` for those that do not (:func:`request_address`).
    ``ts`` as DateTime64(3) ticks (ms), ``client_ip`` as 16 bytes, ``latency_ms`` as float."""
    ok: list[RequestEvent] = []
    ips: list[bytes] = []
    rejected: list[tuple[str, str]] = []
    for event in events:
        try:
            ips.append(request_address(event))
        except RowRejected as exc:
            rejected.append((event.event_id, str(exc)))
            continue
        ok.append(event)
    columns = [[e.v for e in ok], [e.event_id for e in ok], [_ticks_ms(e.ts) for e in ok], ips]
    columns += [list(map(get, ok)) for get in _REQUEST_TAIL]
    return columns, rejected


def detection_row(detection: Detection) -> list[Any]:
    """One ``detections`` row (in :data:`DETECTION_COLUMNS` order); evidence as JSON text."""
    return [
        _uint(detection.v, _UINT8, "v"), detection.detection_id, detection.ts, detection.detector,
        detection.scope, detection.value, detection.severity, float(detection.score),
        detection.summary, _evidence(detection.evidence), list(detection.sample_event_ids),
    ]


def decision_row(decision: Decision) -> list[Any]:
    """One ``decisions`` row (in :data:`DECISION_COLUMNS` order); evidence as JSON text."""
    return [
        _uint(decision.v, _UINT8, "v"), decision.id, decision.scope, decision.value,
        decision.action, decision.reason, decision.detector, _evidence(decision.evidence),
        decision.created_at, decision.expires_at, decision.origin, decision.detection_id,
    ]


def _write(client: Client, table: str, columns: Sequence[str], records: Sequence[T],
           to_row: Callable[[T], list[Any]], record_id: Callable[[T], str]) -> WriteResult:
    result = WriteResult()
    rows: list[list[Any]] = []
    for record in records:
        try:
            rows.append(to_row(record))
        except RowRejected as exc:
            result.rejected.append((record_id(record), str(exc)))
    if rows:
        client.insert(table, rows, column_names=list(columns))
        result.inserted = len(rows)
    return result


def write_requests(client: Client, events: Sequence[RequestEvent]) -> WriteResult:
    """Insert request events as one batch into ``requests``, column by column (see
    :func:`request_columns` and :data:`REQUEST_INSERT_TYPES`)."""
    columns, rejected = request_columns(events)
    result = WriteResult(rejected=rejected)
    if columns[0]:
        client.insert("requests", columns, column_names=list(REQUEST_COLUMNS),
                      column_type_names=list(REQUEST_INSERT_TYPES), column_oriented=True)
        result.inserted = len(columns[0])
    return result


def write_detections(client: Client, detections: Sequence[Detection]) -> WriteResult:
    """Insert detections as one batch into ``detections``."""
    return _write(client, "detections", DETECTION_COLUMNS, detections, detection_row,
                  lambda d: d.detection_id)


def write_decisions(client: Client, decisions: Sequence[Decision]) -> WriteResult:
    """Insert decisions as one batch into ``decisions``."""
    return _write(client, "decisions", DECISION_COLUMNS, decisions, decision_row, lambda d: d.id)
