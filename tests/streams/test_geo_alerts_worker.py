"""Geo anomalies and alerting through a real worker process, a real Tansu broker and
a real Alertmanager: a principal seen in London and ten minutes later in California
raises an impossible-travel detection, and the detection and a credential-stuffing
ban arrive in Alertmanager as alerts.

Client addresses are public ones located by the real DB-IP data. Event times are
the last eleven minutes, so that the alerts (which resolve at the decision's expiry
or ten minutes after the detection) are still active when Alertmanager is asked.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from gatewatch import geoip
from gatewatch.events import Decision, RequestEvent, new_id, parse_detection, request_key
from gatewatch.netutil import free_port
from gatewatch.settings import GatewatchSettings
from worker_harness import Worker, producer, read_topic, running_worker, wait_for

TRAVELLER = "key-traveller"
LONDON_IP, CALIFORNIA_IP = "81.2.69.160", "8.8.8.8"
STUFFER_IP = "203.0.113.99"
FORGED_IP = "203.0.113.66"   # an unsigned ban on the topic: it must not alert


@pytest.fixture
def worker(settings: GatewatchSettings, alertmanager: str, tmp_path: Path):
    geo_dir = settings.geo.dir.expanduser()
    if not geoip.installed(geo_dir):
        geoip.install(geo_dir)
    s = settings.model_copy(update={
        "worker_web_port": free_port(), "sink_batch_within_s": 0.2,
        "geo_anomaly": settings.geo_anomaly.model_copy(update={"learning_s": 0, "min_learning_events": 0}),
        "alerting": settings.alerting.model_copy(update={"alertmanager_url": alertmanager}),
    })
    with running_worker(s, tmp_path) as w:
        yield w


def _event(ts: datetime, ip: str, principal: str = "", **kw) -> RequestEvent:
    fields = dict(event_id=new_id(), ts=ts, client_ip=ip, method="GET", host="api.example", path="/users/1",
                  route="/users/{id}", status=200, latency_ms=5.0, principal=principal,
                  auth="ok" if principal else "public")
    return RequestEvent(**(fields | kw))


def test_impossible_travel_and_alerts(worker: Worker, alertmanager: str) -> None:
    s = worker.settings
    t0 = datetime.now(timezone.utc) - timedelta(minutes=11)
    events = [_event(t0, LONDON_IP, TRAVELLER), _event(t0 + timedelta(minutes=10), CALIFORNIA_IP, TRAVELLER)]
    events += [_event(t0 + timedelta(minutes=10, seconds=i), STUFFER_IP, method="POST", path="/login", route="/login",
                      status=401, login="failure", username_hash=f"u{i}") for i in range(12)]
    p = producer(s)
    forged = Decision(scope="ip", value=FORGED_IP, created_at=t0, expires_at=t0 + timedelta(hours=1))
    p.send(s.topic_decisions, key=forged.key().encode(), value=forged.to_json())
    for e in events:
        p.send(s.topic_requests, key=request_key(e), value=e.to_json())
    p.flush()

    def travel() -> list | None:
        found = [parse_detection(v) for _, v in read_topic(s, s.topic_detections)]
        hits = [d for d in found if d.detector == "geo" and d.evidence.get("kind") == "impossible_travel"]
        return hits or None

    hits = wait_for(travel, 60, "an impossible-travel detection")
    assert len(hits) == 1 and hits[0].value == TRAVELLER and hits[0].scope == "principal"
    assert hits[0].evidence["from"]["country"] == "GB" and hits[0].evidence["to"]["country"] == "US"

    def alerts() -> list | None:
        got = httpx.get(f"{alertmanager}/api/v2/alerts").json()
        names = {(a["labels"]["alertname"], a["labels"]["detector"]) for a in got}
        want = {("GatewatchDetection", "geo"), ("GatewatchDetection", "credential_stuffing"),
                ("GatewatchDecision", "credential_stuffing")}
        return got if want <= names else None

    try:
        got = wait_for(alerts, 60, "alerts for the geo detection and the stuffing ban")
    except AssertionError:
        raise AssertionError(f"alerts seen: {httpx.get(f'{alertmanager}/api/v2/alerts').json()}") from None
    [ban] = [a for a in got if a["labels"]["alertname"] == "GatewatchDecision"]   # not the forged one
    assert ban["labels"]["value"] == STUFFER_IP and ban["annotations"]["explain"].startswith("gatewatch explain ")
    wait_for(lambda: worker.health()["counters"].get("alerts_sent", 0) >= 3 or None, 10, "the alerts counter")
