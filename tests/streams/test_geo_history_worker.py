"""Geo history across a worker restart, from the store (streams/detect_geo.py).

A principal calls from London for 70 minutes of event time, three hours ago: with a
learning period of one hour, it is learned with one country, GB. It calls from London
once more a minute ago. The worker stops; a new one starts on the same store and
broker. Its by-principal replay covers the last 300 s of the partition — the last
call only — so without the store the principal would start learning again from that
call and its first call from California would say nothing. With the history the new
worker reads from the store, that call is a new country, judged against GB.

Real parts: a Tansu broker, two worker processes one after the other on one chDB
store, the DB-IP data for the locations.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gatewatch import geoip
from gatewatch.events import RequestEvent, new_id, parse_detection
from gatewatch.netutil import free_port
from gatewatch.settings import GatewatchSettings
from worker_harness import read_topic, running_worker, send_requests, wait_for, wait_requests_stored

RESIDENT = "key-resident"
LONDON_IP, CALIFORNIA_IP = "81.2.69.160", "8.8.8.8"


@pytest.fixture
def geo_settings(settings: GatewatchSettings) -> GatewatchSettings:
    geo_dir = settings.geo.dir.expanduser()
    if not geoip.installed(geo_dir):
        geoip.install(geo_dir)
    return settings.model_copy(update={
        "worker_web_port": free_port(), "sink_batch_within_s": 0.2,
        "geo_anomaly": settings.geo_anomaly.model_copy(update={"learning_s": 3600, "min_learning_events": 5}),
    })


def _call(ts: datetime, ip: str, country: str) -> RequestEvent:
    return RequestEvent(event_id=new_id(), ts=ts, client_ip=ip, method="GET", host="api.example",
                        path="/users/1", route="/users/{id}", status=200, latency_ms=5.0, principal=RESIDENT,
                        auth="ok", country=country)


def _new_countries(s: GatewatchSettings) -> list:
    found = [parse_detection(v) for _, v in read_topic(s, s.topic_detections)]
    return [d for d in found if d.detector == "geo" and d.evidence.get("kind") == "new_country"]


def test_a_new_country_after_a_restart_is_judged_on_the_stored_history(
        geo_settings: GatewatchSettings, tmp_path: Path) -> None:
    s = geo_settings
    t0 = datetime.now(timezone.utc) - timedelta(hours=3)
    learned = [_call(t0 + timedelta(minutes=10 * i), LONDON_IP, "GB") for i in range(8)]
    recent = _call(datetime.now(timezone.utc) - timedelta(minutes=1), LONDON_IP, "GB")
    with running_worker(s, tmp_path) as first:
        send_requests(s, learned)
        wait_requests_stored(first, len(learned), "the London calls stored")
        send_requests(s, [recent])   # a later batch: the only one within the replay span
        wait_requests_stored(first, len(learned) + 1, "the recent call stored")
    assert _new_countries(s) == []

    with running_worker(s, tmp_path) as second:
        send_requests(s, [_call(datetime.now(timezone.utc), CALIFORNIA_IP, "US")])
        found = wait_for(lambda: _new_countries(s) or None, 60, "a new-country detection")
        counters = second.health()["counters"]
    assert len(found) == 1 and found[0].value == RESIDENT
    assert found[0].evidence["country"] == "US" and found[0].evidence["known_countries"] == ["GB"]
    # the history's calls (the replay alone holds one: learning would start over from it)
    assert found[0].evidence["located_events"] > len(learned)
    assert counters.get("geo_history_loads", 0) >= 1 and "geo_history_errors" not in counters
