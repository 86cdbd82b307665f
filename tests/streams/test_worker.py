"""The stream worker as a real process on a real Tansu broker: detection, decision,
storage exactly once, malformed messages counted, the query API, a restart."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gatewatch.broker import topic_partitions
from gatewatch.events import Decision, RequestEvent, new_id, parse_decision, parse_detection, request_key
from gatewatch.netutil import free_port
from gatewatch.settings import GatewatchSettings
from gatewatch.signing import DecisionSigner, DecisionVerifier
from worker_harness import Worker, producer, read_topic, running_worker, wait_for

ATTACKER = "203.0.113.7"
BENIGN_IPS = ["198.51.100.10", "198.51.100.11", "198.51.100.12", "2001:db8::20"]
#: Not the default (20) nor Faust's fixed 1500: proves the override comes from the settings.
FETCH_WAIT_MS = 37


@pytest.fixture
def worker_settings(settings: GatewatchSettings) -> GatewatchSettings:
    return settings.model_copy(update={"worker_web_port": free_port(), "fetch_max_wait_ms": FETCH_WAIT_MS,
                                       "sink_batch_within_s": 0.2})


@pytest.fixture
def worker(worker_settings: GatewatchSettings, tmp_path: Path):
    with running_worker(worker_settings, tmp_path) as w:
        yield w


def _event(ts: datetime, ip: str, **kw) -> RequestEvent:
    fields = dict(event_id=new_id(), ts=ts, client_ip=ip, method="GET", host="api.example",
                  path="/orders", route="/orders", status=200)
    return RequestEvent(**(fields | kw))


def _login(ts: datetime, ip: str, outcome: str, user: str) -> RequestEvent:
    return _event(ts, ip, method="POST", path="/login", route="/login",
                  status=200 if outcome == "success" else 401, login=outcome, username_hash=f"h-{user}")


def _traffic(t0: datetime) -> tuple[list[RequestEvent], list[RequestEvent]]:
    """(attack, benign): 12 failed logins for 12 usernames from one IP, and normal users."""
    attack = [_login(t0 + timedelta(seconds=i), ATTACKER, "failure", f"victim{i}") for i in range(12)]
    benign = []
    for n, ip in enumerate(BENIGN_IPS):
        base = t0 + timedelta(seconds=n)
        if n == 0:
            benign.append(_login(base, ip, "failure", f"user{n}"))  # a typo
        benign.append(_login(base + timedelta(seconds=2), ip, "success", f"user{n}"))
        benign += [_event(base + timedelta(seconds=3 + k), ip) for k in range(3)]
    return attack, benign


def _event_counts(worker: Worker) -> dict[str, int]:
    return dict(worker.query("event_id_counts")["rows"])


def _stored(worker: Worker, wanted: set[str]) -> dict[str, int] | None:
    """event_id -> physical rows once every id in ``wanted`` is stored, else None."""
    counts = _event_counts(worker)
    return counts if set(counts) >= wanted else None


def _tables_with_findings(worker: Worker) -> dict[str, int] | None:
    tables = dict(worker.query("table_counts")["rows"])
    return tables if tables["detections"] and tables["decisions"] else None


def test_attack_is_detected_banned_and_everything_stored_once(worker: Worker) -> None:
    s = worker.settings
    health = worker.health()
    assert health["ready"] and health["store_open"]
    # Every topic, re-keyed ones too (the request topic through the request consumer);
    # the checkpoint topic is read at assignment only.
    topics = topic_partitions(s)
    assert health["assigned_partitions"] == sum(topics.values()) - topics[s.topic_checkpoints]
    assert health["request_partitions"] == list(range(s.requests_partitions))
    assert health["fetch_max_wait_ms"] == FETCH_WAIT_MS  # the override holds on the running consumer

    t0 = datetime.now(timezone.utc).replace(microsecond=0)
    attack, benign = _traffic(t0)
    bad_ip = _event(t0, "not-an-ip")  # valid JSON record that the table cannot hold
    p = producer(s)
    for event in attack + benign + [bad_ip]:
        p.send(s.topic_requests, key=request_key(event), value=event.to_json())
    p.send(s.topic_requests, key=b"198.51.100.99", value=b'{"event_id": "broken", "ts": ')
    signer = DecisionSigner.from_settings(s)
    p.send(s.topic_decisions, key=b"ip:192.0.2.1", value=b"not a decision",
           headers=signer.headers(b"ip:192.0.2.1", b"not a decision"))
    # Forged decisions (no signature; a guessed key) are counted, never stored.
    forged = Decision(scope="ip", value="192.0.2.66", created_at=t0, expires_at=t0 + timedelta(hours=1))
    fkey, fvalue = forged.key().encode(), forged.to_json()
    p.send(s.topic_decisions, key=fkey, value=fvalue)
    p.send(s.topic_decisions, key=fkey, value=fvalue, headers=DecisionSigner("dev", b"guess").headers(fkey, fvalue))
    p.flush()
    p.close()

    # Detection and ban decision on their topics.
    detections = wait_for(lambda: read_topic(s, s.topic_detections), 30, "a detection")
    decisions = wait_for(lambda: [m for m in read_topic(s, s.topic_decisions, headers=True)
                                  if m[0] == f"ip:{ATTACKER}".encode()], 30, "a decision")
    [(det_key, det_value)] = detections
    detection = parse_detection(det_value)
    assert det_key == f"ip:{ATTACKER}".encode()
    assert (detection.detector, detection.scope, detection.value) == ("credential_stuffing", "ip", ATTACKER)
    assert detection.evidence["failures"] == s.credential_stuffing.min_failures
    assert detection.evidence["distinct_usernames"] == s.credential_stuffing.min_failures
    assert set(detection.sample_event_ids) <= {e.event_id for e in attack}
    assert detection.ts == attack[s.credential_stuffing.min_failures - 1].ts  # event time, 10th failure
    [(dec_key, dec_value, dec_headers)] = decisions
    assert DecisionVerifier.from_settings(s).check(dec_key, dec_value, dec_headers) == "valid"   # signed
    decision = parse_decision(dec_value)
    assert dec_key == f"ip:{ATTACKER}".encode() == decision.key().encode()
    assert decision.action == "ban" and decision.detection_id == detection.detection_id
    assert decision.ttl_s == s.credential_stuffing.ban_ttl_s
    assert decision.evidence["failures"] == detection.evidence["failures"]

    # Every valid event stored exactly once (physical rows), the others counted.
    produced = {e.event_id for e in attack + benign}
    counts = wait_for(lambda: _stored(worker, produced), 30, "all events stored")
    assert set(counts) == produced and set(counts.values()) == {1}
    tables = wait_for(lambda: _tables_with_findings(worker), 30, "detection and decision stored")
    assert tables == {"requests": len(produced), "detections": 1, "decisions": 1}
    counters = worker.health()["counters"]
    assert counters["malformed_requests"] == 1   # parsed once, for detection and storage
    assert counters["malformed_decisions"] == 1
    assert counters["unsigned_decisions"] == counters["bad_signature_decisions"] == 1
    assert counters["rejected_requests"] == 1
    assert counters["stored_requests"] == len(produced)
    assert counters["detections_emitted"] == counters["decisions_emitted"] == 1
    assert "dropped_requests" not in counters and "spooled_requests" not in counters

    # Named queries through the worker's API.
    timeline = worker.query("ip_timeline", ip=ATTACKER)
    row = dict(zip(timeline["columns"], timeline["rows"][0]))
    assert row["requests"] == len(attack) and row["blocked"] == 0 and row["first_blocked_ts"] is None
    assert worker.query("blocked_excluding_ip", ip=ATTACKER)["rows"] == [[0, 0]]
    recent = worker.query("recent_decisions", limit=5)
    [dec_row] = [dict(zip(recent["columns"], r)) for r in recent["rows"]]
    assert dec_row["id"] == decision.id and json.loads(dec_row["evidence"])["failures"] == 10
    recent = worker.query("recent_detections")
    assert [r[0] for r in recent["rows"]] == [detection.detection_id]


def test_query_api_errors(worker: Worker) -> None:
    status, body = worker.get("/gatewatch/query/no_such_query/")
    assert status == 404 and "table_counts" in body["queries"]
    status, body = worker.get("/gatewatch/query/ip_timeline/")
    assert status == 400 and "missing" in body["error"]
    status, body = worker.get("/gatewatch/query/ip_timeline/", {"ip": "999.1.1.1"})
    assert status == 400 and "IP" in body["error"]
    status, body = worker.get("/gatewatch/query/recent_decisions/", {"limit": "many"})
    assert status == 400


def test_restart_keeps_the_store_and_stores_nothing_twice(worker: Worker) -> None:
    s = worker.settings
    t0 = datetime.now(timezone.utc).replace(microsecond=0)
    first = [_event(t0 + timedelta(seconds=i), BENIGN_IPS[i % 4]) for i in range(20)]
    p = producer(s)
    for event in first:
        p.send(s.topic_requests, key=request_key(event), value=event.to_json())
    p.flush()
    wait_for(lambda: len(_event_counts(worker)) == len(first), 30, "first batch stored")

    assert worker.stop() == 0
    health = worker.start()
    assert health["store_open"] and health["counters"].get("stored_requests", 0) == 0

    second = [_event(t0 + timedelta(seconds=30 + i), BENIGN_IPS[i % 4]) for i in range(20)]
    for event in second:
        p.send(s.topic_requests, key=request_key(event), value=event.to_json())
    p.flush()
    p.close()
    wanted = {e.event_id for e in first + second}
    counts = wait_for(lambda: _stored(worker, wanted), 30, "second batch stored")
    assert set(counts) == wanted and set(counts.values()) == {1}, \
        {k: v for k, v in counts.items() if v != 1}
