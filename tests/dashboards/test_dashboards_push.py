"""``gatewatch dashboards push`` against a stand-in for Grafana's dashboard API.

A mock, and only because no Grafana server can run on this machine (no
package or binary of it can be installed here): a small real HTTP server on
127.0.0.1, in a thread of the test process, imitates ``POST /api/dashboards/db``
as Grafana documents it (Bearer token, ``{"dashboard", "overwrite", "folderUid",
"message"}`` in, ``{"id", "uid", "url", "status", "version", "slug"}`` out,
401 ``{"message": "Unauthorized"}`` for a bad token). The client side is the
real ``grafana-client`` over real HTTP, and the CLI runs as a real process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dashboards import generate
from dashboards.push import MESSAGE, PushError, push
from gatewatch.netutil import free_port

GATEWATCH = str(Path(sys.executable).parent / "gatewatch")
TOKEN = "glsa_test_token"


class FakeGrafana(ThreadingHTTPServer):
    """Records every request; answers like Grafana's dashboard API."""

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.received: list[dict[str, Any]] = []
        self.versions: dict[str, int] = {}
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: FakeGrafana

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        with self.server.lock:
            self.server.received.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                         "content_type": self.headers.get("Content-Type"), "body": body})
        if self.path != "/api/dashboards/db":
            return self._answer(404, {"message": "Not found"})
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._answer(401, {"message": "Unauthorized"})
        board = body.get("dashboard") or {}
        if not board.get("title") or not board.get("uid"):
            return self._answer(400, {"message": "Dashboard title cannot be empty", "status": "bad-request"})
        with self.server.lock:
            version = self.server.versions.get(board["uid"], 0) + 1
            self.server.versions[board["uid"]] = version
        slug = board["title"].lower().replace(" ", "-")
        self._answer(200, {"id": version, "uid": board["uid"], "url": f"/d/{board['uid']}/{slug}",
                           "status": "success", "version": version, "slug": slug})


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    server = FakeGrafana(free_port())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def url_of(server: FakeGrafana) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_cli_push_uploads_every_dashboard(grafana: FakeGrafana) -> None:
    proc = subprocess.run([GATEWATCH, "dashboards", "push", "--url", url_of(grafana), "--token", TOKEN,
                           "--folder-uid", "gatewatch"], capture_output=True, text=True, timeout=60,
                          env=os.environ | {"COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = {json.loads(text)["uid"]: json.loads(text) for name, text in generate.render_all().items()
                if name != "alerts"}
    assert [r["path"] for r in grafana.received] == ["/api/dashboards/db"] * len(expected)
    for request in grafana.received:
        assert request["auth"] == f"Bearer {TOKEN}"
        assert request["content_type"].startswith("application/json")
        body = request["body"]
        assert (body["overwrite"], body["folderUid"], body["message"]) == (True, "gatewatch", MESSAGE)
        board = body["dashboard"]
        assert board["id"] is None  # matched by uid, so a push overwrites instead of duplicating
        assert {k: v for k, v in board.items() if k != "id"} == expected[board["uid"]]
    for uid in expected:
        assert f"success: {uid} version 1 {url_of(grafana)}/d/{uid}/" in proc.stdout


def test_push_again_overwrites_by_uid(grafana: FakeGrafana) -> None:
    first = push(url_of(grafana), TOKEN)
    second = push(url_of(grafana), TOKEN)
    assert [r.uid for r in first] == [r.uid for r in second] == [
        f"gatewatch-{stem}" for stem in generate.DASHBOARDS]
    assert {r.version for r in first} == {1} and {r.version for r in second} == {2}
    assert all("folderUid" not in r["body"] for r in grafana.received)


def test_bad_token_fails_loudly(grafana: FakeGrafana) -> None:
    with pytest.raises(PushError, match=r"refused dashboard overview .*HTTP 401.*Unauthorized"):
        push(url_of(grafana), "wrong")
    proc = subprocess.run([GATEWATCH, "dashboards", "push", "--url", url_of(grafana), "--token", "wrong"],
                          capture_output=True, text=True, timeout=60, env=os.environ | {"COLUMNS": "200"})
    assert proc.returncode == 1 and "HTTP 401" in proc.stdout


def test_unreachable_grafana_fails_loudly() -> None:
    with pytest.raises(PushError, match="cannot upload dashboard overview"):
        push(f"http://127.0.0.1:{free_port()}", TOKEN, timeout_s=2)
