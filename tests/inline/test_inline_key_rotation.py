"""API-key rotation on a real gateway: two active keys per owner, `gatewatch keys rotate`
and `revoke` through the CLI, and the gateway re-reading the keys file without a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gatewatch.commands import serve_command
from gatewatch.keys import KeysFileError, add_key, load_keys
from gatewatch.netutil import free_port, wait_for_port
from gatewatch.settings import GatewatchSettings

GATEWATCH = str(Path(sys.executable).parent / "gatewatch")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([GATEWATCH, "keys", *args], capture_output=True, text=True, timeout=60,
                          env=os.environ | {"COLUMNS": "200"})


def test_at_most_two_active_keys_per_owner(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    add_key(path, "a1", owner="alice")
    add_key(path, "a2", owner="alice")
    with pytest.raises(KeysFileError, match="2 active keys"):
        add_key(path, "a3", owner="alice")
    add_key(path, "b1", owner="bob")
    # A hand-edited file with three active keys for one owner is refused at load.
    entries = "".join(f'[[keys]]\nid = "c{i}"\nowner = "carol"\nhash = "sha256:{str(i) * 64}"\n' for i in range(3))
    path.write_text(entries)
    with pytest.raises(KeysFileError, match="more than 2 active"):
        load_keys(path)


def status(base: str, key: str) -> int:
    return httpx.get(f"{base}/users/1", headers={"X-API-Key": key}).status_code


def test_rotate_then_revoke_without_restart(settings: GatewatchSettings, sample_api: str, tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    old = add_key(keys, "key_old", owner="partner", tier="gold")
    s = settings.model_copy(update={"upstream": sample_api, "listen_port": free_port(), "admin_port": 0,
                                    "keys_file": keys, "spool_dir": tmp_path / "spool"})
    proc = subprocess.Popen(serve_command(s), env=os.environ | s.to_env())
    try:
        wait_for_port(s.listen_host, s.listen_port, timeout_s=20)
        base = f"http://{s.listen_host}:{s.listen_port}"
        # The sample API answers 401 "login required" itself: the gateway let the request through.
        assert status(base, old) == 401 and httpx.get(f"{base}/users/1", headers={"X-API-Key": old}).json() == \
            {"error": "login required"}

        rotated = cli("rotate", "key_old", "--new-id", "key_new", "--keys-file", str(keys))
        assert rotated.returncode == 0, rotated.stdout + rotated.stderr
        new = rotated.stdout.strip().splitlines()[-1]
        assert new.startswith("gw_") and new not in keys.read_text()

        def passes(key: str) -> bool:
            return "login required" in httpx.get(f"{base}/users/1", headers={"X-API-Key": key}).text

        deadline = time.monotonic() + 10
        while not passes(new) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert passes(new) and passes(old), "both keys work during the rotation"

        assert cli("revoke", "key_old", "--keys-file", str(keys)).returncode == 0
        deadline = time.monotonic() + 10
        while passes(old) and time.monotonic() < deadline:
            time.sleep(0.2)
        refused = httpx.get(f"{base}/users/1", headers={"X-API-Key": old})
        assert refused.status_code == 401 and "unknown API key" in refused.text
        assert passes(new)
        assert cli("rotate", "key_new", "--new-id", "key_3", "--keys-file", str(keys)).returncode == 0
        assert cli("rotate", "key_new", "--new-id", "key_4", "--keys-file", str(keys)).returncode == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
