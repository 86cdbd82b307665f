"""Geo enrichment on a real mitmdump with the real DB-IP data: country and ASN of the
client reach the event and the asn/country decision scopes; secrets in query strings
never reach an event."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from kafka import KafkaConsumer, TopicPartition

from gatewatch import decision_feed, geoip
from gatewatch.events import Decision, parse_request_event
from gatewatch.keys import add_key
from gatewatch.netutil import free_port
from gatewatch.settings import GatewatchSettings
from inline.redaction import redact_query
from inline_testkit import mitmdump, upstream_server

LONDON_IP, GOOGLE_IP = "81.2.69.160", "8.8.8.8"  # GB / AS20712, US / AS15169 in DB-IP Lite


@pytest.mark.parametrize("path,expected", [
    ("/a", "/a"),
    ("/a?x=1", "/a?x=1"),
    ("/a?access_token=abc&x=1", "/a?access_token=REDACTED&x=1"),
    ("/a?x=1&API_KEY=k&Password=p", "/a?x=1&API_KEY=REDACTED&Password=REDACTED"),
    ("/a?token", "/a?token"),
    ("/a?access%5Ftoken=abc", "/a?access%5Ftoken=REDACTED"),
])
def test_redact_query(path: str, expected: str) -> None:
    assert redact_query(path) == expected


def read_events(s: GatewatchSettings, want: int, timeout_s: float = 15.0) -> list:
    consumer = KafkaConsumer(bootstrap_servers=s.bootstrap_servers, enable_auto_commit=False,
                             fetch_max_wait_ms=20)
    tps = [TopicPartition(s.topic_requests, p) for p in sorted(consumer.partitions_for_topic(s.topic_requests))]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    events, deadline = [], time.monotonic() + timeout_s
    while len(events) < want and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            events += [parse_request_event(r.value) for r in records]
    consumer.close()
    return events


def test_country_and_asn_in_events_and_decisions(settings: GatewatchSettings, tmp_path: Path) -> None:
    geo_dir = settings.geo.dir.expanduser()
    if not geoip.installed(geo_dir):
        geoip.install(geo_dir)
    raw = add_key(tmp_path / "keys.toml", "key_geo", owner="geo")
    with upstream_server() as upstream:
        s = settings.model_copy(update={
            "upstream": upstream, "listen_port": free_port(), "keys_file": tmp_path / "keys.toml",
            "trusted_proxies": ["127.0.0.0/8"], "spool_dir": tmp_path / "spool", "admin_port": 0})
        with mitmdump(s, tmp_path / "gw.log"):
            base = f"http://{s.listen_host}:{s.listen_port}"

            def get(ip: str, path: str = "/items/1") -> httpx.Response:
                return httpx.get(base + path, headers={"X-API-Key": raw, "X-Forwarded-For": ip})

            assert get(LONDON_IP, f"/items/1?access_token={raw}").status_code == 200
            assert get(GOOGLE_IP).status_code == 200
            assert httpx.get(base + "/items/2", headers={"X-API-Key": raw}).status_code == 200  # loopback

            now = datetime.now(timezone.utc)
            ban = Decision(scope="country", value="GB", created_at=now, expires_at=now + timedelta(minutes=5))
            decision_feed.publish(s, ban)   # signed, as every decision writer does
            deadline = time.monotonic() + 10
            while get(LONDON_IP).status_code != 403 and time.monotonic() < deadline:
                time.sleep(0.05)
            blocked = get(LONDON_IP)
            assert blocked.status_code == 403 and blocked.json()["decision_id"] == ban.id
            assert get(GOOGLE_IP).status_code == 200  # another country passes

    events = read_events(s, want=6)
    by_ip = {}
    for e in events:
        by_ip.setdefault(e.client_ip, []).append(e)
    assert {(e.country, e.asn) for e in by_ip[LONDON_IP]} == {("GB", 20712)}
    assert {(e.country, e.asn) for e in by_ip[GOOGLE_IP]} == {("US", 15169)}
    assert {(e.country, e.asn) for e in by_ip["127.0.0.1"]} == {(None, None)}
    assert all(raw not in e.to_json().decode() for e in events)
    assert any("access_token=REDACTED" in e.path for e in events)
