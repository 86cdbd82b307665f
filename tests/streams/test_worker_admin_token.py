"""The worker's read API behind the admin token, on a real worker process (broker, chDB).

Bound off loopback without ``admin_token`` the worker exits at start-up with
the reason. With a token, every route — gatewatch's read API and Faust's own
views, which show table contents — answers 401 without
``Authorization: Bearer <token>``; the library client and the CLI
(``gatewatch explain``) send the token from the settings.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gatewatch import decision_feed
from gatewatch.commands import worker_command
from gatewatch.netutil import free_port
from gatewatch.settings import GatewatchSettings
from gatewatch.stack_info import write_stack_info
from gatewatch.worker_api import WorkerApi, WorkerAuthError
from worker_harness import Worker

TOKEN = "worker-token-0123456789abcdef01234"


def test_exposed_worker_without_token_refuses_to_start(settings: GatewatchSettings, tmp_path: Path) -> None:
    s = settings.model_copy(update={"worker_web_host": "0.0.0.0", "worker_web_port": free_port()})
    done = subprocess.run(worker_command(), env=os.environ | s.to_env(), cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert ("gatewatch worker: the worker read API (worker_web_host) would listen on '0.0.0.0', not a loopback "
            "address, without a token") in done.stderr
    assert not (tmp_path / "chdb").exists() or not any((tmp_path / "chdb").iterdir())


@pytest.fixture
def worker(settings: GatewatchSettings, tmp_path: Path):
    s = settings.model_copy(update={"worker_web_host": "0.0.0.0", "worker_web_port": free_port(),
                                    "admin_token": TOKEN})
    w = Worker(s, tmp_path)
    try:
        w.start()          # the harness sends the token: ready means the guarded API answered
        yield w
    finally:
        assert w.stop() == 0, w.log_tail()
    assert TOKEN not in w.log_path.read_text()


def status(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


#: gatewatch's read API and Faust's own views (router, stats, tables, index).
ROUTES = ["/gatewatch/health/", "/gatewatch/query/table_counts/", "/router/", "/stats/", "/table/", "/"]


def test_every_route_needs_the_token(worker: Worker) -> None:
    for path in ROUTES:
        url = f"http://127.0.0.1:{worker.settings.worker_web_port}{path}"
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}):
            assert status(url, headers) == 401, (path, headers)
        assert status(url, {"Authorization": f"Bearer {TOKEN}"}) not in (401, 403), path


def test_clients_send_the_token(worker: Worker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = f"http://127.0.0.1:{worker.settings.worker_web_port}"
    assert "requests" in WorkerApi(base, token=TOKEN).table_counts()
    with pytest.raises(WorkerAuthError, match="admin_token"):
        WorkerApi(base).table_counts()

    # The CLI: `gatewatch explain` reads a manual decision from the topic and the store through the worker.
    decision = decision_feed.manual_decision("ip", "203.0.113.77", 600, "token test", "ban")
    decision_feed.publish(worker.settings, decision)
    monkeypatch.chdir(tmp_path)
    write_stack_info(tmp_path, worker.settings, [])
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWATCH_")} | {"COLUMNS": "200"}
    gatewatch = str(Path(sys.executable).parent / "gatewatch")
    argv = [gatewatch, "explain", "203.0.113.77", "--stack", str(tmp_path)]
    with_token = subprocess.run(argv, env=env | {"GATEWATCH_ADMIN_TOKEN": TOKEN}, capture_output=True, text=True,
                                timeout=120)
    assert with_token.returncode == 0, with_token.stdout + with_token.stderr
    assert "ban ip 203.0.113.77" in with_token.stdout and "store read through the worker" in with_token.stdout
    without = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert "admin_token (GATEWATCH_ADMIN_TOKEN) missing or wrong" in without.stdout, without.stdout
