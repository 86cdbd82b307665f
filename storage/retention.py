"""Retention by ClickHouse TTL: how long ``requests`` and the per-minute rollups are kept.

The TTL comes from the settings (``requests_ttl_days``, ``rollups_ttl_days``;
None keeps every row), not from a migration, so that changing it needs no new
schema version. :func:`apply_retention` runs after :func:`storage.migrations.migrate`
at worker start-up and changes a table only when its TTL differs from the
setting: ``ALTER TABLE … MODIFY TTL`` rewrites the table's parts
(``materialize_ttl_after_modify``), which is not something to repeat at every
start-up.

``requests`` is partitioned by day and set to ``ttl_only_drop_parts = 1``
(migration 007):
ClickHouse drops a day's parts whole once every row in them has expired,
instead of rewriting parts row by row (ClickHouse docs, "MergeTree — TTL for
columns and tables"). Expired rows are removed by background merges, so they
can stay readable for a while after their TTL; ``OPTIMIZE TABLE … FINAL``
removes them at once. Measured on chDB 26.9 (tests/storage): the same
statements work embedded as on a server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

from gatewatch.settings import GatewatchSettings


@dataclass(frozen=True)
class TableTtl:
    """The TTL of one table: ``column`` (a DateTime or DateTime64 column) plus ``days``
    (None: no TTL). :attr:`expression` is written the way ClickHouse prints it back in
    ``system.tables.engine_full``, so that an unchanged TTL is recognised."""

    table: str
    column: str
    days: int | None
    datetime64: bool = False

    @property
    def expression(self) -> str | None:
        """The TTL expression, e.g. ``toDateTime(ts) + toIntervalDay(30)``; None for no TTL."""
        if self.days is None:
            return None
        column = f"toDateTime({self.column})" if self.datetime64 else self.column
        return f"{column} + toIntervalDay({int(self.days)})"


def retention_plan(settings: GatewatchSettings) -> list[TableTtl]:
    """The TTL each table should have under ``settings``."""
    return [
        TableTtl("requests", "ts", settings.requests_ttl_days, datetime64=True),
        TableTtl("requests_per_minute", "minute", settings.rollups_ttl_days),
        TableTtl("detections_per_minute", "minute", settings.rollups_ttl_days),
    ]


_TTL = re.compile(r"\sTTL\s(.+?)(?:\sSETTINGS\s|$)")


def current_ttl(client: Client, table: str) -> str | None:
    """The table's TTL expression as ClickHouse prints it, or None.

    Raises ``LookupError`` if the table does not exist in the current database.
    """
    rows = client.query("SELECT engine_full FROM system.tables WHERE database = currentDatabase() "
                        "AND name = {t:String}", parameters={"t": table}).result_rows
    if not rows:
        raise LookupError(f"no table {table!r}: run the migrations first")
    found = _TTL.search(rows[0][0])
    return found.group(1).strip() if found else None


def apply_retention(client: Client, settings: GatewatchSettings) -> list[str]:
    """Give every table of :func:`retention_plan` its TTL; return what changed, as
    ``"table: old -> new"`` lines (``[]`` when everything already matches).

    Raises ``LookupError`` if a table is missing; engine errors propagate.
    """
    changed: list[str] = []
    for ttl in retention_plan(settings):
        old, new = current_ttl(client, ttl.table), ttl.expression
        if old == new:
            continue
        if new is None:
            client.command(f"ALTER TABLE {ttl.table} REMOVE TTL")
        else:
            client.command(f"ALTER TABLE {ttl.table} MODIFY TTL {new}")
        changed.append(f"{ttl.table}: {old or 'none'} -> {new or 'none'}")
    return changed
