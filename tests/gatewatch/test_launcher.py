"""``gatewatch up`` as a real process: it starts every part, stops them all on
SIGINT/SIGTERM, and when one part dies it names it and stops the others."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gatewatch.keys import add_key
from gatewatch.netutil import free_port

GATEWATCH = str(Path(sys.executable).parent / "gatewatch")


def start_up(tmp_path: Path, upstream: str) -> tuple[subprocess.Popen, dict[str, int], list[str]]:
    """Start ``gatewatch up`` and read its start-up lines until the gateway is ready."""
    add_key(tmp_path / "keys.toml", "key_t", owner="t")
    env = os.environ | {"GATEWATCH_KEYS_FILE": str(tmp_path / "keys.toml"), "COLUMNS": "200"}
    proc = subprocess.Popen([GATEWATCH, "up", "--upstream", upstream, "--port", str(free_port()),
                             "--run-dir", str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    deadline = time.monotonic() + 90
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "gateway ready" in line:
            break
    pids = {m.group(1): int(m.group(2)) for m in (re.search(r"^\s+(\w+)\s+\S+\s+pid (\d+)", l)
                                                   for l in lines) if m}
    assert set(pids) == {"broker", "worker", "gateway"}, "".join(lines)
    return proc, pids, lines


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_every_part(tmp_path: Path, sample_api: str, sig: signal.Signals) -> None:
    proc, pids, _ = start_up(tmp_path, sample_api)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert all(gone(pid) for pid in pids.values()), pids
    assert (tmp_path / "run" / "gateway.log").exists() and (tmp_path / "run" / "worker.log").exists()


def test_dead_part_is_named_and_the_rest_stopped(tmp_path: Path, sample_api: str) -> None:
    proc, pids, _ = start_up(tmp_path, sample_api)
    os.kill(pids["broker"], signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "broker exited with code -9" in out
    assert all(gone(pid) for pid in pids.values()), pids


def test_gateway_workers_share_one_port(tmp_path: Path, sample_api: str, settings) -> None:
    """`gatewatch gateway --workers 2`: two processes on one port, each with its metrics."""
    import httpx

    add_key(tmp_path / "keys.toml", "key_t", owner="t")
    port = free_port()
    env = os.environ | settings.to_env() | {"GATEWATCH_KEYS_FILE": str(tmp_path / "keys.toml"),
                                            "COLUMNS": "200"}
    proc = subprocess.Popen([GATEWATCH, "gateway", "--upstream", sample_api, "--port", str(port),
                             "--workers", "2", "--run-dir", str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "ready" in line:
            break
    out = "".join(lines)
    pids = [int(p) for p in re.findall(r"gateway-\d\s+\S+\s+pid (\d+)", out)]
    redis_pid = [int(p) for p in re.findall(r"redis\s+\S+\s+pid (\d+)", out)]
    assert len(redis_pid) == 1, "several gateway processes share rate-limit state in a redis-server"
    for pid in pids:   # and the used challenge solutions, in the same one
        environ = dict(item.split("=", 1) for item in
                       Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
        assert environ["GATEWATCH_CHALLENGE_REDIS_URL"] == environ["GATEWATCH_RATE_LIMIT_REDIS_URL"] != "", out
    metrics = re.findall(r"metrics\s+(\S+)", out)
    try:
        assert len(pids) == 2 and len(metrics) == 2, out
        for _ in range(20):
            assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        served = 0
        for url in metrics:
            text = httpx.get(url).text
            served += sum(float(m) for m in re.findall(r'^gatewatch_requests_total\{[^}]*\} ([\d.e+]+)$', text, re.M))
        assert served == 20, "the two processes together answered every request"
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + rest
    assert all(gone(pid) for pid in pids + redis_pid)
