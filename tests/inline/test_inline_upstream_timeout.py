"""An upstream that accepts connections and never answers: the gateway gives up after its
idle timeout instead of holding the client for mitmproxy's default 600 s. mitmproxy's
watchdog closes the client connection (no 504 is written). Not checked here: the event
and the circuit-breaker count of such a flow."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

import httpx

from gatewatch.commands import serve_command
from gatewatch.keys import add_key
from gatewatch.netutil import free_port, wait_for_port
from gatewatch.settings import GatewatchSettings


def hanging_upstream() -> tuple[socket.socket, int]:
    """A TCP server that accepts and then says nothing."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
    threading.Thread(target=accept, daemon=True).start()
    return server, server.getsockname()[1]


def test_hanging_upstream_is_cut_after_the_idle_timeout(settings: GatewatchSettings, tmp_path: Path) -> None:
    server, port = hanging_upstream()
    raw = add_key(tmp_path / "keys.toml", "key_t", owner="t")
    s = settings.model_copy(update={"upstream": f"http://127.0.0.1:{port}", "listen_port": free_port(),
                                    "keys_file": tmp_path / "keys.toml", "admin_port": 0,
                                    "spool_dir": tmp_path / "spool", "idle_timeout_s": 1.5})
    proc = subprocess.Popen(serve_command(s), env=os.environ | s.to_env())
    try:
        wait_for_port(s.listen_host, s.listen_port, timeout_s=20)
        try:
            resp = httpx.get(f"http://{s.listen_host}:{s.listen_port}/items/1", headers={"X-API-Key": raw},
                             timeout=30)
            answered = resp.status_code
        except httpx.RemoteProtocolError:
            answered = "closed"
        # Without the idle timeout this would wait 600 s (and hit httpx's 30 s timeout first).
        assert answered in (502, 504, "closed")
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        server.close()
