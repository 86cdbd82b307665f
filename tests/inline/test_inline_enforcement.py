"""Decision store and enforcement (inline/enforcement.py)."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import pytest
from mitmproxy.test import taddons

from gatewatch.events import Decision, MalformedRecord
from inline.enforcement import DecisionStore, Enforcement, canonical_value
from inline.flowstate import get_facts
from inline.routes import Routes
from inline_testkit import make_flow, run_flow

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
T = NOW.timestamp()


def decision(scope="ip", value="192.0.2.1", action="ban", ttl_s=600.0, **kw) -> Decision:
    return Decision(scope=scope, value=value, action=action, created_at=NOW,
                    expires_at=NOW + timedelta(seconds=ttl_s), **kw)


def apply(store: DecisionStore, d: Decision, now: float = T) -> str:
    return store.apply(d.key().encode(), d.to_json(), now)


def test_canonical_value():
    assert canonical_value("ip", "::ffff:192.0.2.1") == "192.0.2.1"
    assert canonical_value("ip", "2001:DB8::0:1") == "2001:db8::1"
    assert canonical_value("prefix", "192.0.2.77/24") == "192.0.2.0/24"
    assert canonical_value("principal", "Key_A") == "Key_A"
    with pytest.raises(MalformedRecord):
        canonical_value("ip", "not-an-ip")
    with pytest.raises(MalformedRecord):
        canonical_value("prefix", "192.0.2.0/99")


def test_set_lookup_replace_and_tombstone():
    store = DecisionStore()
    first = decision()
    assert apply(store, first) == "set"
    assert store.lookup("ip", "192.0.2.1", T) == first
    assert store.match_request("192.0.2.1", "", T) == first
    assert store.match_request("192.0.2.2", "", T) is None
    second = decision(reason="again")
    apply(store, second)
    assert len(store) == 1 and store.lookup("ip", "192.0.2.1", T).id == second.id
    assert store.apply(b"ip:192.0.2.1", None, T) == "deleted"
    assert store.match_request("192.0.2.1", "", T) is None and len(store) == 0
    assert store.apply(b"ip:192.0.2.1", None, T) == "deleted"   # a repeated tombstone is harmless


def test_expiry_at_lookup_and_on_arrival():
    store = DecisionStore()
    apply(store, decision(ttl_s=60))
    assert store.match_request("192.0.2.1", "", T + 59) is not None
    assert store.match_request("192.0.2.1", "", T + 60) is None   # lapses on time, no message needed
    assert len(store) == 0
    # A decision that arrives already expired deletes the current one.
    apply(store, decision(ttl_s=600))
    assert apply(store, decision(ttl_s=10), now=T + 20) == "deleted"
    assert len(store) == 0


def test_sweep():
    store = DecisionStore()
    for i in range(5):
        apply(store, decision(value=f"192.0.2.{i}", ttl_s=10 * (i + 1)))
    assert store.sweep(T + 25) == 2
    assert len(store) == 3


def test_principal_and_prefix_matching():
    store = DecisionStore()
    ban_key = decision(scope="principal", value="key_bob")
    apply(store, ban_key)
    apply(store, decision(scope="prefix", value="198.51.100.0/24"))
    narrow = decision(scope="prefix", value="198.51.100.128/25")
    apply(store, narrow)
    apply(store, decision(scope="prefix", value="2001:db8:1::/64"))
    assert store.match_request("192.0.2.9", "key_bob", T) == ban_key
    assert store.match_request("192.0.2.9", "key_alice", T) is None
    assert store.match_request("198.51.100.200", "", T) == narrow   # longest prefix first
    assert store.match_request("198.51.100.7", "", T).value == "198.51.100.0/24"
    assert store.match_request("198.51.101.7", "", T) is None
    assert store.match_request("2001:db8:1::abcd", "", T) is not None
    assert store.match_request("2001:db8:2::abcd", "", T) is None
    store.apply(b"prefix:198.51.100.128/25", None, T)
    assert store.match_request("198.51.100.200", "", T).value == "198.51.100.0/24"


def test_only_bans_are_enforced_but_all_scopes_stored():
    store = DecisionStore()
    apply(store, decision(action="throttle"))
    apply(store, decision(scope="username", value="ab" * 32))
    apply(store, decision(scope="country", value="XX"))
    assert len(store) == 3
    assert store.lookup("ip", "192.0.2.1", T).action == "throttle"
    assert store.match_request("192.0.2.1", "", T) is None


@pytest.mark.parametrize("key, value", [
    (b"ip:192.0.2.1", b"not json"),
    (b"ip:192.0.2.1", b'{"scope": "ip"}'),
    (b"ip:192.0.2.1", b'{"scope": "planet", "value": "x", "created_at": "2026-01-01T00:00:00Z", '
                      b'"expires_at": "2027-01-01T00:00:00Z"}'),
    (None, None),
    (b"nocolon", None),
    (b"galaxy:x", None),
    (b"ip:not-an-ip", None),
    (b"\xff:x", None),
    (b"ip:192.0.2.9", decision().to_json()),   # key is not the decision's scope:value
])
def test_malformed_messages_raise(key, value):
    store = DecisionStore()
    with pytest.raises(MalformedRecord):
        store.apply(key, value, T)


def test_addon_counts_malformed_and_keeps_going():
    addon = Enforcement()
    addon.apply(b"ip:192.0.2.1", b"garbage", T)
    addon.apply(None, None, T)
    d = decision()
    addon.apply(d.key().encode(), d.to_json(), T)
    assert addon.stats.malformed == 2 and addon.stats.applied == 1
    assert addon.store.match_request("192.0.2.1", "", T) == d


def test_addon_answers_403_with_decision():
    async def go():
        routes, addon = Routes(), Enforcement()
        with taddons.context(routes, addon) as tctx:
            tctx.configure(addon, gatewatch_bootstrap_servers="127.0.0.1:1")
            live = Decision(scope="ip", value="10.9.8.7", created_at=datetime.now(timezone.utc),
                            expires_at=datetime.now(timezone.utc) + timedelta(minutes=10))
            addon.apply(live.key().encode(), live.to_json(), datetime.now(timezone.utc).timestamp())
            blocked = await run_flow(tctx, [routes, addon], make_flow(peer="::ffff:10.9.8.7"))
            passed = await run_flow(tctx, [routes, addon], make_flow(peer="10.9.8.6"))
        assert blocked.response.status_code == 403
        body = json.loads(blocked.response.content)
        assert body == {"error": "blocked", "decision_id": live.id, "scope": "ip",
                        "expires_at": live.expires_at.isoformat()}
        assert 1 <= int(blocked.response.headers["Retry-After"]) <= 600
        facts = get_facts(blocked)
        assert (facts.answered_by, facts.decision_id) == ("decision", live.id)
        assert passed.response.status_code == 200
        assert addon.stats.blocked == 1
    asyncio.run(go())


def test_fail_closed_before_load():
    async def go():
        routes, addon = Routes(), Enforcement()
        with taddons.context(routes, addon) as tctx:
            tctx.configure(addon, gatewatch_decisions_fail_open=False)
            closed = await run_flow(tctx, [routes, addon], make_flow())
            addon.loaded = True
            opened = await run_flow(tctx, [routes, addon], make_flow())
            tctx.configure(addon, gatewatch_decisions_fail_open=True)
            addon.loaded = False
            fail_open = await run_flow(tctx, [routes, addon], make_flow())
        assert closed.response.status_code == 503 and closed.response.headers["Retry-After"] == "1"
        assert opened.response.status_code == 200
        assert fail_open.response.status_code == 200
    asyncio.run(go())


def test_feed_retries_in_background_when_broker_is_down():
    """running() with no broker: no exception, requests still served, retries counted, done() ends it."""
    async def go():
        routes, addon = Routes(), Enforcement()
        with taddons.context(routes, addon) as tctx:
            tctx.configure(addon, gatewatch_bootstrap_servers="127.0.0.1:1")
            addon.running()
            for _ in range(100):
                if addon.stats.reconnects >= 2:
                    break
                await asyncio.sleep(0.05)
            flow = await run_flow(tctx, [routes, addon], make_flow())
            await addon.done()
        assert addon.stats.reconnects >= 2
        assert flow.response.status_code == 200
        assert addon._task is None
    asyncio.run(go())
