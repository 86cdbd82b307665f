"""Retention by TTL (storage/retention.py) on the real chDB engine: the same statements
as on a ClickHouse server, applied only when the setting changes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from gatewatch.events import RequestEvent
from storage.retention import apply_retention, current_ttl, retention_plan
from storage.writer import write_requests

AGES_DAYS = [0, 1, 5, 6.5, 8, 30, 45]


def _events(now: datetime) -> list[RequestEvent]:
    return [RequestEvent(event_id=f"age{age}", ts=now - timedelta(days=age), client_ip="198.51.100.7",
                         method="GET", host="api", path="/health", route="/health", status=200)
            for age in AGES_DAYS]


def _stored(store, table: str = "requests", column: str = "event_id") -> list[str]:
    return sorted(r[0] for r in store.query(f"SELECT toString({column}) FROM {table}").result_rows)


def test_no_ttl_by_default(store, store_settings) -> None:
    assert apply_retention(store, store_settings) == []
    assert all(current_ttl(store, t.table) is None for t in retention_plan(store_settings))


def test_requests_older_than_the_ttl_are_deleted_and_recent_ones_kept(store, store_settings) -> None:
    now = datetime.now(timezone.utc)
    events = _events(now)
    write_requests(store, events)
    settings = store_settings.model_copy(update={"requests_ttl_days": 7, "rollups_ttl_days": 40})
    changed = apply_retention(store, settings)
    assert changed == ["requests: none -> toDateTime(ts) + toIntervalDay(7)",
                       "requests_per_minute: none -> minute + toIntervalDay(40)",
                       "detections_per_minute: none -> minute + toIntervalDay(40)"]
    store.command("OPTIMIZE TABLE requests FINAL")  # background merges would do it later
    store.command("OPTIMIZE TABLE requests_per_minute FINAL")
    # Whole day partitions are dropped (ttl_only_drop_parts): a day goes when its newest row
    # is older than the TTL.
    newest = {}
    for e in events:
        newest[e.ts.date()] = max(newest.get(e.ts.date(), e.ts), e.ts)
    kept = sorted(e.event_id for e in events if newest[e.ts.date()] > now - timedelta(days=7))
    assert _stored(store) == kept
    assert "age0" in kept and "age45" not in kept
    minutes = store.query("SELECT min(minute) FROM requests_per_minute").result_rows[0][0]
    assert minutes.replace(tzinfo=timezone.utc) > now - timedelta(days=41)
    assert apply_retention(store, settings) == []  # unchanged: nothing rewritten again


def test_ttl_changes_and_is_removed(store, store_settings) -> None:
    apply_retention(store, store_settings.model_copy(update={"requests_ttl_days": 30}))
    changed = apply_retention(store, store_settings.model_copy(update={"requests_ttl_days": 90}))
    assert changed == ["requests: toDateTime(ts) + toIntervalDay(30) -> toDateTime(ts) + toIntervalDay(90)"]
    assert apply_retention(store, store_settings) == [
        "requests: toDateTime(ts) + toIntervalDay(90) -> none"]
    assert current_ttl(store, "requests") is None
    engine = store.query("SELECT engine_full FROM system.tables WHERE database = currentDatabase() "
                         "AND name = 'requests'").result_rows[0][0]
    assert "ttl_only_drop_parts = 1" in engine
