"""The store's engine in a process of its own: what the worker's store process runs.

The worker (:class:`streams.store.Store`) starts one child process and runs
every store call in it, one at a time: open (migrations, retention settings,
a warm-up query), batch inserts, the named read queries of the web API. Each
function below is called in that child, on its module-level client.

Why a process and not a thread: chDB holds the GIL for the whole of a query,
and a typed insert builds its columns in Python. Measured here with
``bench/pipeline.py``'s traffic: a thread inserting 5,000-row batches as
fast as it could took 26 % of the interpreter away from the event loop
(~4 µs of GIL time per stored row, for a typed insert and for JSONEachRow
alike), so detection and storage competed for one core. In its own process
the store uses the second core, and the worker sends it the events' raw JSON
(one bytes object per event: pickled with a copy, not per field), which the
child parses with the same schema (:func:`gatewatch.events.parse_request_event`).

One process owns a chDB data directory (DESIGN.md), so the child is its only
user; the worker itself never opens the engine.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from clickhouse_connect.driver.client import Client

from gatewatch.events import Decision, Detection, MalformedRecord, parse_request_event
from gatewatch.settings import GatewatchSettings
from storage.client import StorageError, get_client
from storage.migrations import migrate
from storage.queries import run_query
from storage.retention import apply_retention
from storage.writer import WriteResult, write_decisions, write_detections, write_requests

log = logging.getLogger(__name__)
_client: Client | None = None

#: Seconds between the store process's checks that the worker is still alive.
PARENT_CHECK_S = 0.2
#: Seconds :func:`open_engine` waits for a chDB directory another process still holds
#: (the store process of a worker that was just killed exits within PARENT_CHECK_S).
LOCK_WAIT_S = 5.0


class EngineClosed(RuntimeError):
    """A call reached the store process before :func:`open_engine` (or after :func:`close_engine`)."""


def watch_parent(parent_pid: int) -> None:
    """Start a daemon thread that ends this process once ``parent_pid`` (the worker) is
    gone — a worker killed with SIGKILL cannot stop its store process, which would keep
    the chDB directory locked for the next worker. Called once in the child (the
    pool's initializer)."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)
    threading.Thread(target=watch, name="gatewatch-store-parent-watch", daemon=True).start()


def open_engine(settings: GatewatchSettings) -> tuple[list[str], list[str]]:
    """Open the engine of ``settings``, apply the migrations and retention settings, warm
    it with a first query; ``(migrations applied now, retention changes)``. Waits up to
    :data:`LOCK_WAIT_S` for a chDB directory still held by another process, then raises
    :class:`storage.client.StorageError`. Idempotent."""
    global _client
    if _client is not None:
        return [], []
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            client = get_client(settings)
            break
        except StorageError as exc:
            if settings.clickhouse_url or "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    applied = migrate(client)
    changes = list(apply_retention(client, settings))
    run_query(client, "table_counts")  # warm-up: first query pays the engine's start costs
    _client = client
    return applied, changes


def close_engine() -> None:
    """Close the client. Idempotent."""
    global _client
    client, _client = _client, None
    if client is not None:
        client.close()


def _client_or_raise() -> Client:
    if _client is None:
        raise EngineClosed("the store engine is not open")
    return _client


def insert_requests(raws: Sequence[bytes]) -> WriteResult:
    """Parse and insert a batch of request events given as their JSON (see
    :func:`storage.writer.write_requests`); a value that is not a request event is
    rejected (``("?", reason)``) like a row the table cannot take."""
    events = []
    rejected: list[tuple[str, str]] = []
    for raw in raws:
        try:
            events.append(parse_request_event(raw))
        except MalformedRecord as exc:
            rejected.append(("?", str(exc)[:200]))
    result = write_requests(_client_or_raise(), events)
    result.rejected[:0] = rejected
    return result


def insert_detections(detections: Sequence[Detection]) -> WriteResult:
    """Insert a batch of detections."""
    return write_detections(_client_or_raise(), detections)


def insert_decisions(decisions: Sequence[Decision]) -> WriteResult:
    """Insert a batch of decisions."""
    return write_decisions(_client_or_raise(), decisions)


def query(name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run a named query (:func:`storage.queries.run_query`)."""
    return run_query(_client_or_raise(), name, params)
