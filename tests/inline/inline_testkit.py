"""Helpers for the inline tests: drive flows through addons, a tiny upstream, a real mitmdump.

Not a conftest (its name would clash with other test folders'); test modules
import it directly (pytest puts this folder on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from mitmproxy import eventsequence, http
from mitmproxy import flow as mflow
from mitmproxy.test import taddons, tflow, tutils

from gatewatch.commands import gateway_command
from gatewatch.netutil import wait_for_port
from gatewatch.settings import GatewatchSettings


def make_flow(path: str = "/users/42", method: str = "GET", headers: dict[str, str] | None = None,
              body: bytes = b"", peer: str = "127.0.0.1") -> http.HTTPFlow:
    """A live request-only flow from ``peer`` (no response yet)."""
    req = tutils.treq(method=method.encode(), path=path.encode("utf-8", "surrogateescape"),
                      headers=http.Headers(), content=body)
    for name, value in (headers or {}).items():
        req.headers[name] = value
    flow = tflow.tflow(req=req)
    flow.client_conn.peername = (peer, 40000)
    return flow


async def run_flow(tctx: taddons.context, addons: Sequence[object], flow: http.HTTPFlow,
                   upstream: http.Response | None = None, upstream_error: str | None = None) -> http.HTTPFlow:
    """Run ``flow`` through ``addons`` hook by hook, in chain order, as mitmproxy does.

    If no addon answers in ``request``, the upstream answers: ``upstream``
    (default: 200 ``{"ok":true}``) 12 ms later, or, with ``upstream_error``,
    the flow fails with that error and the ``error`` hooks run. Exceptions in
    hooks propagate (mitmproxy itself would only log them).
    """
    for event in eventsequence.iterate(flow):
        for addon in addons:
            await tctx.master.addons.invoke_addon(addon, event)
        if event.name == "request" and flow.response is None and flow.error is None:
            if upstream_error is not None:
                flow.error = mflow.Error(upstream_error)
            else:
                flow.response = upstream or http.Response.make(200, b'{"ok":true}',
                                                               {"Content-Type": "application/json"})
                flow.response.timestamp_start = flow.request.timestamp_end + 0.012
    return flow


class _Handler(BaseHTTPRequestHandler):
    """``POST /login`` answers 200 when the JSON password is "right", else 401;
    everything else answers 200 with a small JSON body (echoing the path and
    the ``X-Request-Id`` the gateway added)."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle's algorithm and
    # delayed ACKs every response would take ~40 ms.
    disable_nagle_algorithm = True

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer(200, {"ok": True, "path": self.path, "request_id": self.headers.get("X-Request-Id")})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path.split("?")[0] == "/login":
            try:
                ok = json.loads(body).get("password") == "right"
            except ValueError:
                self._answer(400, {"error": "bad json"})
                return
            self._answer(200 if ok else 401, {"login": "ok" if ok else "failed"})
        else:
            self._answer(200, {"ok": True, "path": self.path})

    def log_message(self, *args) -> None:
        pass


@contextmanager
def upstream_server() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 in a thread; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def listening_process(cmd: list[str], log_path: Path, port: int, what: str, env: dict[str, str] | None = None,
                      host: str = "127.0.0.1", timeout_s: float = 20) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` (output to ``log_path``) until it listens on ``host:port``; yield it, then
    stop it (SIGTERM, SIGKILL after 15 s). Fails with its log if it does not listen in time."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for_port(host, port, timeout_s=timeout_s)
        except TimeoutError:
            raise AssertionError(f"{what} did not start (rc={proc.poll()}):\n{log_path.read_text()}") from None
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def gateway_env(settings: GatewatchSettings) -> dict[str, str]:
    """The environment a test gateway runs with: settings as ``GATEWATCH_*``, unbuffered logs."""
    return {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}


@contextmanager
def mitmdump(settings: GatewatchSettings, log_path: Path, *extra: str) -> Iterator[subprocess.Popen]:
    """A real mitmdump from :func:`gatewatch.commands.gateway_command`, settings passed
    as ``GATEWATCH_*`` env vars; waits for its port and stops it (SIGTERM) afterwards."""
    with listening_process([*gateway_command(settings), *extra], log_path, settings.listen_port, "mitmdump",
                           gateway_env(settings), settings.listen_host) as proc:
        yield proc
