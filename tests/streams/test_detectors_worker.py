"""BOLA enumeration and a latency regression through a real worker process on a real
Tansu broker: requests produced keyed by client IP, re-keyed by the worker (by
principal, by route), detected, decided, published and stored.

Event times are synthetic (a past half hour), so minute windows close as soon as
later events arrive: nothing here waits for the clock.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gatewatch.events import RequestEvent, new_id, parse_decision, parse_detection, request_key
from gatewatch.netutil import free_port
from gatewatch.settings import GatewatchSettings
from worker_harness import Worker, producer, read_topic, running_worker, wait_for

ENUMERATOR, ENUMERATOR_IP = "key-enum", "203.0.113.70"
SYNC, SYNC_IP = "key-bulk", "198.51.100.30"
SERIES = "GET /items/{id}"


@pytest.fixture
def worker(settings: GatewatchSettings, tmp_path: Path):
    s = settings.model_copy(update={"worker_web_port": free_port(), "sink_batch_within_s": 0.2})
    with running_worker(s, tmp_path) as w:
        yield w


def _event(ts: datetime, ip: str, principal: str, path: str, route: str, status: int,
           latency_ms: float = 5.0) -> RequestEvent:
    return RequestEvent(event_id=new_id(), ts=ts, client_ip=ip, method="GET", host="api.example", path=path,
                        route=route, status=status, latency_ms=latency_ms, principal=principal, auth="ok")


def _traffic(t0: datetime) -> tuple[list[RequestEvent], list[RequestEvent], list[RequestEvent]]:
    """(enumeration, bulk sync, latency traffic)."""
    rng = random.Random(4)
    # 40 foreign order ids in a row, refused (403), at 50 req/s, from minute 2.
    enumeration = [_event(t0 + timedelta(seconds=120 + i / 50), ENUMERATOR_IP, ENUMERATOR,
                          f"/orders/{100 + i}", "/orders/{id}", 403) for i in range(40)]
    # 300 of its own orders, all 200, at 150 req/s: not a suspect.
    sync = [_event(t0 + timedelta(seconds=150 + i / 150), SYNC_IP, SYNC, f"/orders/{5000 + i}",
                   "/orders/{id}", 200) for i in range(300)]
    # GET /items/{id}, 40 req/min from many clients: ~20 ms, ~200 ms in minutes 8-11, then ~20 ms.
    latency = []
    for minute in range(17):
        slow = 8 <= minute < 12
        for _ in range(40 if minute < 16 else 5):
            ms = rng.lognormvariate(math.log(200 if slow else 20), 0.25)
            ts = t0 + timedelta(seconds=minute * 60 + rng.uniform(0, 30 if minute == 16 else 60))
            latency.append(_event(ts, f"192.0.2.{rng.randint(1, 200)}", f"key-{rng.randint(1, 20)}",
                                  f"/items/{rng.randint(1, 9)}", "/items/{id}", 200, round(ms, 2)))
    return enumeration, sync, latency


def _findings(worker: Worker) -> tuple[list, list] | None:
    s = worker.settings
    detections = [parse_detection(v) for _, v in read_topic(s, s.topic_detections)]
    states = sorted(d.evidence.get("state", "") for d in detections if d.detector == "latency_regression")
    if states != ["recovered", "regression"] or not any(d.detector == "bola" for d in detections):
        return None
    return detections, [parse_decision(v) for _, v in read_topic(s, s.topic_decisions)]


def _stored(worker: Worker) -> dict | None:
    counts = {(r[0], r[1]): r[2] for r in worker.query("detection_counts")["rows"]}
    decisions = worker.query("recent_decisions", limit=10)
    if counts.get(("latency_regression", "route")) == 2 and counts.get(("bola", "principal")) == 1 \
            and decisions["rows"]:
        return {"counts": counts, "decisions": decisions}
    return None


def test_bola_enumeration_and_latency_regression_end_to_end(worker: Worker) -> None:
    s = worker.settings
    t0 = (datetime.now(timezone.utc) - timedelta(minutes=30)).replace(second=0, microsecond=0)
    enumeration, sync, latency = _traffic(t0)
    p = producer(s)
    for event in sorted(enumeration + sync + latency, key=lambda e: e.ts):
        p.send(s.topic_requests, key=request_key(event), value=event.to_json())
    p.flush()
    p.close()

    detections, decisions = wait_for(lambda: _findings(worker), 60, "BOLA and latency detections")

    # BOLA: one detection of the enumerator, at its 20th distinct id; one ban of the principal.
    bolas = [d for d in detections if d.detector == "bola"]
    assert len(bolas) == 1, [(d.detection_id, d.scope, d.value, d.ts, d.evidence) for d in bolas]
    [bola] = bolas
    assert (bola.scope, bola.value) == ("principal", ENUMERATOR)
    assert bola.evidence["rule"] == "denied_share" and bola.evidence["policy"] == "decision"
    assert bola.evidence["distinct_ids"] == s.bola.min_distinct_ids == 20
    assert bola.ts == enumeration[19].ts
    assert set(bola.sample_event_ids) <= {e.event_id for e in enumeration}
    [decision] = decisions
    assert decision.key() == f"principal:{ENUMERATOR}" and decision.action == "ban"
    assert decision.detection_id == bola.detection_id and decision.ttl_s == s.bola.ban_ttl_s
    assert not [d for d in detections if d.value in (SYNC, SYNC_IP)]

    # Latency: a regression when the third slow minute closed, a recovery after two good ones; no decision.
    regression, recovered = sorted((d for d in detections if d.detector == "latency_regression"),
                                   key=lambda d: d.ts)
    assert (regression.scope, regression.value) == ("route", SERIES) == (recovered.scope, recovered.value)
    assert regression.evidence["state"] == "regression" and recovered.evidence["state"] == "recovered"
    assert regression.evidence["policy"] == recovered.evidence["policy"] == "alert_only"
    assert regression.evidence["current_p95_ms"] > 3 * regression.evidence["baseline_p95_ms"]
    assert [w["start"] for w in regression.evidence["bad_windows"]] == [
        (t0 + timedelta(minutes=m)).isoformat() for m in (8, 9, 10)]
    assert recovered.evidence["regression_since"] == regression.ts.isoformat()
    assert recovered.evidence["current_p95_ms"] < regression.evidence["threshold_ms"]
    assert {e for e in regression.sample_event_ids} <= {e.event_id for e in latency}

    # Stored: the three detections and the decision, through the worker's query API.
    stored = wait_for(lambda: _stored(worker), 30, "detections and decision stored")
    assert stored["counts"] == {("bola", "principal"): 1, ("latency_regression", "route"): 2}
    [row] = [dict(zip(stored["decisions"]["columns"], r)) for r in stored["decisions"]["rows"]]
    assert row["id"] == decision.id and row["scope"] == "principal" and row["detector"] == "bola"
    recent = worker.query("recent_detections", limit=10)
    assert {r[0] for r in recent["rows"]} == {bola.detection_id, regression.detection_id,
                                              recovered.detection_id}

    counters = worker.health()["counters"]
    assert counters["detections_bola"] == 1 and counters["detections_latency_regression"] == 2
    assert counters["decisions_emitted"] == 1 and counters["decisions_skipped_alert_only"] == 2
    assert "detector_errors" not in counters
