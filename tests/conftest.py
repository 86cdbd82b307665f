"""Shared fixtures: real components started on free loopback ports.

A fixture that cannot start its component fails the test loudly; nothing
here skips.
"""

from __future__ import annotations

from collections.abc import Iterator
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gatewatch.broker import create_topics, start_tansu
from gatewatch.netutil import free_port, wait_for_port
from gatewatch.settings import GatewatchSettings, load_settings
from storage.client import get_client
from storage.migrations import migrate


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    """A real Tansu broker on a free loopback port; yields ``host:port``."""
    port = free_port()
    proc = start_tansu("127.0.0.1", port, log_path=tmp_path / "tansu.log")
    try:
        wait_for_port("127.0.0.1", port, timeout_s=10)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def settings(broker: str, tmp_path: Path) -> GatewatchSettings:
    """Settings pointing at the ``broker`` fixture, with gatewatch's topics created
    and the chDB store and keys file under ``tmp_path``."""
    s = load_settings(bootstrap_servers=broker, chdb_path=tmp_path / "chdb",
                      keys_file=tmp_path / "keys.toml")
    create_topics(s)
    return s


@pytest.fixture
def sample_api() -> Iterator[str]:
    """The sample upstream API as a real process on a free loopback port; yields its base URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gatewatch.sample_api", "--port", str(port)])
    try:
        wait_for_port("127.0.0.1", port, timeout_s=15)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def alertmanager_binary() -> str:
    path = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    assert path, "Alertmanager is not installed: apt-get install prometheus-alertmanager (make test does)"
    return path


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager on a free loopback port; yields its base URL."""
    port = free_port()
    (tmp_path / "am.yml").write_text("route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n")
    proc = subprocess.Popen([alertmanager_binary(), f"--config.file={tmp_path / 'am.yml'}",
                             f"--storage.path={tmp_path / 'am-data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port, timeout_s=20)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def store_settings(tmp_path: Path) -> GatewatchSettings:
    """Settings of an embedded chDB store in ``tmp_path``."""
    return load_settings(chdb_path=tmp_path / "chdb", clickhouse_url=None)


@pytest.fixture
def store(store_settings: GatewatchSettings):
    """A real chDB store in ``tmp_path``, migrated, closed afterwards (chDB allows one
    data path per process at a time, so each test closes its client)."""
    client = get_client(store_settings)
    try:
        migrate(client)
        yield client
    finally:
        client.close()
