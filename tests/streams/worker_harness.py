"""A real worker process for the streams tests: start, wait until ready, read its API, stop.

The worker is started exactly as the launcher does: ``worker_command()`` with
``settings.to_env()`` added to the environment. Its cwd is a temporary
directory so that ``python -m streams`` never picks up ``tests/streams``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from gatewatch.admin_auth import auth_headers
from gatewatch.commands import worker_command
from gatewatch.events import RequestEvent, request_key
from gatewatch.settings import GatewatchSettings

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.1) -> T:
    """Call ``check`` until it returns something truthy; raise ``AssertionError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; last: {last!r}")


class Worker:
    """One ``python -m streams worker`` process on ``settings``."""

    def __init__(self, settings: GatewatchSettings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.log_path = workdir / "worker.log"
        self.proc: subprocess.Popen | None = None
        self.base = f"http://{settings.worker_web_host}:{settings.worker_web_port}"

    def start(self, timeout_s: float = 60.0) -> dict[str, Any]:
        env = os.environ | self.settings.to_env()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(worker_command(), env=env, cwd=self.workdir,
                                         stdout=log, stderr=subprocess.STDOUT)
        return wait_for(self._ready, timeout_s, "worker ready")

    def _ready(self) -> dict[str, Any] | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            health = self.get("/gatewatch/health/")[1]
        except OSError:
            return None
        return health if health.get("ready") else None

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"worker did not stop on SIGTERM:\n{self.log_tail()}") from None

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def get(self, path: str, params: dict[str, Any] | None = None) -> tuple[int, Any]:
        """GET ``path`` on the worker's web server (with the admin token, if the settings
        have one); returns ``(status, parsed JSON)``."""
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        request = urllib.request.Request(url, headers=auth_headers(self.settings.admin_token))
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    def query(self, name: str, **params: Any) -> dict[str, Any]:
        status, body = self.get(f"/gatewatch/query/{name}/", params)
        assert status == 200, (status, body)
        return body

    def health(self) -> dict[str, Any]:
        return self.get("/gatewatch/health/")[1]


@contextmanager
def running_worker(settings: GatewatchSettings, workdir: Path) -> Iterator[Worker]:
    """A started :class:`Worker`; stopped afterwards, and it must exit with 0."""
    worker = Worker(settings, workdir)
    try:
        worker.start()
        yield worker
    finally:
        rc = worker.stop()
        assert rc == 0, worker.log_tail()


def kill(worker: Worker) -> None:
    """SIGKILL the worker and wait for it to die."""
    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGKILL)
    assert worker.proc.wait(timeout=10) == -signal.SIGKILL


def wait_requests_committed(worker: Worker, n: int) -> None:
    """Return once ``n`` request events are stored and committed (offsets start at 0, so the
    committed offsets of all partitions add up to the messages handled)."""
    wait_for(lambda: (h := worker.health())["counters"].get("stored_requests", 0) >= n
             and h["requests_committed"] >= n, 30, f"{n} events stored and committed")


def wait_requests_stored(worker: Worker, n: int, what: str, timeout_s: float = 60) -> None:
    """Return once the store holds exactly ``n`` request rows (named query ``table_counts``)."""
    def stored() -> bool:
        rows = {r[0]: r[1] for r in worker.query("table_counts")["rows"]}
        return rows.get("requests") == n
    wait_for(stored, timeout_s, what)


def producer(settings: GatewatchSettings) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5)


def send_requests(settings: GatewatchSettings, events: list[RequestEvent]) -> None:
    """Produce ``events`` on the request topic keyed as the gateway keys them (``request_key``)."""
    p = producer(settings)
    for event in events:
        p.send(settings.topic_requests, key=request_key(event), value=event.to_json())
    p.flush()
    p.close()


def read_topic(settings: GatewatchSettings, topic: str, headers: bool = False) -> list[tuple[Any, ...]]:
    """Every ``(key, value)`` in ``topic`` so far, read from the beginning with no group
    (``(key, value, headers)`` with ``headers``).

    Reads up to the high-watermark reported with fetched records (Tansu's
    "latest offset" answer is wrong, see DESIGN.md).
    """
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                             fetch_max_wait_ms=20, consumer_timeout_ms=500)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        out = []
        idle_polls = 0
        while idle_polls < 3:
            batch = consumer.poll(timeout_ms=200)
            if not batch:
                idle_polls += 1
                continue
            idle_polls = 0
            for records in batch.values():
                out.extend((r.key, r.value, r.headers) if headers else (r.key, r.value) for r in records)
        return out
    finally:
        consumer.close()
