"""Batch inserts of gatewatch records into ``requests``, ``detections`` and ``decisions``.

Columns follow :mod:`gatewatch.events` field for field (see
``storage/migrations``). Every record is checked against what its column types
accept *before* the insert (for example a ``client_ip`` that is not an IP
address, or a status above 65535): such a record is rejected on its own and
reported, instead of failing the whole batch. Errors from the engine itself
(connection lost, disk full) propagate to the caller.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from clickhouse_connect.driver.client import Client

from gatewatch.events import Decision, Detection, RequestEvent

T = TypeVar("T")

REQUEST_COLUMNS = (
    "v", "event_id", "ts", "client_ip", "method", "host", "path", "route", "status",
    "latency_ms", "bytes_in", "bytes_out", "principal", "auth", "answered_by",
    "user_agent", "login", "username_hash", "decision_id", "asn", "country",
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


def request_row(event: RequestEvent) -> list[Any]:
    """One ``requests`` row (in :data:`REQUEST_COLUMNS` order).

    ``client_ip`` becomes an ``ipaddress`` object (IPv4 is stored IPv4-mapped in
    the ``IPv6`` column). Raises :class:`RowRejected` if a value does not fit.
    """
    try:
        ip = ipaddress.ip_address(event.client_ip.strip())
    except ValueError:
        raise RowRejected(f"client_ip {event.client_ip!r} is not an IP address") from None
    return [
        _uint(event.v, _UINT8, "v"), event.event_id, event.ts, ip, event.method, event.host,
        event.path, event.route, _uint(event.status, _UINT16, "status"), float(event.latency_ms),
        _uint(event.bytes_in, _UINT64, "bytes_in"), _uint(event.bytes_out, _UINT64, "bytes_out"),
        event.principal, event.auth, event.answered_by, event.user_agent, event.login,
        event.username_hash, event.decision_id,
        None if event.asn is None else _uint(event.asn, _UINT32, "asn"), event.country,
    ]


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
    """Insert request events as one batch into ``requests``."""
    return _write(client, "requests", REQUEST_COLUMNS, events, request_row, lambda e: e.event_id)


def write_detections(client: Client, detections: Sequence[Detection]) -> WriteResult:
    """Insert detections as one batch into ``detections``."""
    return _write(client, "detections", DETECTION_COLUMNS, detections, detection_row,
                  lambda d: d.detection_id)


def write_decisions(client: Client, decisions: Sequence[Decision]) -> WriteResult:
    """Insert decisions as one batch into ``decisions``."""
    return _write(client, "decisions", DECISION_COLUMNS, decisions, decision_row, lambda d: d.id)
