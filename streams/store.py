"""The worker's store: one ClickHouse client (embedded chDB by default) used from
ONE dedicated thread.

chDB quirks (measured, DESIGN.md): opening takes 0.3–1.2 s and the first
insert 160–400 ms; even from a thread pool a chDB call can stall the event
loop for tens of ms, and one process owns a data directory. So every store
call — migrations, batch inserts, read queries of the web API — runs on a
single ``ThreadPoolExecutor(max_workers=1)``, in batches, and the store is
opened, migrated and warmed with a first query at start-up, before traffic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from clickhouse_connect.driver.client import Client

from gatewatch.events import Decision, Detection, RequestEvent
from gatewatch.settings import GatewatchSettings
from storage.client import describe, get_client
from storage.migrations import migrate
from storage.queries import run_query
from storage.retention import apply_retention
from storage.writer import WriteResult, write_decisions, write_detections, write_requests

log = logging.getLogger(__name__)
T = TypeVar("T")


class StoreNotReady(RuntimeError):
    """The store is not open (start-up not finished, or shut down)."""


class Store:
    """Async facade over the store; every call runs on one dedicated thread.

    :meth:`open` raises :class:`storage.client.StorageError` if the engine cannot
    be opened (e.g. another process holds the chDB directory).
    """

    def __init__(self, settings: GatewatchSettings) -> None:
        self.settings = settings
        self._executor: ThreadPoolExecutor | None = None
        self._client: Client | None = None
        self.applied_migrations: list[str] = []

    @property
    def ready(self) -> bool:
        """True once the store is open, migrated and warmed."""
        return self._client is not None

    def describe(self) -> dict[str, Any]:
        """Engine and location (no secrets)."""
        return describe(self.settings)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise StoreNotReady("store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _client_or_raise(self) -> Client:
        if self._client is None:
            raise StoreNotReady("store is not open")
        return self._client

    async def open(self) -> None:
        """Open the engine, apply migrations and the retention settings
        (:mod:`storage.retention`), warm it with a first query. Idempotent."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gatewatch-store")
        if self._client is None:
            self._client, self.applied_migrations = await self._call(self._open_sync)
            log.info("store open (%s); migrations applied now: %s",
                     self.describe(), self.applied_migrations or "none")

    def _open_sync(self) -> tuple[Client, list[str]]:
        client = get_client(self.settings)
        applied = migrate(client)
        for change in apply_retention(client, self.settings):
            log.info("retention: %s", change)
        run_query(client, "table_counts")  # warm-up: first query pays the engine's start costs
        return client, applied

    async def close(self) -> None:
        """Close the client and stop the store thread. Idempotent."""
        client, self._client = self._client, None
        if client is not None and self._executor is not None:
            await self._call(client.close)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def write_requests(self, events: Sequence[RequestEvent]) -> WriteResult:
        """Insert a batch of request events (see :func:`storage.writer.write_requests`)."""
        return await self._call(lambda: write_requests(self._client_or_raise(), events))

    async def write_detections(self, detections: Sequence[Detection]) -> WriteResult:
        """Insert a batch of detections."""
        return await self._call(lambda: write_detections(self._client_or_raise(), detections))

    async def write_decisions(self, decisions: Sequence[Decision]) -> WriteResult:
        """Insert a batch of decisions."""
        return await self._call(lambda: write_decisions(self._client_or_raise(), decisions))

    async def query(self, name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run a named query (see :func:`storage.queries.run_query`) on the store thread."""
        return await self._call(lambda: run_query(self._client_or_raise(), name, params))
