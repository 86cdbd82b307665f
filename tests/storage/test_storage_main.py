"""``python -m storage migrate`` (the production stack's one-shot ``migrate`` service) as a process
on a real chDB directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gatewatch.netutil import free_port
from storage.migrations import load_migrations


def run(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "storage", "migrate"], env=os.environ | env,
                          capture_output=True, text=True, timeout=120)


def test_migrate_applies_everything_once_with_the_retention(tmp_path: Path) -> None:
    env = {"GATEWATCH_CHDB_PATH": str(tmp_path / "chdb"), "GATEWATCH_REQUESTS_TTL_DAYS": "30"}
    first = run(env)
    assert first.returncode == 0, first.stdout + first.stderr
    names = ", ".join(f"{m.version:03d}_{m.name}" for m in load_migrations())
    assert f"migrations applied: {names};" in first.stdout
    assert "requests: none -> toDateTime(ts) + toIntervalDay(30)" in first.stdout
    again = run(env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "migrations applied: none; retention changed: none" in again.stdout


def test_an_unreachable_server_exits_1_with_the_reason(tmp_path: Path) -> None:
    failed = run({"GATEWATCH_CLICKHOUSE_URL": f"http://127.0.0.1:{free_port()}/gatewatch"})
    assert failed.returncode == 1
    assert "cannot open the store" in failed.stderr
