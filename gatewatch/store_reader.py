"""Read the store from a command: through the worker while it runs, directly otherwise.

chDB lets one process own a data directory. While the stack runs, that is
the worker, and named queries go through its read-only HTTP API
(:class:`gatewatch.worker_api.WorkerApi`). When no worker answers, the
directory is opened here (or the ClickHouse server of
``settings.clickhouse_url`` is queried) with the same named queries of
``storage/queries.py``. The worker's API gets ``settings.admin_token``; a
worker that refuses it (401) is reported, not bypassed.
"""

from __future__ import annotations

from typing import Any

from gatewatch.settings import GatewatchSettings
from gatewatch.worker_api import WorkerApi, WorkerApiError, WorkerAuthError


class StoreUnavailable(RuntimeError):
    """Neither the worker nor the store directory could answer."""


class StoreReader:
    """Runs named queries for ``settings``; see the module docstring for the order tried."""

    def __init__(self, settings: GatewatchSettings) -> None:
        self.settings = settings
        self.worker = WorkerApi(f"http://{settings.worker_web_host}:{settings.worker_web_port}", timeout_s=5.0,
                                token=settings.admin_token)
        self._client: Any = None
        self.via = ""

    def query(self, name: str, **params: Any) -> list[dict[str, Any]]:
        """Rows of the named query as dicts. Raises :class:`StoreUnavailable`."""
        if self.via != "direct":
            try:
                rows = self.worker.query(name, **params)
                self.via = "worker"
                return rows
            except WorkerAuthError as exc:   # the worker runs (and owns the store) but wants the token
                raise StoreUnavailable(str(exc)) from exc
            except WorkerApiError as exc:
                if self.via == "worker":
                    raise StoreUnavailable(str(exc)) from exc
        return self._direct(name, params)

    def _direct(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        # Imported here: the CLI reaches into storage/ only when it must read the store itself.
        from storage.client import get_client
        from storage.queries import run_query

        try:
            if self._client is None:
                self._client = get_client(self.settings)
                self.via = "direct"
            result = run_query(self._client, name, params)
        except Exception as exc:  # chDB lock held by a worker, missing tables, server down
            raise StoreUnavailable(f"store not readable ({self.settings.chdb_path}): {exc}") from exc
        return [dict(zip(result["columns"], row)) for row in result["rows"]]
