"""GCRA in Redis (inline/ratelimit_redis.py) against a real redis-server: the Lua script's
arithmetic, atomicity, expiry, script reloads, timeouts and failures, and the addon's
fail-open / fail-closed answers with their metric."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
from mitmproxy.test import taddons
from prometheus_client.parser import text_string_to_metric_families

from inline.chain import Chain
from inline.gcra import RateSpec, check_all
from inline.metrics import Metrics
from inline.ratelimit import RateLimit
from inline.ratelimit_redis import FAILURES_TO_OPEN, RETRY_S, BackendUnavailable, RedisGcra, RedisSpec
from inline.routes import Routes
from inline_testkit import make_flow, run_flow
from redis_testkit import RedisServer, redis_server  # noqa: F401  (fixture)

#: Generous per-call timeout where a test is not about timeouts (the machine is shared).
SLOW_OK = 2.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_script_matches_the_in_process_arithmetic(redis_server: RedisServer):
    """Same requests, same (pinned) times: Redis and check_all agree on every answer."""
    rng = random.Random(7)
    specs = {"a": RateSpec(10.0, 5), "b": RateSpec(2.0, 3), "c": RateSpec(50.0, 20)}

    async def go():
        backend = RedisGcra(RedisSpec(redis_server.url, SLOW_OK, "t1:"))
        tats: dict[str, float | None] = {k: None for k in specs}
        now_us = 1_700_000_000_000_000
        try:
            for _ in range(400):
                now_us += rng.choice([0, 0, 1_000, 20_000, 100_000, 700_000])
                names = sorted(rng.sample(sorted(specs), rng.randint(1, 3)))
                got = await backend.check([(n, specs[n]) for n in names], now_us=now_us)
                want, new = check_all([tats[n] for n in names], now_us / 1e6, [specs[n] for n in names])
                assert got.allowed == want.allowed
                for g, w in zip(got.states, want.states):
                    assert g.remaining == w.remaining
                    assert g.reset_s == pytest.approx(w.reset_s, abs=2e-6)
                    assert g.retry_after_s == pytest.approx(w.retry_after_s, abs=2e-6)
                for n, tat in zip(names, new):
                    tats[n] = tat
        finally:
            await backend.close()
    asyncio.run(go())


def test_concurrent_checks_are_counted_exactly(redis_server: RedisServer):
    """300 concurrent requests from two clients (two gateways' worth of connections) against a
    burst of 50 that refills once every 1000 s: exactly 50 pass."""
    limit = RateSpec(0.001, 50)

    async def go():
        one = RedisGcra(RedisSpec(redis_server.url, SLOW_OK, "t2:"))
        two = RedisGcra(RedisSpec(redis_server.url, SLOW_OK, "t2:"))
        try:
            verdicts = await asyncio.gather(*[(one if i % 2 else two).check([("k", limit)])
                                              for i in range(300)])
            assert sum(v.allowed for v in verdicts) == 50
            pttl = await one.client.pttl("t2:k")
            assert 0 < pttl <= 50 * 1000 * 1000   # forgotten once the TAT has passed
            remaining = sorted(v.states[0].remaining for v in verdicts if v.allowed)
            assert remaining == list(range(50))
        finally:
            await one.close()
            await two.close()
    asyncio.run(go())


def test_script_survives_a_flushed_script_cache(redis_server: RedisServer):
    async def go():
        backend = RedisGcra(RedisSpec(redis_server.url, SLOW_OK, "t3:"))
        try:
            assert await backend.warm()
            assert (await backend.check([("k", RateSpec(1.0, 2))])).allowed
            await backend.client.script_flush()          # as after a Redis restart or failover
            verdict = await backend.check([("k", RateSpec(1.0, 2))])
            assert verdict.allowed and verdict.states[0].remaining == 0
            assert not (await backend.check([("k", RateSpec(1.0, 2))])).allowed
        finally:
            await backend.close()
    asyncio.run(go())


def test_hung_then_dead_redis_raises_backend_unavailable(redis_server: RedisServer):
    clock = FakeClock()

    async def go():
        backend = RedisGcra(RedisSpec(redis_server.url, 0.05, "t4:"), clock=clock)
        try:
            assert await backend.warm()
            redis_server.pause()
            reasons = []
            for _ in range(FAILURES_TO_OPEN + 2):
                with pytest.raises(BackendUnavailable) as err:
                    await backend.check([("k", RateSpec(1.0, 1))])
                reasons.append(err.value.reason)
            assert reasons == ["timeout"] * FAILURES_TO_OPEN + ["down", "down"]
            redis_server.resume()
            clock.now += RETRY_S                          # the pause is over: Redis is asked again
            # A fresh key: the timed-out calls on "k" reached Redis and may have run on resume.
            assert (await backend.check([("fresh", RateSpec(1.0, 1))])).allowed
            redis_server.kill()
            with pytest.raises(BackendUnavailable) as err:
                await backend.check([("k", RateSpec(1.0, 1))])
            assert err.value.reason == "error"
        finally:
            await backend.close()
    asyncio.run(go())


def metric_values(text: bytes, name: str) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples
            if s.name == name}


@pytest.mark.parametrize("fail_open", [True, False])
def test_addon_fails_open_or_closed_and_counts(redis_server: RedisServer, fail_open: bool):
    """With Redis up the limit holds across addon instances (two "processes"); with Redis
    killed, requests pass (fail open) or get 503 (fail closed), never 500, and are counted.
    The addons run inside a Chain, as under the minimal master, and the metric still finds them."""
    async def go():
        routes, metrics = Routes(), Metrics()
        first, second = RateLimit(), RateLimit()
        chain = Chain([routes, first, second, metrics])
        with taddons.context(chain) as tctx:
            tctx.configure(metrics, gatewatch_admin_port=0)
            for addon in (first, second):
                tctx.configure(addon, gatewatch_ip_rate_limit="0.001:3", gatewatch_principal_rate_limit="off",
                               gatewatch_rate_limit_redis_url=redis_server.url,
                               gatewatch_rate_limit_redis_timeout_ms=2000,
                               gatewatch_rate_limit_redis_prefix=f"t5{fail_open}:",
                               gatewatch_rate_limit_fail_open=fail_open)
            codes = []
            for i in range(5):   # alternate between the two limiters: they share one budget
                flow = await run_flow(tctx, [routes, first if i % 2 else second, metrics], make_flow(peer="10.5.0.1"))
                codes.append(flow.response.status_code)
            assert codes == [200, 200, 200, 429, 429]
            assert flow.response.headers["RateLimit"] == '"ip";r=0;t=1000'
            redis_server.kill()
            flows = [await run_flow(tctx, [routes, first, metrics], make_flow(peer="10.5.0.1")) for _ in range(4)]
            if fail_open:
                assert [f.response.status_code for f in flows] == [200] * 4
                assert all("RateLimit" not in f.response.headers for f in flows)
            else:
                assert [f.response.status_code for f in flows] == [503] * 4
                assert flows[0].response.headers["Retry-After"] == "1"
                assert json.loads(flows[0].response.content) == {"error": "unavailable",
                                                                 "detail": "rate limiter unavailable"}
            outcome = "fail_open" if fail_open else "fail_closed"
            errors = metric_values(metrics.scrape(), "gatewatch_ratelimit_backend_errors_total")
            assert errors[(("outcome", outcome), ("reason", "error"))] == FAILURES_TO_OPEN
            assert errors[(("outcome", outcome), ("reason", "down"))] == 4 - FAILURES_TO_OPEN
            limited = metric_values(metrics.scrape(), "gatewatch_rate_limited_total")
            assert limited == {(("scope", "ip"),): 2.0}     # 503s are not counted as rate limited
            for addon in (first, second):
                await addon.done()
    asyncio.run(go())
