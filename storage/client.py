"""Client factory: embedded chDB by default, a ClickHouse server when configured.

Both are ``clickhouse_connect`` clients with the same API, so writers and
queries run unchanged on either engine.

chDB quirks (measured, see DESIGN.md): one process owns a data directory — a
second process opening the same path fails with "Cannot lock file … status";
one path per process; opening takes 0.3–1.2 s and ~220–260 MB RSS.
"""

from __future__ import annotations

from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from gatewatch.settings import GatewatchSettings


class StorageError(RuntimeError):
    """The store could not be opened or a statement failed."""


def get_client(settings: GatewatchSettings) -> Client:
    """Open the store named by ``settings``.

    * ``settings.clickhouse_url`` unset: embedded chDB in ``settings.chdb_path``
      (the directory is created if missing).
    * ``settings.clickhouse_url`` set, e.g. ``http://default:@127.0.0.1:8123/default``:
      an HTTP client to that ClickHouse server (``clickhouse_connect`` DSN syntax).

    Raises :class:`StorageError` when the engine cannot be opened (for chDB, most
    often because another process holds the data directory).
    """
    try:
        if settings.clickhouse_url:
            return clickhouse_connect.get_client(dsn=settings.clickhouse_url)
        path = settings.chdb_path.expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(interface="chdb", path=str(path))
    except Exception as exc:  # the driver raises many types; callers need one
        if settings.clickhouse_url:
            raise StorageError(f"cannot open the store ({settings.clickhouse_url}): {exc}") from exc
        raise StorageError(
            f"cannot open the chDB store at {settings.chdb_path}: {exc} -- chDB allows one process "
            "per data directory: is another gatewatch worker using it?") from exc


def describe(settings: GatewatchSettings) -> dict[str, Any]:
    """Which engine ``settings`` selects, for logs and health output (no secrets)."""
    if settings.clickhouse_url:
        from urllib.parse import urlsplit

        url = urlsplit(settings.clickhouse_url)
        return {"engine": "clickhouse", "host": url.hostname, "port": url.port}
    return {"engine": "chdb", "path": str(settings.chdb_path)}
