"""Upstream circuit breaker (inline/circuit_breaker.py): state machine, addon, real mitmdump."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import exceptions, http
from mitmproxy.test import taddons

from gatewatch.netutil import free_port
from gatewatch.settings import CircuitBreakerSettings, RateLimit
from inline.circuit_breaker import Breaker, BreakerSpec, CircuitBreaker, call_ok
from inline.flowstate import get_facts
from inline.routes import Routes
from inline_testkit import make_flow, mitmdump, run_flow

SPEC = BreakerSpec(window_s=10, min_calls=4, failure_rate=0.5, slow_call_s=2.0, open_s=5.0, half_open_probes=2)


def test_closed_until_enough_calls_then_opens_on_failure_rate():
    b = Breaker(SPEC)
    for t, ok in ((0.0, False), (0.1, False), (0.2, False)):   # 3 failures < min_calls
        assert b.allow(t) == 0
        b.record(t, ok)
    assert b.state == "closed"
    assert b.allow(0.3) == 0
    b.record(0.3, True)                                      # 4 calls, 3 failed: 75% ≥ 50%
    assert b.state == "open" and b.opened == 1
    assert b.allow(1.0) == pytest.approx(4.3)                # seconds until half-open
    assert b.allow(5.29) > 0


def test_successes_keep_it_closed_and_old_failures_slide_out():
    b = Breaker(SPEC)
    for i in range(3):
        b.record(float(i), False)
    b.record(20.0, False)   # the first three have left the 10 s window
    b.record(20.5, True)
    b.record(21.0, True)
    b.record(21.5, True)
    assert b.state == "closed" and b.failure_rate(21.5) == 0.25


def test_half_open_probes_close_or_reopen():
    b = Breaker(SPEC)
    for t in (0.0, 0.1, 0.2, 0.3):
        b.record(t, False)
    assert b.state == "open"
    assert b.allow(5.3) == 0 and b.state == "half_open"      # probe 1
    assert b.allow(5.4) == 0                                 # probe 2
    assert b.allow(5.5) > 0                                  # no more than half_open_probes
    b.record(5.6, True)
    assert b.state == "half_open"
    b.record(5.7, True)
    assert b.state == "closed" and b.failure_rate(5.7) is None   # fresh window
    for t in (6.0, 6.1, 6.2, 6.3):
        b.record(t, False)
    assert b.allow(11.3) == 0
    b.record(11.4, False)                                    # a failed probe reopens at once
    assert b.state == "open" and b.allow(11.5) == pytest.approx(4.9)


def test_lost_probe_is_replaced_after_open_s():
    b = Breaker(BreakerSpec(window_s=10, min_calls=1, failure_rate=1, open_s=1, half_open_probes=1))
    b.record(0, False)
    assert b.allow(1.0) == 0          # the probe's outcome never comes back
    assert b.allow(1.5) > 0
    assert b.allow(2.1) == 0          # replaced


def test_call_ok():
    assert call_ok(200, 0.1, 2.0) and call_ok(404, 0.1, 2.0)
    assert not call_ok(500, 0.1, 2.0) and not call_ok(503, 0.1, 2.0)
    assert not call_ok(None, 0.1, 2.0)          # connection error / timeout
    assert not call_ok(200, 2.5, 2.0)           # slow call


def test_bad_spec():
    with pytest.raises(ValueError):
        BreakerSpec(failure_rate=0)
    with pytest.raises(ValueError):
        BreakerSpec(min_calls=0)


@settings(max_examples=200, deadline=None)
@given(events=st.lists(st.tuples(st.floats(0, 3), st.booleans()), max_size=60))
def test_never_refuses_while_closed_and_never_opens_below_min_calls(events):
    """Property: a closed breaker lets every call through; it opens only with
    at least min_calls calls, at least failure_rate of them failed."""
    b, now, calls, failures = Breaker(SPEC), 0.0, 0, 0
    for step, ok in events:
        now += step
        state_before = b.state
        wait = b.allow(now)
        if state_before == "closed":
            assert wait == 0
        if wait == 0:
            b.record(now, ok)
        if state_before == "closed" and b.state == "open":
            assert calls + 1 >= SPEC.min_calls
        calls, failures = (0, 0) if b.state != "closed" else (calls + 1, failures + (not ok))


def test_addon_per_route_and_upstream_errors():
    async def go():
        clock = [100.0]
        routes, breaker = Routes(), CircuitBreaker(clock=lambda: clock[0])
        with taddons.context(routes, breaker) as tctx:
            tctx.configure(breaker, gatewatch_breaker_min_calls=3, gatewatch_breaker_failure_rate=0.5,
                           gatewatch_breaker_open_s=2.0, gatewatch_breaker_half_open_probes=1)
            chain = [routes, breaker]
            for _ in range(2):
                await run_flow(tctx, chain, make_flow("/orders/1"), upstream=http.Response.make(502))
            await run_flow(tctx, chain, make_flow("/orders/2"), upstream_error="Connection refused")
            refused = await run_flow(tctx, chain, make_flow("/orders/3"))
            other = await run_flow(tctx, chain, make_flow("/users/3"))       # another route is fine
            clock[0] += 2.5
            probe = await run_flow(tctx, chain, make_flow("/orders/4"))       # half-open probe succeeds
            after = await run_flow(tctx, chain, make_flow("/orders/5"))
            state = breaker.breakers["/orders/{id}"].state
            with pytest.raises(exceptions.OptionsError):
                tctx.configure(breaker, gatewatch_breaker_failure_rate=1.5)
        assert refused.response.status_code == 503
        assert refused.response.headers["Retry-After"] == "2"
        assert json.loads(refused.response.content)["route"] == "/orders/{id}"
        assert get_facts(refused).answered_by == "error"
        assert other.response.status_code == 200
        assert probe.response.status_code == 200 and after.response.status_code == 200
        assert state == "closed" and breaker.refused == 1
    asyncio.run(go())


class _Flaky(BaseHTTPRequestHandler):
    """``/orders/...`` answers 500 while ``failing`` is set, else 200; other paths 200."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    failing = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        status = 500 if self.path.startswith("/orders") and self.failing.is_set() else 200
        body = json.dumps({"status": status}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextmanager
def flaky_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_real_mitmdump_opens_and_recovers(tmp_path):
    """A real mitmdump in front of an upstream whose /orders route starts failing:
    500s pass through until the breaker opens, then 503 + Retry-After without
    calling the upstream, other routes unaffected; once the upstream heals, the
    half-open probes close the breaker again."""
    from gatewatch.settings import load_settings

    _Flaky.failing.clear()
    with flaky_upstream() as upstream:
        s = load_settings(
            bootstrap_servers=f"127.0.0.1:{free_port()}",   # no broker needed: events are not checked here
            listen_port=free_port(), upstream=upstream, keys_file=tmp_path / "keys.toml",
            public_routes=["/*"], spool_dir=tmp_path / "spool", admin_port=0,
            ip_rate_limit=RateLimit(rate_per_s=1000.0, burst=1000),
            circuit_breaker=CircuitBreakerSettings(window_s=30, min_calls=5, failure_rate=0.5, open_s=1.0,
                                                   half_open_probes=2))
        (tmp_path / "keys.toml").write_text("")
        with mitmdump(s, tmp_path / "mitmdump.log"), \
                httpx.Client(base_url=f"http://127.0.0.1:{s.listen_port}", timeout=5) as client:
            assert client.get("/orders/1").status_code == 200
            _Flaky.failing.set()
            statuses = []
            for i in range(20):   # bounded: the breaker must open within min_calls failures
                r = client.get(f"/orders/{i}")
                statuses.append(r.status_code)
                if r.status_code == 503:
                    break
            assert statuses[-1] == 503 and set(statuses[:-1]) == {500}
            assert len(statuses) - 1 <= 5
            assert int(r.headers["Retry-After"]) >= 1 and r.json()["error"] == "unavailable"
            assert client.get("/users/1").status_code == 200      # per route
            _Flaky.failing.clear()
            deadline = time.monotonic() + 10
            while client.get("/orders/9").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert [client.get(f"/orders/{i}").status_code for i in range(5)] == [200] * 5
    log = (tmp_path / "mitmdump.log").read_text()
    assert "Traceback" not in log and "Addon error" not in log, log
