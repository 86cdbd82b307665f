"""Two worker processes share the partitions (one consumer group) on a real Tansu broker:
each detector's key is routed to one partition, so every finding is made once, by
one worker — the per-IP ban, the BOLA ban of a principal calling from several IPs
(its requests keyed by principal, as the gateway keys them, so on one request
partition), and a latency regression of a route whose requests come from every
partition.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gatewatch.broker import topic_partitions
from gatewatch.events import RequestEvent, new_id, parse_decision, parse_detection, request_key
from gatewatch.netutil import free_port
from gatewatch.settings import GatewatchSettings
from worker_harness import Worker, producer, read_topic, wait_for

ENUMERATOR = "key-enum"


@pytest.fixture
def workers(settings: GatewatchSettings, tmp_path: Path):
    started: list[Worker] = []
    try:
        for name in ("a", "b"):
            workdir = tmp_path / name
            workdir.mkdir()
            s = settings.model_copy(update={"worker_web_port": free_port(), "chdb_path": workdir / "chdb"})
            w = Worker(s, workdir)
            w.start()
            started.append(w)
        topics = topic_partitions(settings)   # every topic but the checkpoints (read at assignment)
        total = sum(topics.values()) - topics[settings.topic_checkpoints]
        wait_for(lambda: _split(started, total), 60, "the partitions split between both workers")
        yield started
    finally:
        for w in started:
            assert w.stop() == 0, w.log_tail()


def _split(workers: list[Worker], total: int) -> bool:
    health = [w.health() for w in workers]
    assigned = [h["assigned_partitions"] for h in health]
    return all(h["request_partitions"] for h in health) and sum(assigned) == total


def _event(ts: datetime, ip: str, principal: str, path: str, route: str, status: int, ms: float = 5.0,
           **kw) -> RequestEvent:
    return RequestEvent(event_id=new_id(), ts=ts, client_ip=ip, method=kw.pop("method", "GET"), host="api",
                        path=path, route=route, status=status, latency_ms=ms, principal=principal,
                        auth="ok" if principal else "public", **kw)


def _traffic(t0: datetime) -> list[RequestEvent]:
    rng = random.Random(9)
    # A principal enumerating from 8 addresses (one request partition: keyed by principal).
    ips = [f"203.0.113.{80 + k}" for k in range(8)]
    events = [_event(t0 + timedelta(seconds=120 + i / 20), ips[i % 8], ENUMERATOR, f"/orders/{300 + i}",
                     "/orders/{id}", 403) for i in range(40)]
    # Credential stuffing from one IP.
    events += [_event(t0 + timedelta(seconds=200 + i), "198.51.100.99", "", "/login", "/login", 401,
                      method="POST", login="failure", username_hash=f"victim{i}") for i in range(12)]
    # GET /items/{id} from 200 clients: slow in minutes 8-11.
    for minute in range(17):
        for _ in range(40 if minute < 16 else 5):
            ms = rng.lognormvariate(math.log(200 if 8 <= minute < 12 else 20), 0.25)
            ts = t0 + timedelta(seconds=minute * 60 + rng.uniform(0, 30 if minute == 16 else 60))
            events.append(_event(ts, f"192.0.2.{rng.randint(1, 200)}", f"key-{rng.randint(1, 20)}",
                                 "/items/1", "/items/{id}", 200, round(ms, 2)))
    return sorted(events, key=lambda e: e.ts)


def _findings(s: GatewatchSettings) -> list | None:
    detections = [parse_detection(v) for _, v in read_topic(s, s.topic_detections)]
    kinds = sorted((d.detector, d.scope, d.evidence.get("state", "")) for d in detections)
    want = [("bola", "principal", ""), ("credential_stuffing", "ip", ""),
            ("latency_regression", "route", "recovered"), ("latency_regression", "route", "regression")]
    return detections if kinds == want else None


def test_two_workers_find_everything_once(workers: list[Worker]) -> None:
    s = workers[0].settings
    t0 = (datetime.now(timezone.utc) - timedelta(minutes=30)).replace(second=0, microsecond=0)
    p = producer(s)
    for event in _traffic(t0):
        p.send(s.topic_requests, key=request_key(event), value=event.to_json())
    p.flush()
    p.close()

    detections = wait_for(lambda: _findings(s), 60, "one of each detection")
    decisions = sorted((d.key(), d.action) for d in map(parse_decision, (v for _, v in read_topic(
        s, s.topic_decisions))))
    assert decisions == [("ip:198.51.100.99", "ban"), (f"principal:{ENUMERATOR}", "ban")]
    [bola] = [d for d in detections if d.detector == "bola"]
    assert bola.evidence["distinct_ids"] == 20 and bola.value == ENUMERATOR
    # Both workers did part of the work (the request partitions are split between them).
    seen = [w.health()["counters"].get("events_requests", 0) for w in workers]
    assert all(seen) and sum(seen) == len(_traffic(t0))
    # Every finding is published once in total (and the duplicates counter stays empty).
    counters = [w.health()["counters"] for w in workers]
    assert sum(c.get("detections_emitted", 0) for c in counters) == 4
    assert sum(c.get("decisions_emitted", 0) for c in counters) == 2
