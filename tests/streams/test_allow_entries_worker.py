"""Allow entries in a real worker process on a real Tansu broker: the worker follows them on
the decisions topic and its decision policy issues no decision against an allow-listed
value (the detection is still sent and stored, marked ``allow_listed``); an unsigned
allow entry is ignored."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gatewatch import decision_feed
from gatewatch.events import Decision, RequestEvent, new_id, parse_decision, parse_detection, request_key
from gatewatch.netutil import free_port
from gatewatch.settings import GatewatchSettings
from worker_harness import Worker, producer, read_topic, running_worker, wait_for

ALLOWED = "203.0.113.7"        # covered by a signed allow entry for its /24
UNSIGNED = "198.51.100.8"      # has only an unsigned (forged) allow entry


@pytest.fixture
def worker(settings: GatewatchSettings, tmp_path: Path):
    with running_worker(settings.model_copy(update={"worker_web_port": free_port(), "sink_batch_within_s": 0.2}),
                        tmp_path) as w:
        yield w


def _failed_logins(t0: datetime, ip: str) -> list[RequestEvent]:
    """12 failed logins for 12 usernames from ``ip``: a credential-stuffing ban by default."""
    return [RequestEvent(event_id=new_id(), ts=t0 + timedelta(seconds=i), client_ip=ip, method="POST",
                         host="api.example", path="/login", route="/login", status=401, login="failure",
                         username_hash=f"h-victim{i}") for i in range(12)]


def _allow(value: str, scope: str = "ip") -> Decision:
    now = datetime.now(timezone.utc)
    return Decision(scope=scope, value=value, action="allow", reason="partner", detector="manual",
                    origin="cli", created_at=now, expires_at=now + timedelta(hours=1))


def test_no_decision_against_an_allow_listed_value(worker: Worker) -> None:
    s = worker.settings
    entry = _allow("203.0.113.0/24", "prefix")
    decision_feed.publish(s, entry)                                   # signed, as the CLI does
    forged = _allow(UNSIGNED)
    p = producer(s)
    p.send(s.topic_decisions, key=forged.key().encode(), value=forged.to_json())   # no signature
    p.flush()
    wait_for(lambda: worker.health()["counters"].get("allow_entries_applied"), 20, "the allow entry applied")

    t0 = datetime.now(timezone.utc).replace(microsecond=0)
    for event in _failed_logins(t0, ALLOWED) + _failed_logins(t0, UNSIGNED):
        p.send(s.topic_requests, key=request_key(event), value=event.to_json())
    p.flush()
    p.close()

    detections = wait_for(lambda: (lambda found: found if len(found) == 2 else None)(
        {parse_detection(v).value: parse_detection(v) for _, v in read_topic(s, s.topic_detections)}),
        30, "both detections")
    bans = wait_for(lambda: [parse_decision(v) for k, v in read_topic(s, s.topic_decisions)
                             if k == f"ip:{UNSIGNED}".encode() and v is not None], 30, "the ban of the other IP")
    assert [d.action for d in bans] == ["ban"]                       # the unsigned allow entry was ignored
    allowed = detections[ALLOWED]
    assert allowed.evidence["policy"] == "allow_listed" and allowed.evidence["allow_entry"] == entry.id
    assert detections[UNSIGNED].evidence["policy"] == "decision"
    keys = [k for k, _ in read_topic(s, s.topic_decisions)]
    assert f"ip:{ALLOWED}".encode() not in keys                       # no decision against it

    counters = worker.health()["counters"]
    assert counters["allow_entries_applied"] == 1
    assert counters["decisions_skipped_allow_listed"] == 1 and counters["decisions_emitted"] == 1
    assert counters["detections_emitted"] == 2

    # Stored: the allow entry among the decisions, the detection with its policy outcome.
    stored = wait_for(lambda: (lambda rows: rows if len(rows) == 2 else None)(
        worker.query("recent_decisions", limit=10)["rows"]), 30, "the entry and the ban stored")
    recent = worker.query("recent_decisions", limit=10)
    actions = {row[recent["columns"].index("id")]: row[recent["columns"].index("action")] for row in stored}
    assert actions == {entry.id: "allow", bans[0].id: "ban"}
    found = worker.query("detections_for", target=ALLOWED)
    [row] = [dict(zip(found["columns"], r)) for r in found["rows"]]
    assert json.loads(row["evidence"])["policy"] == "allow_listed"
