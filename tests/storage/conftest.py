"""A real chDB store per test, in ``tmp_path``, migrated and closed afterwards.

chDB allows one data path per process at a time, so each client is closed
before the next test opens another path.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from gatewatch.settings import GatewatchSettings, load_settings
from storage.client import get_client
from storage.migrations import migrate


@pytest.fixture
def store_settings(tmp_path: Path) -> GatewatchSettings:
    return load_settings(chdb_path=tmp_path / "chdb", clickhouse_url=None)


@pytest.fixture
def store(store_settings: GatewatchSettings) -> Iterator[Client]:
    client = get_client(store_settings)
    try:
        migrate(client)
        yield client
    finally:
        client.close()
