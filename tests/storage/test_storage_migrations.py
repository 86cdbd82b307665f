"""Migrations on the real chDB engine: order, idempotence, columns that follow the schema."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gatewatch.events import Decision, Detection, RequestEvent
from gatewatch.settings import GatewatchSettings
from storage.client import StorageError, get_client
from storage.migrations import load_migrations, migrate, split_statements


def test_migrations_are_numbered_in_order() -> None:
    names = [f"{m.version:03d}_{m.name}" for m in load_migrations()]
    assert names[:3] == ["001_requests", "002_detections", "003_decisions"]
    assert all(m.statements for m in load_migrations())


def test_migrate_is_idempotent_and_recorded(store) -> None:
    assert migrate(store) == []  # the fixture already applied everything
    rows = store.query("SELECT version, name FROM schema_migrations FINAL ORDER BY version").result_rows
    assert [(v, n) for v, n in rows] == [(m.version, m.name) for m in load_migrations()]


@pytest.mark.parametrize("table, model", [
    ("requests", RequestEvent), ("detections", Detection), ("decisions", Decision)])
def test_columns_follow_the_event_schema(store, table: str, model) -> None:
    columns = {row[0] for row in store.query(
        "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = {t:String}",
        parameters={"t": table}).result_rows}
    assert set(model.model_fields) <= columns
    assert columns - set(model.model_fields) == {"inserted_at"}


def test_client_ip_is_ipv6_and_times_are_utc_millis(store) -> None:
    types = dict(store.query(
        "SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = 'requests'"
    ).result_rows)
    assert types["client_ip"] == "IPv6"
    assert types["ts"] == "DateTime64(3, 'UTC')"
    engine = store.query("SELECT engine FROM system.tables WHERE database = currentDatabase() "
                         "AND name = 'requests'").result_rows[0][0]
    assert engine == "ReplacingMergeTree"


def test_split_statements_drops_comments_and_blanks() -> None:
    assert split_statements("-- c\nCREATE TABLE a (x UInt8) ENGINE=Memory;\n\n-- d\nSELECT 1;\n") == (
        "CREATE TABLE a (x UInt8) ENGINE=Memory", "SELECT 1")


def test_second_process_cannot_open_the_same_directory(store, store_settings: GatewatchSettings) -> None:
    """chDB quirk: one process owns a data directory; the second gets a clear StorageError."""
    code = (
        "from pathlib import Path\n"
        "from gatewatch.settings import load_settings\n"
        "from storage.client import get_client, StorageError\n"
        "try:\n"
        f"    get_client(load_settings(chdb_path=Path({str(store_settings.chdb_path)!r})))\n"
        "    print('OPENED')\n"
        "except StorageError as exc:\n"
        "    print('REFUSED', exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.startswith("REFUSED"), result.stdout + result.stderr[-2000:]
    assert "one process per data directory" in result.stdout


def test_server_url_that_does_not_answer_is_a_storage_error(store_settings: GatewatchSettings) -> None:
    from gatewatch.netutil import free_port

    settings = store_settings.model_copy(update={"clickhouse_url": f"http://127.0.0.1:{free_port()}"})
    with pytest.raises(StorageError):
        get_client(settings)


def test_asn_country_migration_keeps_rows_written_before(store_settings: GatewatchSettings) -> None:
    """A store migrated up to 003 holding requests, then migrated to the end: the old rows
    read NULL in the new columns, and new rows carry them."""
    from datetime import datetime, timezone

    from storage.migrations import SCHEMA_MIGRATIONS_DDL

    client = get_client(store_settings)
    try:
        client.command(SCHEMA_MIGRATIONS_DDL)
        for migration in load_migrations():
            if migration.version > 3:
                break
            for statement in migration.statements:
                client.command(statement)
            client.insert("schema_migrations", [[migration.version, migration.name]],
                          column_names=["version", "name"])
        ts = datetime(2025, 3, 1, tzinfo=timezone.utc)
        client.insert("requests", [["old", ts, "::ffff:10.0.0.1", "GET", "h", "/", "/", 200]],
                      column_names=["event_id", "ts", "client_ip", "method", "host", "path", "route", "status"])
        assert migrate(client) == [f"{m.version:03d}_{m.name}" for m in load_migrations() if m.version > 3]
        rows = client.query("SELECT event_id, asn, country FROM requests").result_rows
        assert [tuple(r) for r in rows] == [("old", None, None)]
    finally:
        client.close()
