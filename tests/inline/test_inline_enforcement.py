"""Decision store and enforcement (inline/enforcement.py)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta, timezone

import altcha
import pytest
from mitmproxy import exceptions, http
from mitmproxy.test import taddons

from gatewatch.events import Decision, MalformedRecord
from gatewatch.settings import load_settings
from gatewatch.signing import DecisionSigner
from inline import flowtags
from gatewatch.decision_store import DecisionStore, canonical_value
from inline.challenge import SOLUTION_HEADER
from inline.enforcement import Enforcement, load_geo_lookup
from inline.flowstate import get_facts
from inline.lists import Lists
from inline.login import Login, username_hash
from inline.routes import Routes
from inline_testkit import make_flow, run_flow

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
T = NOW.timestamp()
SIGNER = DecisionSigner.from_settings(load_settings())   # the gateway's default (dev) key


def signed_apply(addon: Enforcement, key: bytes | None, value: bytes | None, now: float) -> None:
    """``addon.apply`` of a message signed with the default key, as the feed passes it."""
    addon.apply(key, value, now, SIGNER.headers(key, value))


def decision(scope="ip", value="192.0.2.1", action="ban", ttl_s=600.0, **kw) -> Decision:
    return Decision(scope=scope, value=value, action=action, created_at=NOW,
                    expires_at=NOW + timedelta(seconds=ttl_s), **kw)


def apply(store: DecisionStore, d: Decision, now: float = T) -> str:
    return store.apply(d.key().encode(), d.to_json(), now)


def test_canonical_value():
    assert canonical_value("prefix", "192.0.2.77") == "192.0.2.0/24"          # bare address: default /24
    assert canonical_value("prefix", "2001:db8:1:2:3::9") == "2001:db8:1:2::/64"  # default /64
    assert canonical_value("prefix", "192.0.2.77", prefix_v4=16) == "192.0.0.0/16"
    assert canonical_value("prefix", "::ffff:192.0.2.0/120") == "192.0.2.0/24"
    assert canonical_value("asn", "AS64500") == canonical_value("asn", "64500") == "64500"
    assert canonical_value("country", "fr") == "FR"
    assert canonical_value("username", "ABCDEF") == "abcdef"
    for scope, bad in (("asn", "ASX"), ("asn", "99999999999"), ("country", "FRA"), ("country", "1a"),
                       ("username", "")):
        with pytest.raises(MalformedRecord):
            canonical_value(scope, bad)
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
    assert store.lookup("ip", "192.0.2.1", T).id == first.id
    assert store.match_request("192.0.2.1", "", T).id == first.id
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
    assert store.match_request("192.0.2.9", "key_bob", T).id == ban_key.id
    assert store.match_request("192.0.2.9", "key_alice", T) is None
    assert store.match_request("198.51.100.200", "", T).id == narrow.id   # longest prefix first
    assert store.match_request("198.51.100.7", "", T).value == "198.51.100.0/24"
    assert store.match_request("198.51.101.7", "", T) is None
    assert store.match_request("2001:db8:1::abcd", "", T) is not None
    assert store.match_request("2001:db8:2::abcd", "", T) is None
    store.apply(b"prefix:198.51.100.128/25", None, T)
    assert store.match_request("198.51.100.200", "", T).value == "198.51.100.0/24"


def test_throttle_and_challenge_are_not_bans_but_all_scopes_stored():
    store = DecisionStore()
    apply(store, decision(action="throttle"))
    apply(store, decision(scope="username", value="ab" * 32))
    apply(store, decision(scope="country", value="XX"))
    apply(store, decision(scope="ip", value="192.0.2.2", action="challenge"))
    assert len(store) == 4
    assert store.lookup("ip", "192.0.2.1", T).action == "throttle"
    assert store.match_request("192.0.2.1", "", T) is None
    assert store.match(T, client_ip="192.0.2.1").action == "throttle"
    assert store.match(T, client_ip="192.0.2.2").action == "challenge"


def test_a_ban_wins_over_a_challenge_and_a_challenge_over_a_throttle():
    store = DecisionStore()
    apply(store, decision(scope="ip", value="192.0.2.7", action="throttle"))
    apply(store, decision(scope="principal", value="key_a", action="challenge"))
    assert store.match(T, client_ip="192.0.2.7", principal="key_a").action == "challenge"
    apply(store, decision(scope="prefix", value="192.0.2.0/24"))
    assert store.match(T, client_ip="192.0.2.7", principal="key_a").action == "ban"


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
    signed_apply(addon, b"ip:192.0.2.1", b"garbage", T)
    signed_apply(addon, None, None, T)
    d = decision()
    signed_apply(addon, d.key().encode(), d.to_json(), T)
    assert addon.stats.malformed == 2 and addon.stats.applied == 1
    assert addon.store.match_request("192.0.2.1", "", T).id == d.id


def test_addon_ignores_unsigned_and_badly_signed_messages():
    """Only messages signed with an accepted key change the store; the others are counted."""
    addon = Enforcement()
    d = decision()
    key, value = d.key().encode(), d.to_json()
    wrong = DecisionSigner("dev", b"not-the-key")   # the right kid, the wrong secret
    addon.apply(key, value, T)                                   # unsigned
    addon.apply(key, value, T, wrong.headers(key, value))        # signed with another key
    addon.apply(key, value, T, [("gatewatch-sig", b"v1;kid=dev;hmac-sha256=" + b"0" * 64)])
    addon.apply(b"ip:192.0.2.2", value, T, SIGNER.headers(key, value))   # valid signature, other key
    assert (addon.stats.unsigned, addon.stats.bad_signature, addon.stats.applied) == (1, 3, 0)
    assert len(addon.store) == 0 and addon.stats.malformed == 0   # rejected before parsing
    signed_apply(addon, key, value, T)
    assert addon.store.match_request("192.0.2.1", "", T).id == d.id
    addon.apply(key, None, T)                                    # a forged tombstone
    addon.apply(key, None, T, wrong.headers(key, None))
    addon.apply(key, None, T, SIGNER.headers(key, b""))          # the signature of an empty value
    assert addon.store.match_request("192.0.2.1", "", T).id == d.id
    assert (addon.stats.unsigned, addon.stats.bad_signature) == (2, 5)
    signed_apply(addon, key, None, T)                            # the real tombstone
    assert addon.store.match_request("192.0.2.1", "", T) is None and addon.stats.deleted == 1


def test_addon_signing_options():
    """Rotation (an old key in gatewatch_decision_verify_keys), the migration mode
    (unsigned accepted, bad signatures still refused) and bad option values."""
    old = DecisionSigner("old", b"old-secret")
    d, other = decision(), decision(value="192.0.2.2")
    third = decision(value="192.0.2.3")
    addon = Enforcement()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, gatewatch_decision_signing_kid="new", gatewatch_decision_signing_key="new-secret",
                       gatewatch_decision_verify_keys='{"old": "old-secret"}')
        new = DecisionSigner("new", b"new-secret")
        for signer, dec in ((old, d), (new, other)):
            addon.apply(dec.key().encode(), dec.to_json(), T, signer.headers(dec.key().encode(), dec.to_json()))
        assert addon.stats.applied == 2 and len(addon.store) == 2
        addon.apply(third.key().encode(), third.to_json(), T)      # unsigned: refused while required
        assert addon.stats.unsigned == 1 and len(addon.store) == 2
        tctx.configure(addon, gatewatch_decision_signing_required=False)
        addon.apply(third.key().encode(), third.to_json(), T)      # migration: unsigned accepted
        assert len(addon.store) == 3
        forged = decision(value="192.0.2.4")
        addon.apply(forged.key().encode(), forged.to_json(), T,
                    SIGNER.headers(forged.key().encode(), forged.to_json()))   # "dev" is not accepted here
        assert addon.stats.bad_signature == 1 and len(addon.store) == 3
        for bad in ({"gatewatch_decision_verify_keys": "[1]"}, {"gatewatch_decision_verify_keys": "{"},
                    {"gatewatch_decision_signing_kid": "bad kid"}, {"gatewatch_decision_signing_key": ""}):
            with pytest.raises(exceptions.OptionsError, match="decision signing"):
                tctx.configure(addon, **bad)


def test_addon_answers_403_with_decision():
    async def go():
        routes, addon = Routes(), Enforcement()
        with taddons.context(routes, addon) as tctx:
            tctx.configure(addon, gatewatch_bootstrap_servers="127.0.0.1:1")
            live = Decision(scope="ip", value="10.9.8.7", created_at=datetime.now(timezone.utc),
                            expires_at=datetime.now(timezone.utc) + timedelta(minutes=10))
            signed_apply(addon, live.key().encode(), live.to_json(), datetime.now(timezone.utc).timestamp())
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


def test_the_decisions_feed_waits_the_gateway_fetch_wait(monkeypatch):
    """The gateway's decisions follower has its own, shorter fetch wait (the last hop of
    every decision loop; Tansu does not wake a waiting fetch), taken from the settings."""
    assert load_settings().gateway_fetch_max_wait_ms == 5 < load_settings().fetch_max_wait_ms
    monkeypatch.setenv("GATEWATCH_GATEWAY_FETCH_MAX_WAIT_MS", "7")
    addon = Enforcement()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, gatewatch_bootstrap_servers="127.0.0.1:1")
        assert tctx.options.gatewatch_fetch_max_wait_ms == 7
        assert addon.spec is not None and addon.spec.fetch_max_wait_ms == 7
        with pytest.raises(exceptions.OptionsError, match="within 0..60000"):
            tctx.configure(addon, gatewatch_fetch_max_wait_ms=-1)


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


def test_every_scope_matches():
    store = DecisionStore(prefix_v4=24, prefix_v6=64)
    ids = {}
    for scope, value in (("ip", "192.0.2.1"), ("prefix", "198.51.100.9"), ("prefix", "2001:db8:7:7::1"),
                         ("principal", "key_bob"), ("username", "AB" * 32), ("asn", "AS64500"),
                         ("country", "fr")):
        d = decision(scope=scope, value=value)
        apply(store, d)
        ids[(scope, value)] = d.id
    m = lambda **kw: (lambda a: a and a.id)(store.match(T, **kw))  # noqa: E731
    assert m(client_ip="192.0.2.1") == ids[("ip", "192.0.2.1")]
    assert m(client_ip="198.51.100.200") == ids[("prefix", "198.51.100.9")]         # same /24
    assert m(client_ip="2001:db8:7:7:ffff::1") == ids[("prefix", "2001:db8:7:7::1")]  # same /64
    assert m(client_ip="2001:db8:7:8::1") is None
    assert m(principal="key_bob") == ids[("principal", "key_bob")]
    assert m(username_hash="ab" * 32) == ids[("username", "AB" * 32)]
    assert m(client_ip="203.0.113.1", geo=(64500, None)) == ids[("asn", "AS64500")]
    assert m(client_ip="203.0.113.1", geo=("AS64500", "DE")) == ids[("asn", "AS64500")]
    assert m(client_ip="203.0.113.1", geo=(None, "FR")) == ids[("country", "fr")]
    assert m(client_ip="203.0.113.1", geo=(64501, "DE")) is None
    assert m(client_ip="203.0.113.1", geo=None) is None
    assert store.has_geo


def test_ban_wins_over_throttle_whatever_the_scope_order():
    store = DecisionStore()
    apply(store, decision(scope="ip", value="192.0.2.1", action="throttle"))
    ban = decision(scope="country", value="FR")
    apply(store, ban)
    assert store.match(T, client_ip="192.0.2.1", geo=(None, "FR")).id == ban.id
    assert store.match(T, client_ip="192.0.2.1").action == "throttle"


def test_lookups_per_request_do_not_grow_with_the_number_of_decisions():
    """O(1) per scope: the number of dict probes of one request is the same with
    10 and with 20,000 active decisions (prefix: one probe per distinct length)."""
    def probes(n: int) -> int:
        store = DecisionStore()
        for i in range(n):
            apply(store, decision(scope="ip", value=f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}"))
            apply(store, decision(scope="prefix", value=f"172.{i % 16 + 16}.{(i // 16) % 256}.0/24"))
        calls = 0
        real = store.lookup

        def counting(*args):
            nonlocal calls
            calls += 1
            return real(*args)
        store.lookup = counting
        store.match(T, client_ip="198.51.100.1", principal="p", username_hash="u", geo=(1, "FR"))
        return calls
    assert probes(10) == probes(20_000) == 4   # ip, prefix /24, principal, username (no geo decisions)


def test_expiry_heap_drains_only_what_expired():
    store = DecisionStore()
    for i in range(100):
        apply(store, decision(value=f"192.0.2.{i}", ttl_s=10 + i))
    apply(store, decision(value="192.0.2.0", ttl_s=1000))   # replaced: its old heap entry is stale
    assert store.expire(T + 10) == 0                           # .0 now lives to T+1000
    assert store.expire(T + 20) == 10                          # .1 … .10
    assert len(store) == 90
    assert store.expire(T + 500) == 89 and len(store) == 1


def test_geo_hook_loading():
    assert load_geo_lookup("") is None
    assert load_geo_lookup("geo_fixture:lookup")("203.0.113.9") == (64500, "FR")
    for bad in ("geo_fixture", "no_such_module_x:f", "geo_fixture:missing", "geo_fixture:NOT_CALLABLE"):
        with pytest.raises(ValueError):
            load_geo_lookup(bad)


def live(scope: str, value: str, action: str = "ban", ttl_s: float = 600) -> Decision:
    now = datetime.now(timezone.utc)
    return Decision(scope=scope, value=value, action=action, created_at=now,
                    expires_at=now + timedelta(seconds=ttl_s))


def test_addon_scopes_throttle_allow_list_and_username_stage(tmp_path):
    """The whole chain as gateway.py orders it: lists, enforcement (ip/prefix/asn/country,
    throttle), rate limit, login, then the username stage."""
    async def go():
        routes, lists, enf, login = Routes(), Lists(), Enforcement(), Login()
        chain = [routes, lists, enf, login, enf.after_login]
        with taddons.context(*chain) as tctx:
            tctx.configure(enf, gatewatch_bootstrap_servers="127.0.0.1:1", gatewatch_throttle_rate_limit="0.01:2",
                           gatewatch_geo_lookup="geo_fixture:lookup")
            tctx.configure(lists, gatewatch_allow_list=["192.0.2.0/24"])
            tctx.configure(login, gatewatch_username_hash_key="k")
            decisions = [live("prefix", "203.0.113.0"), live("country", "DE"), live("asn", "AS64501"),
                         live("ip", "100.64.0.7", "throttle"), live("ip", "192.0.2.5"),
                         live("username", username_hash("k", "victim"))]
            for d in decisions:
                signed_apply(enf, d.key().encode(), d.to_json(), time.time())

            async def status(peer: str, **kw) -> tuple[int, object]:
                flow = await run_flow(tctx, chain, make_flow(peer=peer, **kw))
                return flow.response.status_code, flow
            assert (await status("203.0.113.99"))[0] == 403            # prefix /24 from a bare address
            code, flow = await status("198.18.0.1")                      # geo_fixture: 198.18/15 is in DE
            assert code == 403 and json.loads(flow.response.content)["scope"] == "country"
            assert flowtags.blocked_scope(flow) == "country"
            assert (await status("198.51.100.99"))[0] == 403           # AS64501 per geo_fixture
            assert [(await status("100.64.0.7"))[0] for _ in range(4)] == [200, 200, 429, 429]
            code, flow = await status("100.64.0.7")
            assert json.loads(flow.response.content)["decision_id"] == decisions[3].id
            assert get_facts(flow).answered_by == "rate_limit"
            assert (await status("192.0.2.5"))[0] == 200               # allow-list wins over a ban
            login_body = lambda user: dict(path="/login", method="POST",  # noqa: E731
                                           headers={"Content-Type": "application/json"},
                                           body=json.dumps({"username": user, "password": "x"}).encode())
            code, flow = await status("203.0.114.1", **login_body("Victim"))
            assert code == 403 and get_facts(flow).decision_id == decisions[5].id
            assert (await status("203.0.114.1", **login_body("someone")))[0] == 200
            assert (await status("192.0.2.9", **login_body("victim")))[0] == 200   # allow-listed
        assert enf.stats.throttled == 3 and enf.stats.blocked == 4
    asyncio.run(go())


def test_username_throttle_counts_the_account_across_sources():
    """A distributed attack tries one account from many addresses, a few attempts each:
    the username throttle's bucket is the account, so the 4th attempt is refused
    whatever address it comes from. The owner's address, which logged in successfully
    before, keeps a budget of its own; another account and a throttle on an ASN (per
    address) keep theirs too."""
    async def go():
        routes, enf, login = Routes(), Enforcement(), Login()
        chain = [routes, enf, login, enf.after_login]
        with taddons.context(*chain) as tctx:
            tctx.configure(enf, gatewatch_bootstrap_servers="127.0.0.1:1",
                           gatewatch_throttle_rate_limit="0.01:2",
                           gatewatch_username_throttle_rate_limit="0.01:3",
                           gatewatch_geo_lookup="geo_fixture:lookup")
            tctx.configure(login, gatewatch_username_hash_key="k")
            refused = http.Response.make(401, b'{"error":"bad credentials"}', {"Content-Type": "application/json"})

            async def attempt(peer: str, user: str, right: bool = False) -> int:
                flow = await run_flow(tctx, chain, make_flow(
                    peer=peer, path="/login", method="POST", headers={"Content-Type": "application/json"},
                    body=json.dumps({"username": user, "password": "x"}).encode()),
                    upstream=None if right else refused)
                return flow.response.status_code

            owner = "198.18.200.7"
            assert await attempt(owner, "victim", right=True) == 200       # before the attack
            assert enf.recognized.recognized(username_hash("k", "victim"), owner, time.time())
            throttled = live("username", username_hash("k", "victim"), "throttle")
            for d in (throttled, live("asn", "AS64501", "throttle")):
                signed_apply(enf, d.key().encode(), d.to_json(), time.time())
            # one attempt from each of six addresses: the account's burst of 3, then 429
            assert [await attempt(f"203.0.113.{i}", "victim") for i in range(1, 7)] == [401] * 3 + [429] * 3
            # the owner's address: its own budget of 2 (gatewatch_throttle_rate_limit)
            assert [await attempt(owner, "victim", right=True) for _ in range(3)] == [200, 200, 429]
            assert await attempt("203.0.114.1", "someone-else") == 401
            # AS64501 (geo_fixture: 198.51.100.0/24): each address has its own budget of 2
            statuses = [await attempt(peer, "bob") for peer in ("198.51.100.1", "198.51.100.1",
                                                                 "198.51.100.1", "198.51.100.2")]
            assert statuses == [401, 401, 429, 401]
        assert enf.stats.throttled == 5
    asyncio.run(go())


def test_username_throttle_is_per_address_by_default():
    """With ``gatewatch_username_throttle_rate_limit`` off (the default) a username
    throttle gives each address its own budget (gatewatch_throttle_rate_limit)."""
    async def go():
        routes, enf, login = Routes(), Enforcement(), Login()
        chain = [routes, enf, login, enf.after_login]
        with taddons.context(*chain) as tctx:
            tctx.configure(enf, gatewatch_bootstrap_servers="127.0.0.1:1", gatewatch_throttle_rate_limit="0.01:2")
            tctx.configure(login, gatewatch_username_hash_key="k")
            assert enf.username_throttle is None
            d = live("username", username_hash("k", "victim"), "throttle")
            signed_apply(enf, d.key().encode(), d.to_json(), time.time())

            async def attempt(peer: str) -> int:
                flow = await run_flow(tctx, chain, make_flow(
                    peer=peer, path="/login", method="POST", headers={"Content-Type": "application/json"},
                    body=json.dumps({"username": "victim", "password": "x"}).encode()))
                return flow.response.status_code

            assert [await attempt("203.0.113.1") for _ in range(3)] == [200, 200, 429]
            assert [await attempt(f"203.0.113.{i}") for i in range(2, 6)] == [200] * 4
    asyncio.run(go())


def test_username_challenge_spares_the_accounts_recognized_sources():
    """A ``username`` challenge stops login attempts on the account from new addresses until
    they carry a solved challenge; the owner's address, which logged in before, is spared
    (as for a username throttle)."""
    async def go():
        routes, enf, login = Routes(), Enforcement(), Login()
        chain = [routes, enf, login, enf.after_login]
        with taddons.context(*chain) as tctx:
            tctx.configure(enf, gatewatch_bootstrap_servers="127.0.0.1:1", gatewatch_challenge_cost=10)
            tctx.configure(login, gatewatch_username_hash_key="k")

            async def attempt(peer: str, solution: str | None = None) -> http.HTTPFlow:
                headers = {"Content-Type": "application/json"}
                if solution is not None:
                    headers[SOLUTION_HEADER] = solution
                return await run_flow(tctx, chain, make_flow(
                    peer=peer, path="/login", method="POST", headers=headers,
                    body=json.dumps({"username": "victim", "password": "x"}).encode()))

            owner = "198.18.200.7"
            assert (await attempt(owner)).response.status_code == 200   # logs in before the attack
            d = live("username", username_hash("k", "victim"), "challenge")
            signed_apply(enf, d.key().encode(), d.to_json(), time.time())
            flow = await attempt("203.0.113.1")
            body = json.loads(flow.response.content)
            assert flow.response.status_code == 403 and body["decision_id"] == d.id
            assert flowtags.blocked_scope(flow) == "challenge" and get_facts(flow).decision_id == d.id
            challenge = altcha.Challenge.from_dict(body["challenge"])
            solution = altcha.Payload(challenge, altcha.solve_challenge(challenge)).to_base64()
            passed = await attempt("203.0.113.1", solution)
            assert passed.response.status_code == 200 and SOLUTION_HEADER not in passed.request.headers
            assert (await attempt(owner)).response.status_code == 200
        assert (enf.stats.challenged, enf.stats.challenges_passed) == (1, 1)
    asyncio.run(go())


def test_broken_geo_hook_is_counted_and_fails_open():
    async def go():
        routes, enf = Routes(), Enforcement()
        with taddons.context(routes, enf) as tctx:
            tctx.configure(enf, gatewatch_geo_lookup="geo_fixture:broken")
            d = live("country", "DE")
            signed_apply(enf, d.key().encode(), d.to_json(), time.time())
            flow = await run_flow(tctx, [routes, enf], make_flow(peer="198.18.0.1"))
        assert flow.response.status_code == 200 and enf.stats.geo_errors == 1
    asyncio.run(go())
