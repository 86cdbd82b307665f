"""A decision lifted with ``gatewatch decisions delete`` leaves the Abuse dashboard's
active decisions, end to end.

Real parts: a Tansu broker, a worker process (its sink stores what the decisions
topic carries; it skips tombstones), the CLI as a process, an Alertmanager
process, and the panels' SQL run on the worker's chDB store once the worker has
stopped (chDB: one process per data directory).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from dashboards import panels
from dashboards.macros import QueryContext, expand
from gatewatch.netutil import free_port
from gatewatch.settings import GatewatchSettings
from storage.client import get_client
from tests.streams.worker_harness import Worker, running_worker, wait_for

GATEWATCH = str(Path(sys.executable).parent / "gatewatch")
BANNED = "203.0.113.140"


def cli(settings: GatewatchSettings, *args: str) -> str:
    done = subprocess.run([GATEWATCH, "decisions", *args], env=os.environ | settings.to_env() | {"COLUMNS": "200"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def decision_alerts(alertmanager: str) -> list[dict]:
    alerts = httpx.get(f"{alertmanager}/api/v2/alerts", params={"active": "true"}).json()
    return [a for a in alerts if a["labels"].get("alertname") == "GatewatchDecision"
            and a["labels"].get("value") == BANNED]


@pytest.fixture
def worker(settings: GatewatchSettings, alertmanager: str, tmp_path: Path):
    s = settings.model_copy(update={
        "worker_web_port": free_port(), "sink_batch_within_s": 0.2,
        "alerting": settings.alerting.model_copy(update={"alertmanager_url": alertmanager})})
    with running_worker(s, tmp_path) as w:
        yield w


def active_ids(settings: GatewatchSettings, at: datetime) -> set[str]:
    """Ids in the Abuse dashboard's "Active decisions" panel for a range ending at ``at``."""
    client = get_client(settings)
    try:
        ctx = QueryContext(at - timedelta(hours=1), at, 60)
        result = client.query(expand(panels.get("abuse_active_decisions").sql, ctx))
        return {dict(zip(result.column_names, row))["id"] for row in result.result_rows}
    finally:
        client.close()


def test_a_deleted_decision_leaves_the_active_decisions_and_its_alert_resolves(
        worker: Worker, alertmanager: str) -> None:
    s = worker.settings
    cli(s, "add", "--scope", "ip", "--value", BANNED, "--ttl", "4h", "--reason", "manual ban")
    [added] = wait_for(lambda: worker.query("decisions_for", target=BANNED)["rows"], 20, "the ban stored")
    decision_id = added[0]
    assert wait_for(lambda: decision_alerts(alertmanager), 20, "the ban's alert")

    # Grafana's $__toTime has whole seconds: look at a range ending one second after the
    # ban was created, and delete it only after that second.
    in_force_at = datetime.fromisoformat(added[1]).replace(microsecond=0) + timedelta(seconds=1)
    time.sleep(max(0.0, (in_force_at - datetime.now(timezone.utc)).total_seconds() + 0.1))
    out = cli(s, "delete", "--scope", "ip", "--value", BANNED)
    assert f"lifted {decision_id}" in out
    rows = wait_for(lambda: (r := worker.query("decisions_for", target=BANNED)["rows"]) and len(r) == 2 and r,
                    20, "the deletion record stored")
    record = rows[0]  # newest first
    assert record[0] != decision_id and record[1] == record[2]  # created_at == expires_at
    # The deletion record carries the ban's labels, so it resolves the same alert.
    wait_for(lambda: decision_alerts(alertmanager) == [], 20, "the ban's alert resolved")
    deleted_at = datetime.now(timezone.utc)

    assert worker.stop() == 0, worker.log_tail()
    assert decision_id in active_ids(s, in_force_at)             # before the deletion
    assert active_ids(s, deleted_at + timedelta(seconds=1)) == set()   # after it: nothing active
    assert active_ids(s, deleted_at + timedelta(hours=2)) == set()
