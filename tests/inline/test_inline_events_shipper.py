"""Request events and their shipping (inline/events_shipper.py)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from mitmproxy import http
from mitmproxy.test import taddons

from gatewatch.events import parse_request_event
from gatewatch.keys import add_key
from inline.authentication import Authentication
from inline.enforcement import Enforcement
from inline.events_shipper import EventShipper, build_event, error_status
from inline.flowstate import get_facts
from inline.login import Login, username_hash
from inline.ratelimit import RateLimit
from inline.routes import Routes, ensure_facts
from inline_testkit import make_flow, run_flow


def chain(tmp_path: Path):
    """Every gateway addon in gateway.py's order, configured for tests; returns (addons, raw key)."""
    raw = add_key(tmp_path / "keys.toml", "key_alice", "alice")
    addons = [Routes(), Enforcement(), RateLimit(), Authentication(), Login(), EventShipper()]
    return addons, raw


def test_build_event_for_upstream_answer():
    flow = make_flow("/users/42?expand=1", headers={"User-Agent": "curl/8"}, body=b"12345",
                     peer="::ffff:203.0.113.5")
    flow.response = http.Response.make(201, b"abc")
    flow.response.timestamp_start = flow.request.timestamp_end + 0.0125
    facts = ensure_facts(flow)
    facts.principal, facts.auth = "key_alice", "ok"
    event = build_event(flow, facts, 201, "upstream")
    assert event.event_id == facts.event_id
    assert event.ts.timestamp() == flow.request.timestamp_start and event.ts.utcoffset().total_seconds() == 0
    assert (event.client_ip, event.method, event.path, event.route) == (
        "203.0.113.5", "GET", "/users/42?expand=1", "/users/{id}")
    assert (event.status, event.bytes_in, event.bytes_out) == (201, 5, 3)
    assert abs(event.latency_ms - 12.5) < 1e-3   # float seconds → ms
    assert (event.principal, event.auth, event.answered_by, event.user_agent) == ("key_alice", "ok", "upstream", "curl/8")
    assert parse_request_event(event.to_json()) == event


def test_build_event_for_gateway_answer_has_no_latency():
    flow = make_flow()
    flow.response = http.Response.make(429)
    flow.response.timestamp_start = flow.request.timestamp_end + 5
    event = build_event(flow, ensure_facts(flow), 429, "rate_limit")
    assert event.latency_ms == 0.0 and event.answered_by == "rate_limit"


def test_build_event_survives_undecodable_text():
    flow = make_flow("/caf\udcff?q=\udcfe", headers={"User-Agent": "x" * 5000})
    flow.response = http.Response.make(400)
    event = build_event(flow, ensure_facts(flow), 400, "bad_request")
    assert event.path == "/caf\ufffd?q=\ufffd"
    assert len(event.user_agent) == 512
    json.loads(event.to_json())


def test_error_status():
    flow = make_flow()
    assert error_status(flow) == (502, "error")
    flow.request.timestamp_end = None
    assert error_status(flow) == (400, "bad_request")


def test_one_event_per_request_through_the_whole_chain(tmp_path):
    async def go():
        addons, raw = chain(tmp_path)
        shipper = addons[-1]
        with taddons.context(*addons) as tctx:
            tctx.configure(addons[3], gatewatch_keys_file=str(tmp_path / "keys.toml"))
            tctx.configure(addons[4], gatewatch_username_hash_key="k")
            shipper.queue = asyncio.Queue(maxsize=100)   # as running() would, without a producer
            ok = await run_flow(tctx, addons, make_flow(headers={"X-API-Key": raw}))
            denied = await run_flow(tctx, addons, make_flow())
            login = await run_flow(
                tctx, addons,
                make_flow("/login", "POST", {"Content-Type": "application/json"},
                          b'{"username": "Alice", "password": "hunter2"}'),
                upstream=http.Response.make(401, b"{}"))
            await run_flow(tctx, addons, make_flow(headers={"X-API-Key": raw}),
                           upstream_error="Connection refused")
            # A late error() after response() must not make a second event.
            shipper.error(ok)
        events = [shipper.queue.get_nowait() for _ in range(shipper.queue.qsize())]
        assert [(e.status, e.answered_by, e.auth) for e in events] == [
            (200, "upstream", "ok"), (401, "auth", "missing"), (401, "upstream", "public"), (502, "error", "ok")]
        assert events[0].principal == "key_alice"
        assert ok.response.headers["X-Request-Id"] == events[0].event_id == ok.request.headers["X-Request-Id"]
        assert denied.response.headers["X-Request-Id"] == events[1].event_id
        assert (events[2].login, events[2].username_hash) == ("failure", username_hash("k", "alice"))
        assert get_facts(login).answered_by == "upstream"
        for e in events:
            text = e.to_json().decode()
            assert raw not in text and "hunter2" not in text and "Alice" not in text
        assert shipper.stats.queued == 4 and shipper.stats.dropped == 0
    asyncio.run(go())


def test_full_queue_drops_and_counts_without_blocking():
    async def go():
        routes, shipper = Routes(), EventShipper()
        with taddons.context(routes, shipper) as tctx:
            tctx.configure(shipper, gatewatch_event_queue_max=2)
            shipper.queue = asyncio.Queue(maxsize=2)
            for _ in range(5):
                await run_flow(tctx, [routes, shipper], make_flow())
        assert shipper.queue.qsize() == 2
        assert (shipper.stats.queued, shipper.stats.dropped) == (2, 3)
    asyncio.run(go())


def test_not_running_counts_drops():
    async def go():
        routes, shipper = Routes(), EventShipper()
        with taddons.context(routes, shipper) as tctx:
            await run_flow(tctx, [routes, shipper], make_flow())
        assert shipper.stats.dropped == 1
    asyncio.run(go())


def test_ships_to_a_real_broker_and_flushes_on_done(settings):
    """running() starts the producer task; done() sends what is queued and stops."""
    async def go():
        routes, shipper = Routes(), EventShipper()
        with taddons.context(routes, shipper) as tctx:
            tctx.configure(shipper, gatewatch_bootstrap_servers=settings.bootstrap_servers,
                           gatewatch_topic_requests=settings.topic_requests)
            shipper.running()
            flows = [await run_flow(tctx, [routes, shipper], make_flow(f"/items/{i}", peer=f"10.0.0.{i % 3}"))
                     for i in range(30)]
            await shipper.done()
        return flows
    flows = asyncio.run(go())
    want = {f.response.headers["X-Request-Id"] for f in flows}

    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                             enable_auto_commit=False, consumer_timeout_ms=500)
    try:
        tps = [TopicPartition(settings.topic_requests, p)
               for p in sorted(consumer.partitions_for_topic(settings.topic_requests))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        got, partitions_by_ip = {}, {}
        deadline = time.monotonic() + 10
        while len(got) < len(want) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    event = parse_request_event(record.value)
                    got[event.event_id] = event
                    assert record.key == event.client_ip.encode()
                    partitions_by_ip.setdefault(event.client_ip, set()).add(record.partition)
    finally:
        consumer.close()
    assert set(got) == want
    assert all(len(parts) == 1 for parts in partitions_by_ip.values())   # keyed by client IP
    assert {e.route for e in got.values()} == {"/items/{id}"}
