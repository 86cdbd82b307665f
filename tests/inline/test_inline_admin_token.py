"""The gateway's metrics admin server behind the admin token, on real gateway processes.

Bound off loopback without ``admin_token`` the gateway refuses to start (both
masters, with the reason); with a token every scrape needs
``Authorization: Bearer <token>`` (401 with a ``WWW-Authenticate`` challenge
otherwise) and the gateway serves traffic as usual.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from gatewatch.commands import gateway_command, serve_command
from gatewatch.netutil import free_port, wait_for_port
from gatewatch.settings import GatewatchSettings, load_settings
from inline_testkit import gateway_env, listening_process, upstream_server

TOKEN = "metrics-token-0123456789abcdef0123"


def exposed_settings(tmp_path: Path, **overrides) -> GatewatchSettings:
    (tmp_path / "keys.toml").touch()
    return load_settings(keys_file=tmp_path / "keys.toml", spool_dir=tmp_path / "spool", listen_port=free_port(),
                         admin_host="0.0.0.0", admin_port=free_port(), public_routes=["/*"],
                         bootstrap_servers="127.0.0.1:1", **overrides)


@pytest.mark.parametrize("master", ["serve", "mitmdump"])
def test_exposed_metrics_without_token_refuse_to_start(tmp_path: Path, master: str) -> None:
    s = exposed_settings(tmp_path)
    cmd = serve_command(s) if master == "serve" else gateway_command(s)
    done = subprocess.run(cmd, env=gateway_env(s), capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "not a loopback address, without a token: set admin_token" in output


def test_exposed_metrics_need_the_bearer_token(tmp_path: Path) -> None:
    with upstream_server() as upstream:
        s = exposed_settings(tmp_path, upstream=upstream, admin_token=TOKEN)
        with listening_process(serve_command(s), tmp_path / "gateway.log", s.listen_port, "gateway",
                               gateway_env(s)):
            wait_for_port("127.0.0.1", s.admin_port, timeout_s=20)
            url = f"http://127.0.0.1:{s.admin_port}/metrics"
            assert httpx.get(f"http://127.0.0.1:{s.listen_port}/x", timeout=5).status_code == 200
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
                refused = httpx.get(url, headers=headers, timeout=5)
                assert refused.status_code == 401 and "gatewatch_requests_total" not in refused.text
                assert refused.headers["WWW-Authenticate"].startswith("Bearer")
            ok = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
            assert ok.status_code == 200
            assert 'gatewatch_requests_total{route="/x",status="200"} 1.0' in ok.text
    assert TOKEN not in (tmp_path / "gateway.log").read_text()
