"""The gateway on its minimal master (``python -m inline.serve``), as real processes."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from gatewatch.commands import serve_command
from gatewatch.keys import add_key
from gatewatch.netutil import free_port, wait_for_port
from gatewatch.settings import GatewatchSettings


def start(settings: GatewatchSettings, reuse_port: bool = False) -> subprocess.Popen:
    return subprocess.Popen(serve_command(settings, reuse_port), env=os.environ | settings.to_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    return out


@pytest.fixture
def gw_settings(settings: GatewatchSettings, sample_api: str, tmp_path: Path) -> tuple[GatewatchSettings, str]:
    raw = add_key(tmp_path / "keys.toml", "key_serve", owner="o")
    s = settings.model_copy(update={"upstream": sample_api, "listen_port": free_port(),
                                    "keys_file": tmp_path / "keys.toml"})
    return s, raw


def test_minimal_master_runs_the_gateway_policy(gw_settings) -> None:
    s, raw = gw_settings
    proc = start(s)
    try:
        wait_for_port(s.listen_host, s.listen_port, timeout_s=20)
        base = f"http://{s.listen_host}:{s.listen_port}"
        assert httpx.get(f"{base}/health").status_code == 200  # public route
        denied = httpx.get(f"{base}/users/1")
        assert denied.status_code == 401 and denied.headers["x-request-id"]
        # The key passes the gateway; the sample API then wants its own session: 401 from upstream.
        upstream = httpx.get(f"{base}/users/1", headers={"X-API-Key": raw})
        assert upstream.status_code == 401 and upstream.json() == {"error": "login required"}
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    assert "Traceback" not in out


def test_bad_option_is_refused_at_start(gw_settings) -> None:
    s, _ = gw_settings
    proc = subprocess.Popen(serve_command(s) + ["--set", "gatewatch_ip_rate_limit=fast"],
                            env=os.environ | s.to_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "gatewatch_ip_rate_limit" in out


def test_reuse_port_lets_processes_share_one_port(gw_settings) -> None:
    s, _ = gw_settings
    first, second = start(s, reuse_port=True), None
    try:
        wait_for_port(s.listen_host, s.listen_port, timeout_s=20)
        second = start(s, reuse_port=True)
        base = f"http://{s.listen_host}:{s.listen_port}"
        # Both bound the port; with one stopped, the other still answers.
        for _ in range(50):
            assert httpx.get(f"{base}/health").status_code == 200
        stop(first)
        assert second.poll() is None
        wait_for_port(s.listen_host, s.listen_port, timeout_s=20)  # second may still be starting
        for _ in range(20):
            assert httpx.get(f"{base}/health").status_code == 200
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                stop(proc)
