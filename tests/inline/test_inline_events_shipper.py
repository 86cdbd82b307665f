"""Request events and their shipping (inline/events_shipper.py)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from mitmproxy import http
from mitmproxy.test import taddons

from gatewatch.events import parse_request_event, request_key
from gatewatch.keys import add_key
from inline.authentication import Authentication
from inline.enforcement import Enforcement
from inline.events_shipper import EventShipper, ShipperStats, build_event, error_status
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
                           gatewatch_topic_requests=settings.topic_requests,
                           gatewatch_spool_dir=str(settings.chdb_path.parent / "spool"))
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
                    assert record.key == request_key(event) == event.client_ip.encode()  # anonymous
                    partitions_by_ip.setdefault(event.client_ip, set()).add(record.partition)
    finally:
        consumer.close()
    assert set(got) == want
    assert all(len(parts) == 1 for parts in partitions_by_ip.values())   # keyed by client IP
    assert {e.route for e in got.values()} == {"/items/{id}"}


# --- broker outage, spool, restart ------------------------------------------------------

async def until(condition, timeout_s: float = 20.0) -> bool:
    """Poll ``condition`` every 50 ms for at most ``timeout_s``; its last value."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return condition()


def topic_events(bootstrap: str, topic: str, want: int) -> list[tuple[int, int, str]]:
    """``(partition, offset, path)`` of request events on ``topic``, read until ``want`` or 10 s."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    out = []
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + 10
        while len(out) < want and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                out.extend((r.partition, r.offset, parse_request_event(r.value).path) for r in records)
    finally:
        consumer.close()
    return out


def shipper_options(bootstrap: str, topic: str, spool: Path, **kw) -> dict:
    return dict(gatewatch_bootstrap_servers=bootstrap, gatewatch_topic_requests=topic,
                gatewatch_spool_dir=str(spool), **kw)


def test_broker_outage_spools_then_sends_everything_once_in_order(tmp_path):
    """Kill the broker, keep accepting events (they go to the disk spool), restart an
    empty broker on the same port (topics re-created): every event accepted during and
    after the outage reaches the new broker's topic exactly once, in acceptance order
    within each partition (anonymous events are keyed by client IP)."""
    from gatewatch.broker import create_topics, start_tansu
    from gatewatch.netutil import free_port, wait_for_port
    from gatewatch.settings import load_settings

    port = free_port()
    s = load_settings(bootstrap_servers=f"127.0.0.1:{port}")
    broker = start_tansu("127.0.0.1", port, tmp_path / "tansu-1.log")

    async def go():
        nonlocal broker
        wait_for_port("127.0.0.1", port, 10)
        create_topics(s)
        routes, shipper = Routes(), EventShipper()
        with taddons.context(routes, shipper) as tctx:
            tctx.configure(shipper, **shipper_options(s.bootstrap_servers, s.topic_requests, tmp_path / "spool"))
            shipper.running()

            async def send(first: int, n: int) -> None:
                for i in range(first, first + n):
                    await run_flow(tctx, [routes, shipper], make_flow(f"/items/{i}", peer=f"10.0.0.{i % 3}"))
            await send(0, 20)
            assert await until(lambda: shipper.stats.sent == 20)
            broker.kill()
            broker.wait()
            await send(20, 30)                                 # accepted during the outage
            assert await until(lambda: shipper.stats.spooled >= 30 and shipper.spool_bytes() > 0), (shipper.stats, shipper.mode, shipper._inflight, len(shipper._held), len(shipper._failed), shipper.queue.qsize())
            assert shipper.stats.sent == 20
            broker = start_tansu("127.0.0.1", port, tmp_path / "tansu-2.log")   # empty: in-memory storage
            wait_for_port("127.0.0.1", port, 10)
            create_topics(s)
            await send(50, 10)
            assert await until(shipper.drained, 30)
            await send(60, 5)                                  # direct again
            await shipper.done()
        return shipper.stats
    try:
        stats = asyncio.run(go())
        got = topic_events(s.bootstrap_servers, s.topic_requests, 45)
    finally:
        broker.kill()
        broker.wait()
    paths = [p for _, _, p in got]
    assert sorted(paths, key=lambda p: int(p.rsplit("/", 1)[1])) == [f"/items/{i}" for i in range(20, 65)]
    assert len(paths) == len(set(paths))                        # exactly once
    for partition in {p for p, _, _ in got}:                    # acceptance order per partition
        numbers = [int(path.rsplit("/", 1)[1]) for p, _, path in sorted(got) if p == partition]
        assert numbers == sorted(numbers)
    assert stats.dropped == 0 and stats.sent == 65


def test_spool_survives_a_restart_and_is_sent_first(tmp_path, settings):
    """Events accepted while the broker is unreachable are kept on disk at shutdown;
    the next gateway run sends them, before its own events."""
    from gatewatch.netutil import free_port

    spool = tmp_path / "spool"

    async def run(bootstrap: str, first: int, n: int) -> ShipperStats:
        routes, shipper = Routes(), EventShipper()
        with taddons.context(routes, shipper) as tctx:
            tctx.configure(shipper, **shipper_options(bootstrap, settings.topic_requests, spool))
            shipper.running()
            for i in range(first, first + n):
                await run_flow(tctx, [routes, shipper], make_flow(f"/items/{i}", peer="10.0.0.9"))
            await shipper.done()
        return shipper.stats

    async def both() -> tuple[ShipperStats, ShipperStats]:   # one loop: mitmproxy's log handler keeps it
        return await run(f"127.0.0.1:{free_port()}", 0, 12), await run(settings.bootstrap_servers, 12, 3)
    down, up = asyncio.run(both())
    assert (down.sent, down.dropped) == (0, 0) and down.spooled == 12
    assert up.sent == 15 and up.dropped == 0
    got = topic_events(settings.bootstrap_servers, settings.topic_requests, 15)
    assert [p for _, _, p in sorted(got)] == [f"/items/{i}" for i in range(15)]   # one partition: one order


def test_full_spool_drops_and_counts_every_event(tmp_path):
    from gatewatch.netutil import free_port

    async def go():
        routes, shipper = Routes(), EventShipper()
        with taddons.context(routes, shipper) as tctx:
            tctx.configure(shipper, **shipper_options(f"127.0.0.1:{free_port()}", "t", tmp_path / "spool",
                                                      gatewatch_spool_max_bytes=3000))
            shipper.running()
            for i in range(20):
                await run_flow(tctx, [routes, shipper], make_flow(f"/items/{i}"))
            await until(lambda: shipper.stats.spooled + shipper.stats.dropped == 20, 5)
            await shipper.done()
        return shipper.stats
    stats = asyncio.run(go())
    assert stats.spooled > 0 and stats.drops["spool_full"] > 0
    assert stats.spooled + stats.dropped == 20 and stats.sent == 0


def test_fail_closed_refuses_when_events_cannot_be_recorded(tmp_path):
    async def go():
        routes, shipper = Routes(), EventShipper()
        with taddons.context(routes, shipper) as tctx:
            tctx.configure(shipper, gatewatch_events_fail_open=False, gatewatch_spool_dir=str(tmp_path))
            refused = await run_flow(tctx, [routes, shipper], make_flow())   # not running: nowhere to record
            shipper.queue = asyncio.Queue(maxsize=10)
            passed = await run_flow(tctx, [routes, shipper], make_flow())
        return refused, passed
    refused, passed = asyncio.run(go())
    assert refused.response.status_code == 503 and passed.response.status_code == 200


def test_without_a_spool_events_wait_in_memory_not_dropped(tmp_path, settings):
    """Another process owns the spool directory: the gateway runs without a spool and
    events wait in the bounded queue until the producer is up (nothing dropped)."""
    from gatewatch.spool import Spool

    owner = Spool(tmp_path / "spool", max_bytes=1000)   # stands for another gateway process

    async def go():
        routes, shipper = Routes(), EventShipper()
        with taddons.context(routes, shipper) as tctx:
            tctx.configure(shipper, **shipper_options(settings.bootstrap_servers, settings.topic_requests,
                                                      tmp_path / "spool"))
            shipper.running()
            assert shipper.spool is None
            for i in range(10):
                await run_flow(tctx, [routes, shipper], make_flow(f"/items/{i}"))
            await shipper.done()
        return shipper.stats
    try:
        stats = asyncio.run(go())
    finally:
        owner.close()
    assert (stats.sent, stats.dropped, stats.spooled) == (10, 0, 0)
