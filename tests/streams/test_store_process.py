"""The worker's store process (streams/store.py, storage/store_process.py) on real
processes: a real worker on a real Tansu broker with the embedded chDB engine in
its store process.

* SIGKILL of the store process under traffic: the batches in flight are spooled,
  a new store process opens the engine, and every request is stored once.
* SIGKILL of the worker: its store process ends by itself, so the chDB directory
  is free for the next worker, which starts on it and still holds what was stored.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gatewatch.events import RequestEvent, new_id
from gatewatch.netutil import free_port
from gatewatch.settings import GatewatchSettings
from streams import counters
from streams.store import Store, StoreProcessLost
from worker_harness import Worker, kill, running_worker, send_requests, wait_for


@pytest.fixture
def worker_settings(settings: GatewatchSettings) -> GatewatchSettings:
    return settings.model_copy(update={"worker_web_port": free_port(), "sink_batch_within_s": 0.1,
                                       "commit_interval_s": 0.2})


def _events(n: int, first: int = 0) -> list[RequestEvent]:
    t0 = datetime.now(timezone.utc).replace(microsecond=0)
    return [RequestEvent(event_id=new_id(), ts=t0 + timedelta(milliseconds=i), client_ip=f"198.51.100.{i % 50}",
                         method="GET", host="api.example", path=f"/orders/{i}", route="/orders/{id}",
                         status=200, latency_ms=5.0) for i in range(first, first + n)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has not been reaped by its parent yet but holds nothing.
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def _distinct_requests(worker: Worker) -> int:
    """Distinct event ids in ``requests`` (the worker's ``table_counts`` query)."""
    return dict(worker.query("table_counts")["rows"])["requests"]


def test_a_killed_store_process_is_replaced_and_nothing_is_lost(worker_settings: GatewatchSettings,
                                                                tmp_path: Path) -> None:
    s = worker_settings
    first, second = _events(300), _events(300, first=300)
    with running_worker(s, tmp_path) as worker:
        pid = worker.health()["store"]["pid"]
        assert pid and pid != worker.proc.pid and _alive(pid)
        send_requests(s, first)
        wait_for(lambda: worker.health()["counters"].get("stored_requests", 0) >= 300, 30, "first batch stored")
        os.kill(pid, signal.SIGKILL)
        send_requests(s, second)   # the first write after the kill fails and is spooled
        health = wait_for(lambda: (h := worker.health())["counters"].get("store_process_restarts", 0) >= 1
                          and h["store_open"] and h["store"]["pid"] not in (None, pid) and h, 60,
                          "a new store process")
        assert not _alive(pid)
        wait_for(lambda: worker.health()["counters"].get("stored_requests", 0) >= 600
                 and worker.health()["store_spool_bytes"] == 0, 60, "every request stored, spool empty")
        assert _distinct_requests(worker) == 600
        counters = worker.health()["counters"]
        assert counters.get("store_process_restarts") == 1 and health["counters"]["store_process_restarts"] == 1
        assert counters.get("spooled_requests", 0) > 0   # the batch the dead process failed went to the spool


def test_the_store_process_ends_with_a_killed_worker(worker_settings: GatewatchSettings, tmp_path: Path) -> None:
    s = worker_settings
    worker = Worker(s, tmp_path)
    worker.start()
    try:
        pid = worker.health()["store"]["pid"]
        send_requests(s, _events(50))
        wait_for(lambda: worker.health()["counters"].get("stored_requests", 0) >= 50, 30, "events stored")
        kill(worker)
        deadline = time.monotonic() + 5.0
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), "the store process outlived its worker"
    finally:
        if worker.proc is not None and worker.proc.poll() is None:
            kill(worker)
    # The next worker opens the same chDB directory and reads what the first stored.
    with running_worker(s, tmp_path) as again:
        assert _distinct_requests(again) == 50


def test_calls_failed_by_one_dead_process_start_one_new_process(settings: GatewatchSettings) -> None:
    """In process: a Store on the real engine; its store process is killed while two calls
    are in it (one running, one queued: each a 5 s sleep sent the way every store call is,
    so neither can finish first). Both fail, one restart is counted, and the next call
    works on a new process."""
    async def scenario() -> None:
        store = Store(settings)
        await store.open()
        try:
            pid = store.pid
            before = counters.snapshot().get("store_process_restarts", 0)
            calls = [asyncio.ensure_future(store._run(time.sleep, 5.0)) for _ in range(2)]
            await asyncio.sleep(0.5)   # both handed to the store process's pool
            os.kill(pid, signal.SIGKILL)
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(r, StoreProcessLost) for r in results), results
            assert counters.snapshot().get("store_process_restarts", 0) - before == 1
            rows = dict((await store.query("table_counts"))["rows"])
            assert rows["requests"] == 0 and store.pid not in (None, pid) and store.ready
        finally:
            await store.close()
        assert store.pid is None and not store.ready
    asyncio.run(scenario())
