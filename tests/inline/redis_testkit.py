"""A real ``redis-server`` (Debian package ``redis-server``, ``make system-deps``) for tests.

Import the fixture into a test module (``from redis_testkit import redis_server``).
The server runs on a free loopback port with no persistence (``--save ''
--appendonly no``); a missing binary fails the test loudly, nothing skips.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gatewatch.netutil import free_port, wait_for_port


@dataclass
class RedisServer:
    """A running redis-server: ``url`` (``redis://127.0.0.1:PORT/0``), its process and log."""

    url: str
    port: int
    proc: subprocess.Popen
    log: Path

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections but answers nothing (a hung Redis)."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, as a crash: connections are reset, the port refuses."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)


def start_redis(log: Path) -> RedisServer:
    """Start redis-server on a free loopback port and wait until it listens.
    Raises ``RuntimeError`` if the binary is missing or it does not start."""
    binary = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists()
                                              else None)
    if binary is None:
        raise RuntimeError("redis-server not found: install the Debian package "
                           "redis-server (make system-deps)")
    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--protected-mode", "yes", "--dir", str(log.parent)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", port, timeout_s=10)
    except TimeoutError:
        proc.kill()
        raise RuntimeError(f"redis-server did not start (rc={proc.poll()}):\n{log.read_text()}") from None
    return RedisServer(f"redis://127.0.0.1:{port}/0", port, proc, log)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server for one test; killed afterwards."""
    server = start_redis(tmp_path / "redis.log")
    try:
        yield server
    finally:
        server.kill()
