"""The worker's store: one ClickHouse client (embedded chDB by default) in ONE child
process, the store process (:mod:`storage.store_process`).

chDB quirks (measured, DESIGN.md): opening takes 0.3–1.2 s and the first
insert 160–400 ms; a chDB call holds the GIL for its whole length, so from a
thread of the worker it stalled the event loop (tens of ms a call, ~4 µs a
stored row); one process owns a data directory. So every store call —
migrations, batch inserts, read queries of the web API — runs in one child
process (``ProcessPoolExecutor(max_workers=1)``, started with ``spawn``: the
worker has threads, which ``fork`` would copy half-way), in order, in
batches, and the store is opened, migrated and warmed with a first query at
start-up, before traffic. Request events travel to it as their raw JSON.

If the store process dies (killed, out of memory), the call in flight and
those queued fail (the sink spools their batches, :mod:`streams.sink`), the
failure is counted (``store_process_restarts``) and the next call starts a new
store process, which opens the engine again. The store process ends itself
when the worker is gone (:func:`storage.store_process.watch_parent`).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from gatewatch.events import Decision, Detection
from gatewatch.settings import GatewatchSettings
from storage import store_process
from storage.client import describe
from storage.writer import WriteResult
from streams import counters

log = logging.getLogger(__name__)
T = TypeVar("T")


class StoreNotReady(RuntimeError):
    """The store is not open (start-up not finished, or shut down)."""


class StoreProcessLost(RuntimeError):
    """The store process died during a call; the next call starts a new one."""


class Store:
    """Async facade over the store; every call runs in the store process, in order.

    :meth:`open` raises :class:`storage.client.StorageError` if the engine cannot
    be opened (e.g. another process holds the chDB directory).
    """

    def __init__(self, settings: GatewatchSettings) -> None:
        self.settings = settings
        self._executor: ProcessPoolExecutor | None = None
        self._open = False
        self._wanted = False      # open() succeeded once and close() was not called
        self._opening = asyncio.Lock()
        self.applied_migrations: list[str] = []

    @property
    def ready(self) -> bool:
        """True once the store is open, migrated and warmed."""
        return self._open

    def describe(self) -> dict[str, Any]:
        """Engine and location (no secrets), and the store process's PID (``pid``, None
        when there is none)."""
        return describe(self.settings) | {"pid": self.pid}

    @property
    def pid(self) -> int | None:
        """PID of the store process, None when there is none (read from the pool's
        ``_processes``, the only place ``concurrent.futures`` keeps it)."""
        processes = getattr(self._executor, "_processes", None) or {}
        return next(iter(processes), None)

    async def open(self) -> None:
        """Start the store process, open the engine in it, apply migrations and the
        retention settings (:mod:`storage.retention`), warm it with a first query.
        Idempotent."""
        await self._ensure_open()
        self._wanted = True

    async def _ensure_open(self) -> None:
        async with self._opening:
            if self._open:
                return
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                    initializer=store_process.watch_parent, initargs=(os.getpid(),))
            applied, changes = await self._run(store_process.open_engine, self.settings)
            self._open = True
            self.applied_migrations += applied
            for change in changes:
                log.info("retention: %s", change)
            log.info("store open in process %s (%s); migrations applied now: %s",
                     self.pid, self.describe(), applied or "none")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        executor = self._executor
        assert executor is not None
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        except BrokenProcessPool as exc:
            self._lost(executor)
            raise StoreProcessLost(f"the store process died ({exc}); the next call starts a new one") from exc

    def _lost(self, executor: ProcessPoolExecutor) -> None:
        """Forget the pool of a dead store process — once, however many calls it failed, and
        never a newer pool that a later call has started since."""
        if executor is not self._executor:
            return
        counters.incr("store_process_restarts")
        log.error("the store process died; a new one starts with the next store call")
        self._executor, self._open = None, False
        executor.shutdown(wait=False, cancel_futures=True)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if not self._open:
            if not self._wanted:
                raise StoreNotReady("store is not open")
            await self._ensure_open()   # the store process died: start a new one
        return await self._run(fn, *args)

    async def close(self) -> None:
        """Close the engine and stop the store process. Idempotent."""
        self._wanted = False
        if self._executor is None:
            return
        if self._open:
            self._open = False
            try:
                await self._run(store_process.close_engine)
            except StoreProcessLost:
                pass
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def write_requests(self, raws: Sequence[bytes]) -> WriteResult:
        """Insert a batch of request events given as their JSON (see
        :func:`storage.store_process.insert_requests`)."""
        return await self._call(store_process.insert_requests, list(raws))

    async def write_detections(self, detections: Sequence[Detection]) -> WriteResult:
        """Insert a batch of detections."""
        return await self._call(store_process.insert_detections, list(detections))

    async def write_decisions(self, decisions: Sequence[Decision]) -> WriteResult:
        """Insert a batch of decisions."""
        return await self._call(store_process.insert_decisions, list(decisions))

    async def query(self, name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run a named query (see :func:`storage.queries.run_query`) in the store process."""
        return await self._call(store_process.query, name, dict(params) if params is not None else None)

    async def query_last(self, name: str, span_s: float, timeout_s: float,
                         now: datetime | None = None, params: Mapping[str, Any] | None = None) -> list[list[Any]]:
        """The rows of named query ``name`` over the ``span_s`` seconds before ``now``
        (default: the current time; its ``since``/``until`` parameters, with ``params``),
        waiting at most ``timeout_s`` seconds (``asyncio.TimeoutError`` beyond; store errors
        propagate)."""
        until = now or datetime.now(timezone.utc)
        window = {"since": (until - timedelta(seconds=span_s)).isoformat(), "until": until.isoformat()}
        return (await asyncio.wait_for(self.query(name, {**(params or {}), **window}), timeout_s))["rows"]
