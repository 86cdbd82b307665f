"""Per-minute rollups (materialized views, migrations 005 and 006) on the real chDB engine.

The expected figures are computed here in Python from the events written, not
typed in: counts per (minute, method, route, answered_by), status classes,
401/403/429 and latency quantiles (linear interpolation between order
statistics, as ClickHouse's reservoir ``quantile`` computes below 8192
values per state).
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from gatewatch.events import Detection, RequestEvent
from storage.client import get_client
from storage.migrations import load_migrations, migrate
from storage.writer import write_detections, write_requests

T0 = datetime(2025, 3, 1, 10, tzinfo=timezone.utc)
ROUTES = [("GET", "/users/{id}"), ("GET", "/orders/{id}"), ("POST", "/login")]
STATUSES = [200, 200, 200, 201, 304, 401, 403, 404, 429, 500, 503]
LEVELS = (0.5, 0.9, 0.95, 0.99)

ROLLUP_SQL = """
    SELECT minute, method, route, answered_by, sum(requests), sum(status_1xx), sum(status_2xx),
           sum(status_3xx), sum(status_4xx), sum(status_5xx), sum(status_401), sum(status_403),
           sum(status_429), quantilesMerge(0.5, 0.9, 0.95, 0.99)(latency_ms)
    FROM requests_per_minute
    GROUP BY minute, method, route, answered_by
    ORDER BY minute, method, route, answered_by
"""


def make_events(n: int, seed: int = 7, start: int = 0) -> list[RequestEvent]:
    """``n`` requests over ~10 minutes on three routes, mixed statuses and answering parties."""
    rng = random.Random(seed)
    events = []
    for i in range(start, start + n):
        method, route = rng.choice(ROUTES)
        status = rng.choice(STATUSES)
        answered_by = "rate_limit" if status == 429 else "auth" if status == 401 else "upstream"
        events.append(RequestEvent(
            event_id=f"ev{i:06d}", ts=T0 + timedelta(seconds=rng.uniform(0, 600)),
            client_ip=f"198.51.100.{rng.randrange(1, 250)}", method=method, host="api", path=route,
            route=route, status=status, latency_ms=rng.lognormvariate(3.3, 0.5), answered_by=answered_by))
    return events


def expected_rollup(events: list[RequestEvent]) -> list[tuple]:
    """The rollup rows computed in Python, in the order of :data:`ROLLUP_SQL`."""
    groups: dict[tuple, list[RequestEvent]] = defaultdict(list)
    for e in events:
        minute = e.ts.replace(second=0, microsecond=0, tzinfo=None)
        groups[(minute, e.method, e.route, e.answered_by)].append(e)
    rows = []
    for key in sorted(groups):
        group = groups[key]
        statuses = [e.status for e in group]
        classes = [sum(s // 100 == c for s in statuses) for c in range(1, 6)]
        specific = [statuses.count(s) for s in (401, 403, 429)]
        quantiles = list(np.quantile([e.latency_ms for e in group], LEVELS))
        rows.append((*key, len(group), *classes, *specific, quantiles))
    return rows


def rollup_rows(store) -> list[tuple]:
    return [tuple(r) for r in store.query(ROLLUP_SQL).result_rows]


def assert_same_rollup(actual: list[tuple], expected: list[tuple]) -> None:
    assert [r[:-1] for r in actual] == [r[:-1] for r in expected]
    for got, want in zip(actual, expected):
        assert got[-1] == pytest.approx(want[-1], rel=1e-9), got[:4]


def test_request_rollup_matches_the_events(store) -> None:
    events = make_events(3000)
    write_requests(store, events[:1000])
    write_requests(store, events[1000:])  # two inserts: the rollup merges their states
    assert_same_rollup(rollup_rows(store), expected_rollup(events))


def test_request_rollup_types_fit_grafana(store) -> None:
    """Every count column is an unsigned integer; the minute is a UTC DateTime."""
    types = dict(store.query(
        "SELECT name, type FROM system.columns WHERE database = currentDatabase() "
        "AND table = 'requests_per_minute'").result_rows)
    assert types["minute"] == "DateTime('UTC')"
    assert types["requests"] == "SimpleAggregateFunction(sum, UInt64)"
    assert types["latency_ms"] == "AggregateFunction(quantiles(0.5, 0.9, 0.95, 0.99), Float64)"


def test_a_redelivered_batch_counts_twice_in_the_rollup_once_in_requests_final(store) -> None:
    """The documented limit of migration 005: a materialized view sees every inserted block."""
    events = make_events(500)
    write_requests(store, events)
    write_requests(store, events[:100])  # the sink redelivers a batch after a crash
    [(final,)] = store.query("SELECT count() FROM requests FINAL").result_rows
    [(rolled,)] = store.query("SELECT sum(requests) FROM requests_per_minute").result_rows
    assert final == 500
    assert rolled == 600


def test_detection_rollup_counts_a_redelivered_detection_once(store) -> None:
    detections = [Detection(detection_id=f"det{i}", ts=T0 + timedelta(seconds=20 * i),
                            detector=("credential_stuffing", "bola")[i % 2], scope="ip",
                            value=f"203.0.113.{i}", severity=("high", "medium")[i % 3 == 0])
                  for i in range(60)]
    write_detections(store, detections)
    write_detections(store, detections[:10])  # redelivered
    rows = store.query("""
        SELECT detector, uniqExactMerge(detections) FROM detections_per_minute
        GROUP BY detector ORDER BY detector""").result_rows
    expected = {d: sum(x.detector == d for x in detections) for d in ("bola", "credential_stuffing")}
    assert dict(rows) == expected
    per_minute = store.query("""
        SELECT minute, uniqExactMerge(detections) FROM detections_per_minute
        GROUP BY minute ORDER BY minute""").result_rows
    assert sum(n for _, n in per_minute) == len(detections)
    assert len(per_minute) == len({d.ts.replace(second=0) for d in detections})


def test_migrating_a_store_with_requests_back_fills_the_rollups_once(store_settings) -> None:
    """A store at version 004 already holding requests (one written twice), migrated to the
    end: the rollups hold the old requests once (back-filled from ``requests FINAL``), and
    requests written afterwards go through the materialized view."""
    client = get_client(store_settings)
    try:
        migrate(client, target=4)
        old, new = make_events(800), make_events(400, seed=8, start=800)
        write_requests(client, old)
        write_requests(client, old[:50])
        applied = migrate(client)
        assert applied == [f"{m.version:03d}_{m.name}" for m in load_migrations() if m.version > 4]
        assert_same_rollup(rollup_rows(client), expected_rollup(old))
        write_requests(client, new)
        assert_same_rollup(rollup_rows(client), expected_rollup(old + new))
    finally:
        client.close()
