"""GCRA rate limiting (inline/gcra.py, the addon in inline/ratelimit.py)."""

from __future__ import annotations

import asyncio
import json

import pytest
from mitmproxy import exceptions, http
from mitmproxy.test import taddons

from gatewatch.settings import RateLimit as RateLimitSetting
from inline.flowstate import get_facts
from inline.ratelimit import (
    GcraLimiter,
    RateLimit,
    RateSpec,
    format_rate_limit,
    gcra,
    parse_rate_limit,
    retry_after_header,
)
from inline.routes import Routes
from inline_testkit import make_flow, run_flow


def test_parse_rate_limit():
    assert parse_rate_limit("50:100") == RateSpec(50.0, 100)
    assert parse_rate_limit(" 0.5:1 ") == RateSpec(0.5, 1)
    assert parse_rate_limit("off") is None
    assert parse_rate_limit(format_rate_limit(RateLimitSetting(rate_per_s=2.5, burst=7))) == RateSpec(2.5, 7)
    for bad in ["", "50", "x:1", "1:x", "0:5", "-1:5", "5:0", "nan:3", "inf:3", "1:2.5"]:
        with pytest.raises(ValueError):
            parse_rate_limit(bad)


def test_gcra_allows_burst_then_one_per_interval():
    spec = RateSpec(rate_per_s=10.0, burst=3)   # T = 0.1 s
    tat, now = None, 100.0
    for _ in range(3):
        allowed, tat, wait = gcra(tat, now, spec)
        assert allowed and wait == 0.0
    allowed, same, wait = gcra(tat, now, spec)
    assert not allowed and same == tat
    assert wait == pytest.approx(0.1)
    allowed, tat, _ = gcra(tat, now + 0.1, spec)  # one interval later: one more
    assert allowed
    assert not gcra(tat, now + 0.1, spec)[0]


def test_gcra_recovers_fully_after_idle():
    spec = RateSpec(rate_per_s=2.0, burst=2)
    tat = None
    for _ in range(2):
        _, tat, _ = gcra(tat, 0.0, spec)
    assert not gcra(tat, 0.0, spec)[0]
    # After burst / rate seconds the whole burst is available again.
    tat2 = tat
    for _ in range(2):
        allowed, tat2, _ = gcra(tat2, 1.0, spec)
        assert allowed
    assert not gcra(tat2, 1.0, spec)[0]


def test_gcra_sustained_rate():
    spec = RateSpec(rate_per_s=4.0, burst=1)
    tat, allowed_count = None, 0
    for i in range(128):   # 128 requests over 2 s, every 1/64 s (exact in binary floats)
        allowed, tat, _ = gcra(tat, i / 64, spec)
        allowed_count += allowed
    assert allowed_count == 8   # 4/s over 2 s


@pytest.mark.parametrize("wait, header", [(0.01, "1"), (1.0, "1"), (1.2, "2"), (59.9, "60")])
def test_retry_after_header(wait, header):
    assert retry_after_header(wait) == header


def test_limiter_sweeps_expired_keys():
    limiter = GcraLimiter(RateSpec(1.0, 2), sweep_every_s=10.0)
    for i in range(50):
        assert limiter.hit(f"10.0.0.{i}", now=0.0) == 0.0
    assert len(limiter) == 50
    limiter.hit("10.0.0.200", now=11.0)   # a sweep is due: every TAT (<= 1.0) has passed
    assert len(limiter) == 1


def test_limiter_sweeps_early_when_full():
    limiter = GcraLimiter(RateSpec(1.0, 1), sweep_every_s=1000.0, max_keys=10)
    limiter.hit("warm-up", now=0.0)
    for i in range(10):
        limiter.hit(f"k{i}", now=5.0)
    limiter.hit("one-more", now=7.0)   # full: a sweep runs although the period is not over
    assert len(limiter) == 1


def test_limiter_counts_refusals():
    limiter = GcraLimiter(RateSpec(1.0, 1))
    assert limiter.hit("a", 0.0) == 0.0
    assert limiter.hit("a", 0.0) == pytest.approx(1.0)
    assert limiter.refused == 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_addon_per_ip_and_per_principal():
    async def go():
        clock = FakeClock()
        routes, addon = Routes(), RateLimit(clock=clock)
        with taddons.context(routes, addon) as tctx:
            tctx.configure(addon, gatewatch_ip_rate_limit="1:2", gatewatch_principal_rate_limit="1:3")
            statuses = []
            for _ in range(3):
                flow = await run_flow(tctx, [routes, addon], make_flow(peer="10.0.0.1"))
                statuses.append(flow.response.status_code)
            assert statuses == [200, 200, 429]
            assert flow.response.headers["Retry-After"] == "1"
            assert json.loads(flow.response.content) == {"error": "rate_limited", "scope": "ip", "policy": "ip",
                                                         "retry_after_s": 1}
            assert get_facts(flow).answered_by == "rate_limit"
            # Another IP has its own budget.
            other = await run_flow(tctx, [routes, addon], make_flow(peer="10.0.0.2"))
            assert other.response.status_code == 200
            clock.now += 1.0
            again = await run_flow(tctx, [routes, addon], make_flow(peer="10.0.0.1"))
            assert again.response.status_code == 200

            # Per principal: one key used from many addresses.
            async def as_principal(peer):
                flow = make_flow(peer=peer)

                class SetPrincipal:
                    def request(self, f):
                        get_facts(f).principal = "key_alice"
                return await run_flow(tctx, [routes, SetPrincipal(), addon], flow)
            statuses = [(await as_principal(f"10.1.0.{i}")).response.status_code for i in range(4)]
            assert statuses == [200, 200, 200, 429]
    asyncio.run(go())


def test_addon_off_and_bad_options():
    async def go():
        routes, addon = Routes(), RateLimit()
        with taddons.context(routes, addon) as tctx:
            tctx.configure(addon, gatewatch_ip_rate_limit="off", gatewatch_principal_rate_limit="off")
            for _ in range(5):
                flow = await run_flow(tctx, [routes, addon], make_flow())
                assert flow.response.status_code == 200
            with pytest.raises(exceptions.OptionsError, match="gatewatch_ip_rate_limit"):
                tctx.configure(addon, gatewatch_ip_rate_limit="fast")
    asyncio.run(go())


def test_allow_listed_clients_are_not_limited():
    from inline import flowtags
    from inline.lists import Lists

    async def go():
        routes, lists, addon = Routes(), Lists(), RateLimit(clock=lambda: 100.0)
        with taddons.context(routes, lists, addon) as tctx:
            tctx.configure(addon, gatewatch_ip_rate_limit="1:1")
            tctx.configure(lists, gatewatch_allow_list=["192.0.2.0/24"])
            chain = [routes, lists, addon]
            allowed = [(await run_flow(tctx, chain, make_flow(peer="192.0.2.1"))).response.status_code
                       for _ in range(5)]
            others = [await run_flow(tctx, chain, make_flow(peer="198.51.100.1")) for _ in range(2)]
        assert allowed == [200] * 5
        assert [f.response.status_code for f in others] == [200, 429]
        assert flowtags.blocked_scope(others[1]) == "ip"
    asyncio.run(go())


# --- policies, tiers and the IETF RateLimit fields through the addon ------------------------

def test_allowed_responses_carry_ratelimit_fields():
    async def go():
        routes, addon = Routes(), RateLimit(clock=FakeClock())
        with taddons.context(routes, addon) as tctx:
            tctx.configure(addon, gatewatch_ip_rate_limit="1:3", gatewatch_principal_rate_limit="off")
            upstream = http.Response.make(200, b"{}", {"RateLimit": '"upstream";r=5'})
            flow = await run_flow(tctx, [routes, addon], make_flow(peer="10.0.0.9"), upstream=upstream)
            assert flow.response.status_code == 200
            assert flow.response.headers["RateLimit-Policy"] == '"ip";q=3;w=3'
            # The upstream's own items stay; ours are one more field line.
            assert flow.response.headers.get_all("RateLimit") == ['"upstream";r=5', '"ip";r=2;t=1']
            for _ in range(2):
                flow = await run_flow(tctx, [routes, addon], make_flow(peer="10.0.0.9"))
            assert flow.response.headers["RateLimit"] == '"ip";r=0;t=3'
            refused = await run_flow(tctx, [routes, addon], make_flow(peer="10.0.0.9"))
            assert refused.response.status_code == 429
            assert refused.response.headers["RateLimit"] == '"ip";r=0;t=1'
            assert refused.response.headers["Retry-After"] == "1"
            tctx.configure(addon, gatewatch_rate_limit_headers=False)
            quiet = await run_flow(tctx, [routes, addon], make_flow(peer="10.0.0.10"))
            assert "RateLimit" not in quiet.response.headers and "RateLimit-Policy" not in quiet.response.headers
    asyncio.run(go())


def test_route_policy_and_key_tiers(tmp_path):
    from gatewatch.keys import add_key
    from inline.authentication import Authentication

    keys = tmp_path / "keys.toml"
    free = add_key(keys, "key_free", "ann")
    gold = add_key(keys, "key_gold", "bea", tier="gold")

    async def go():
        routes, addon, auth = Routes(), RateLimit(clock=FakeClock()), Authentication()
        chain = [routes, addon, auth]
        with taddons.context(routes, addon, auth) as tctx:
            tctx.configure(auth, gatewatch_keys_file=str(keys), gatewatch_public_routes=["/login"])
            tctx.configure(addon, gatewatch_ip_rate_limit="off", gatewatch_principal_rate_limit="1:2",
                           gatewatch_principal_rate_limit_tiers=["gold=1:4"],
                           gatewatch_rate_limit_policies=json.dumps(
                               [{"name": "login", "route": "/login", "methods": ["POST"], "key": "ip",
                                 "limit": "1:1"}]))

            async def statuses(key, n, path="/users/1", method="GET", peer="10.2.0.1"):
                out = []
                for _ in range(n):
                    flow = await run_flow(tctx, chain, make_flow(path=path, method=method, peer=peer,
                                                                 headers={"X-API-Key": key} if key else None))
                    out.append(flow.response.status_code)
                return out, flow

            assert (await statuses(free, 3))[0] == [200, 200, 429]
            codes, flow = await statuses(gold, 5)
            assert codes == [200, 200, 200, 200, 429]
            assert get_facts(flow).tier == "gold"
            assert flow.response.headers["RateLimit-Policy"] == '"principal";q=4;w=4'
            # The login policy: POST /login per IP, whatever the key; GET /login is not counted by it.
            assert (await statuses(None, 2, "/login", "POST"))[0] == [200, 429]
            codes, flow = await statuses(None, 2, "/login", "GET")
            assert codes == [200, 200] and "RateLimit" not in flow.response.headers
            refused = (await statuses(None, 1, "/login", "POST", peer="10.2.0.1"))[1]
            assert json.loads(refused.response.content)["policy"] == "login"
    asyncio.run(go())


def test_policy_options_are_checked_at_configure():
    addon = RateLimit()
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError, match="gatewatch_rate_limit_policies"):
            tctx.configure(addon, gatewatch_rate_limit_policies='[{"name": "x", "key": "ip"}]')
        with pytest.raises(exceptions.OptionsError, match="gatewatch_principal_rate_limit_tiers"):
            tctx.configure(addon, gatewatch_principal_rate_limit_tiers=["gold"])
        with pytest.raises(exceptions.OptionsError, match="redis_url"):
            tctx.configure(addon, gatewatch_rate_limit_redis_url="http://127.0.0.1:6379")
        with pytest.raises(exceptions.OptionsError, match="timeout_ms"):
            tctx.configure(addon, gatewatch_rate_limit_redis_timeout_ms=0)


def test_settings_policies_reach_the_addon(monkeypatch):
    from gatewatch.settings import load_settings

    s = load_settings(rate_limit_policies=[{"name": "login", "route": "/login", "key": "ip", "limit": "5:10"}],
                      principal_rate_limit_tiers={"gold": "1000:2000", "internal": None})
    for name, value in s.to_env().items():
        monkeypatch.setenv(name, value)
    addon = RateLimit()
    with taddons.context(addon) as tctx:
        addon.configure(set(tctx.options.keys()))   # as the master does at start-up
        names = [(p.name, p.default) for p in addon.policies]
        assert names == [("ip", RateSpec(50.0, 100)), ("principal", RateSpec(100.0, 200)),
                         ("login", RateSpec(5.0, 10))]
        assert addon.policies[1].spec_for("gold") == RateSpec(1000.0, 2000)
        assert addon.policies[1].spec_for("internal") is None
