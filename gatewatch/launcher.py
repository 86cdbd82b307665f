"""The local stack: broker, worker and gateway (and optionally the sample API) as supervised processes.

``gatewatch up`` and ``gatewatch demo`` use :class:`Stack`. Every part is a
child process in its own session (so a terminal's Ctrl-C reaches only the
supervisor, which then stops the parts in order, by PID), logs to
``<run_dir>/<part>.log``, and is watched: when one part dies the supervisor
names it, shows the end of its log and stops the others.

Start order: sample API → broker (Tansu, topics created) → worker (waits
until its store is open and it owns partitions) → gateway. Stop order is the
reverse of what data needs: gateway first (it flushes its last events to the
broker), then the worker (its sink flushes to ClickHouse), then the broker.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from gatewatch.admin_auth import auth_headers
from gatewatch.broker import create_topics, tansu_command
from gatewatch.commands import serve_command, worker_command
from gatewatch.netutil import free_port, wait_for_port
from gatewatch.settings import GatewatchSettings
from gatewatch.stack_info import write_stack_info

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 15.0
#: Stop order by part kind ("gateway-2" is a gateway, "sample-api" a sample).
_STOP_ORDER = ["gateway", "redis", "worker", "broker", "sample"]


class StackError(RuntimeError):
    """A part failed to start or died; the message names the part and its log."""


@dataclass
class Part:
    """One supervised child process."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    address: str

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines of the part's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Stack:
    """The local stack for one run directory.

    ``settings`` are completed at :meth:`start` with free loopback ports for the
    broker, the worker's read API and each gateway's metrics, and
    ``run_dir/chdb`` for the store; ``settings.listen_port`` is kept (0 picks
    a free port).

    ``gateway_workers`` gateway processes run on the minimal master
    (:mod:`inline.serve`); with more than one they share the listening port
    through ``SO_REUSEPORT`` and each has its own metrics port and event spool.
    Several processes share rate-limit state and used challenge solutions in Redis:
    the configured ``rate_limit_redis_url``, or a ``redis-server`` started here (also
    the ``challenge_redis_url`` unless one is configured).

    ``sample_api_args`` are further command-line options of the sample API
    (see :mod:`gatewatch.sample_api`, e.g. ``["--users", "400"]``).
    """

    settings: GatewatchSettings
    run_dir: Path
    sample_api: bool = False
    sample_api_args: list[str] = field(default_factory=list)
    gateway_workers: int = 1
    parts: list[Part] = field(default_factory=list)
    metrics_urls: list[str] = field(default_factory=list)

    @property
    def gateway_url(self) -> str:
        """Base URL clients use: ``http://listen_host:listen_port``."""
        return f"http://{self.settings.listen_host}:{self.settings.listen_port}"

    @property
    def worker_url(self) -> str:
        """Base URL of the worker's read API."""
        return f"http://{self.settings.worker_web_host}:{self.settings.worker_web_port}"

    def _spawn(self, name: str, argv: list[str], address: str) -> Part:
        log_path = self.run_dir / f"{name}.log"
        env = os.environ | self.settings.to_env()
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, cwd=self.run_dir)
        part = Part(name, proc, log_path, address)
        self.parts.append(part)
        return part

    def _wait_port(self, part: Part, host: str, port: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self._check(part)
            try:
                wait_for_port(host, port, timeout_s=0.5)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise StackError(f"{part.name} did not listen on {host}:{port} in {timeout_s:.0f} s; "
                                     f"log {part.log_path}:\n{part.log_tail()}") from None

    def _check(self, part: Part) -> None:
        if not part.alive():
            raise StackError(f"{part.name} exited with code {part.proc.returncode} during start-up; "
                             f"log {part.log_path}:\n{part.log_tail()}")

    def _wait_worker_ready(self, part: Part, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"{self.worker_url}/gatewatch/health/"
        while time.monotonic() < deadline:
            self._check(part)
            try:
                if httpx.get(url, headers=auth_headers(self.settings.admin_token), timeout=1.0).json().get("ready"):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        raise StackError(f"worker not ready after {timeout_s:.0f} s; log {part.log_path}:\n{part.log_tail()}")

    def start_gateways_only(self, timeout_s: float = 30.0) -> None:
        """Start only the gateway processes, against the broker named in the settings
        (production: Kafka and the workers run elsewhere). Raises :class:`StackError`."""
        self.run_dir = self.run_dir.resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.settings = self.settings.model_copy(update={
            "keys_file": Path(self.settings.keys_file).resolve()})
        try:
            self._start_gateways(timeout_s)
        except BaseException:
            self.stop()
            raise

    def start(self, timeout_s: float = 90.0) -> None:
        """Start every part and wait until each is ready.

        Raises :class:`StackError` (after stopping what started) if a part
        exits or is not ready within ``timeout_s`` seconds.
        """
        self.run_dir = self.run_dir.resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        host = "127.0.0.1"
        try:
            if self.sample_api:
                api_port = free_port()
                part = self._spawn("sample-api", [sys.executable, "-m", "gatewatch.sample_api",
                                                  "--port", str(api_port), *self.sample_api_args],
                                   f"http://{host}:{api_port}")
                self._wait_port(part, host, api_port, timeout_s)
                self.settings = self.settings.model_copy(update={"upstream": part.address})

            broker_port = free_port()
            part = self._spawn("broker", tansu_command(host, broker_port), f"{host}:{broker_port}")
            self._wait_port(part, host, broker_port, timeout_s)
            listen_port = self.settings.listen_port or free_port()
            self.settings = self.settings.model_copy(update={
                "bootstrap_servers": part.address,
                "worker_web_port": free_port(),
                "listen_port": listen_port,
                "chdb_path": self.run_dir / "chdb",
                "keys_file": Path(self.settings.keys_file).resolve(),
            })
            create_topics(self.settings)

            part = self._spawn("worker", worker_command(), self.worker_url)
            self._wait_worker_ready(part, timeout_s)

            self._start_gateways(timeout_s)
            write_stack_info(self.run_dir, self.settings, self.metrics_urls)
        except BaseException:
            self.stop()
            raise

    def part(self, name: str) -> Part:
        """The running part called ``name`` (``broker``, ``worker``, ``gateway``, ``sample-api``).
        Raises ``KeyError`` if there is none."""
        for part in self.parts:
            if part.name == name:
                return part
        raise KeyError(name)

    def restart_broker(self, timeout_s: float = 30.0) -> Part:
        """Start a new broker on the same address as the current one (killing it if it
        still runs) and create gatewatch's topics on it; return the new part.

        Tansu's ``memory://`` storage starts empty: topics, records, committed
        offsets and consumer groups of the old broker are gone. The gateway's
        producer reconnects and replays its spool, its decisions consumer resets
        to the new topic's beginning (offset out of range → earliest), and the
        worker's consumer group re-forms. Raises :class:`StackError` if the new
        broker does not listen within ``timeout_s``.
        """
        old = self.part("broker")
        if old.alive():
            old.proc.kill()
        old.proc.wait()
        self.parts.remove(old)
        host, _, port = old.address.rpartition(":")
        part = self._spawn("broker", tansu_command(host, int(port)), old.address)
        self._wait_port(part, host, int(port), timeout_s)
        create_topics(self.settings)
        return part

    def _start_shared_state(self, timeout_s: float) -> None:
        """With several gateway processes and no Redis configured, start a local
        ``redis-server`` (Debian package) so that they share rate-limit state; without
        the binary, each process keeps its own counts (a warning in the log). The
        same Redis keeps their used challenge solutions unless ``challenge_redis_url``
        names another."""
        if self.gateway_workers < 2:
            return
        url = self.settings.rate_limit_redis_url
        if not url:
            binary = shutil.which("redis-server")
            if binary is None:
                logger.warning("redis-server not found: %d gateway processes keep separate rate-limit "
                               "counts and used challenge solutions (each admits the full limit, and "
                               "a solution once per process)", self.gateway_workers)
                return
            port = free_port()
            part = self._spawn("redis", [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                         "--appendonly", "no"], f"redis://127.0.0.1:{port}/0")
            self._wait_port(part, "127.0.0.1", port, timeout_s)
            url = part.address
        self.settings = self.settings.model_copy(update={
            "rate_limit_redis_url": url, "challenge_redis_url": self.settings.challenge_redis_url or url})

    def _start_gateways(self, timeout_s: float) -> None:
        self._start_shared_state(timeout_s)
        s = self.settings
        for n in range(self.gateway_workers):
            name = "gateway" if self.gateway_workers == 1 else f"gateway-{n + 1}"
            admin_port = free_port()
            argv = serve_command(s, reuse_port=self.gateway_workers > 1) + [
                "--set", f"gatewatch_admin_port={admin_port}",
                "--set", f"gatewatch_spool_dir={self.run_dir / f'spool-{name}'}"]
            part = self._spawn(name, argv, self.gateway_url)
            self.metrics_urls.append(f"http://{s.admin_host}:{admin_port}/metrics")
            # With SO_REUSEPORT the shared port answers as soon as the first process
            # listens; each later one is ready once its own metrics port is up.
            if n == 0:
                self._wait_port(part, s.listen_host, s.listen_port, timeout_s)
            else:
                self._wait_port(part, s.admin_host, admin_port, timeout_s)

    def dead_part(self) -> Part | None:
        """The first part that is no longer running, if any."""
        return next((p for p in self.parts if not p.alive()), None)

    def stop(self) -> None:
        """Stop the parts in order — gateway, worker, broker, sample API — each with
        SIGTERM, then SIGKILL after STOP_TIMEOUT_S seconds."""
        for part in sorted(self.parts, key=lambda p: _STOP_ORDER.index(p.name.partition("-")[0])):
            if part.alive():
                part.proc.send_signal(signal.SIGTERM)
                try:
                    part.proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    part.proc.kill()
                    part.proc.wait()
        self.parts.clear()
        self.metrics_urls.clear()

    def supervise(self, poll_s: float = 0.5) -> Part:
        """Block until a part dies, then stop everything and return that part.

        Wrap the call in :func:`signals_raise_interrupt` so that SIGTERM, like
        Ctrl-C, raises ``KeyboardInterrupt``; the parts are stopped either way.
        """
        try:
            while True:
                dead = self.dead_part()
                if dead is not None:
                    return dead
                time.sleep(poll_s)
        finally:
            self.stop()


@contextmanager
def signals_raise_interrupt() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise ``KeyboardInterrupt`` (so a supervisor
    stops its children by PID on either, then returns normally)."""
    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
