"""Numbered SQL migrations: ``storage/migrations/NNN_name.sql``, applied in order.

Each file holds one or more statements separated by ``;`` (``--`` comments
allowed, no ``;`` inside string literals). Statements are idempotent
(``CREATE TABLE IF NOT EXISTS``) and applied versions are recorded in
``schema_migrations``, so :func:`migrate` can run at every start-up, on chDB
and on a ClickHouse server alike (the pattern of Kong's ``migrations/``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from clickhouse_connect.driver.client import Client

_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")

#: Where the SQL files live. Located from this file rather than through
#: ``importlib.resources.files("storage")``: under pytest, ``tests/storage`` can
#: shadow the ``storage`` package as a namespace package.
MIGRATIONS_DIR = Path(__file__).parent / "migrations"

SCHEMA_MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version    UInt32,
    name       String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY version
"""


@dataclass(frozen=True)
class Migration:
    """One migration file: ``version`` (the number), ``name`` and its statements."""

    version: int
    name: str
    statements: tuple[str, ...]


def split_statements(sql: str) -> tuple[str, ...]:
    """Split SQL text on ``;`` after removing ``--`` comment lines; drop empty parts."""
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    parts = (part.strip() for part in "\n".join(lines).split(";"))
    return tuple(part for part in parts if part)


def load_migrations() -> list[Migration]:
    """Every migration shipped in ``storage/migrations``, sorted by version.

    Raises ``ValueError`` on a duplicate version number.
    """
    found: dict[int, Migration] = {}
    for entry in sorted(MIGRATIONS_DIR.iterdir()):
        match = _FILE.match(entry.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"two migrations with version {version:03d}")
        found[version] = Migration(version, match.group(2), split_statements(entry.read_text()))
    return [found[v] for v in sorted(found)]


def applied_versions(client: Client) -> set[int]:
    """Versions recorded in ``schema_migrations`` (creating that table if needed)."""
    client.command(SCHEMA_MIGRATIONS_DDL)
    return {row[0] for row in client.query("SELECT DISTINCT version FROM schema_migrations").result_rows}


def migrate(client: Client, target: int | None = None) -> list[str]:
    """Apply the migrations not yet recorded, in order, up to version ``target``
    (default: all); return their names (``NNN_name``).

    Safe to call at every start-up; a second call returns ``[]``. Apply them
    from one process at a time: a migration that copies existing rows (the
    rollups' back-fill) would copy them twice if two processes ran it at once
    (the production stack runs ``gatewatch store migrate`` once, before the workers).
    """
    done = applied_versions(client)
    applied: list[str] = []
    for migration in load_migrations():
        if migration.version in done or (target is not None and migration.version > target):
            continue
        for statement in migration.statements:
            client.command(statement)
        client.insert("schema_migrations", [[migration.version, migration.name]],
                      column_names=["version", "name"])
        applied.append(f"{migration.version:03d}_{migration.name}")
    return applied
