"""Fixtures of the CLI tests: a stopped stack whose store holds a credential-stuffing ban."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gatewatch.events import Decision, Detection, RequestEvent
from gatewatch.settings import load_settings
from storage.client import get_client
from storage.migrations import migrate
from storage.writer import write_decisions, write_detections, write_requests
from tests.gatewatch.stack_files import stopped_run_dir

T0 = datetime.now(timezone.utc) - timedelta(minutes=2)


@pytest.fixture
def stopped_stack(tmp_path: Path) -> Path:
    """A run directory whose stack is gone: its store holds one ban with its detection
    and sample requests; its broker and worker ports answer nothing."""
    settings = load_settings(chdb_path=tmp_path / "chdb")
    client = get_client(settings)
    migrate(client)
    attempts = [RequestEvent(event_id=f"ev{i}", ts=T0 + timedelta(seconds=i), client_ip="203.0.113.66",
                             method="POST", host="api", path="/login", route="/login", status=401,
                             login="failure", username_hash=f"u{i}") for i in range(10)]
    detection = Detection(detection_id="det-1", ts=attempts[-1].ts, detector="credential_stuffing", scope="ip",
                          value="203.0.113.66", summary="10 failed logins for 10 usernames",
                          evidence={"failures": 10, "distinct_usernames": 10,
                                    "thresholds": {"min_failures": 10, "min_usernames": 5}},
                          sample_event_ids=[e.event_id for e in attempts])
    decision = Decision(id="dec-1", scope="ip", value="203.0.113.66", reason="credential stuffing",
                        detector="credential_stuffing", detection_id="det-1", evidence=detection.evidence,
                        created_at=detection.ts, expires_at=detection.ts + timedelta(minutes=10))
    write_requests(client, attempts)
    write_detections(client, [detection])
    write_decisions(client, [decision])
    client.close()
    return stopped_run_dir(tmp_path / "run", tmp_path / "chdb")


