"""``python -m gatewatch.healthcheck gateway`` (the compose healthcheck) against a real gateway
process (``python -m inline.serve`` on the settings), as the container runs it: same settings
through ``GATEWATCH_*``, a wildcard listening address checked on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gatewatch.commands import serve_command
from gatewatch.healthcheck import local_host
from gatewatch.keys import add_key
from gatewatch.netutil import free_port, wait_for_port
from gatewatch.settings import GatewatchSettings
from tests.inline.inline_testkit import gateway_env, listening_process

TOKEN = "t" * 40


def healthcheck(settings: GatewatchSettings, what: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gatewatch.healthcheck", what],
                          env=os.environ | settings.to_env(), capture_output=True, text=True, timeout=60)


def test_wildcard_addresses_are_checked_on_loopback() -> None:
    assert [local_host(h) for h in ("0.0.0.0", "::", "", "10.1.2.3")] == ["127.0.0.1"] * 3 + ["10.1.2.3"]


def test_gateway_healthy_while_it_serves_and_unhealthy_after(settings: GatewatchSettings, sample_api: str,
                                                            tmp_path: Path) -> None:
    add_key(settings.keys_file, "key_health", owner="ops")
    s = settings.model_copy(update={
        "upstream": sample_api, "listen_host": "0.0.0.0", "listen_port": free_port(),
        "admin_host": "0.0.0.0", "admin_port": free_port(), "admin_token": TOKEN})
    with listening_process(serve_command(s), tmp_path / "gateway.log", s.listen_port, "gateway",
                           gateway_env(s)):
        # The proxy port opens a moment before the admin server (both start in mitmproxy's
        # ``running`` hook); a container's healthcheck retries, the test waits for both.
        wait_for_port("127.0.0.1", s.admin_port, timeout_s=20)
        healthy = healthcheck(s, "gateway")
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert f"http://127.0.0.1:{s.admin_port}/metrics answers" in healthy.stdout
        wrong_token = healthcheck(s.model_copy(update={"admin_token": "w" * 40}), "gateway")
        assert wrong_token.returncode == 1 and "401" in wrong_token.stderr
    stopped = healthcheck(s, "gateway")
    assert stopped.returncode == 1 and f"gateway port 127.0.0.1:{s.listen_port}" in stopped.stderr


def test_unknown_check_is_a_usage_error() -> None:
    done = subprocess.run([sys.executable, "-m", "gatewatch.healthcheck", "kafka"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "usage" in done.stderr
