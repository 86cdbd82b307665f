"""Allow entries (``gatewatch allowlist``) in the gateway: the enforcement addon through
mitmproxy's test context, then a real ``python -m inline.serve`` process in front of the
sample API with a real Tansu broker and real HTTP clients bound to 127.0.0.x.

An allow entry wins over a ban for the same value (both live on the topic under their
own keys) and over rate limits, exactly like the static allow-list; an unsigned one
is counted and ignored; its signed tombstone ends it.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import httpx
from mitmproxy.test import taddons

from gatewatch import decision_feed
from gatewatch.events import Decision
from gatewatch.keys import add_key
from gatewatch.settings import GatewatchSettings, RateLimit, load_settings
from gatewatch.signing import DecisionSigner
from inline import flowtags
from inline.enforcement import Enforcement
from inline.lists import Lists
from inline.ratelimit import RateLimit as RateLimitAddon
from inline.routes import Routes
from inline_testkit import make_flow, run_flow
from test_inline_decision_signing import gateway, metrics, produce, rejected, status, wait_until

SIGNER = DecisionSigner.from_settings(load_settings())   # the gateway's default (dev) key


def live(scope: str, value: str, action: str = "ban", ttl_s: float = 600) -> Decision:
    now = datetime.now(timezone.utc)
    return Decision(scope=scope, value=value, action=action, created_at=now,
                    expires_at=now + timedelta(seconds=ttl_s), detector="manual", origin="cli")


def signed(addon: Enforcement, d: Decision | None, key: bytes | None = None) -> None:
    """Apply ``d`` (or the tombstone of ``key``) to ``addon``, signed with the default key."""
    key = key if key is not None else d.key().encode()
    value = d.to_json() if d is not None else None
    addon.apply(key, value, time.time(), SIGNER.headers(key, value))


def test_allow_entries_win_over_decisions_and_rate_limits() -> None:
    async def go():
        routes, lists, enf, limit = Routes(), Lists(), Enforcement(), RateLimitAddon()
        chain = [routes, lists, enf, limit]
        with taddons.context(*chain) as tctx:
            tctx.configure(enf, gatewatch_bootstrap_servers="127.0.0.1:1", gatewatch_geo_lookup="geo_fixture:lookup")
            tctx.configure(lists, gatewatch_deny_list=["192.0.2.66/32"])
            tctx.configure(limit, gatewatch_ip_rate_limit="0.01:2")
            for d in (live("prefix", "203.0.113.0/24"), live("ip", "203.0.113.5"), live("country", "DE"),
                      live("ip", "192.0.2.66"),
                      live("ip", "203.0.113.5", "allow"), live("prefix", "192.0.2.0/24", "allow"),
                      live("asn", "AS64501", "allow")):
                signed(enf, d)
            assert len(enf.store) == 4 and len(enf.allowed) == 3   # ban and allow of one IP both kept

            async def answer(peer: str) -> tuple[int, object]:
                flow = await run_flow(tctx, chain, make_flow(peer=peer))
                return flow.response.status_code, flow
            code, flow = await answer("203.0.113.5")          # banned by ip and prefix, allow-listed
            assert code == 200 and flowtags.allow_listed(flow)
            assert (await answer("203.0.113.6"))[0] == 403     # the prefix ban still holds for the others
            # Rate limits skip allow-listed clients (burst 2, then 429 for the others).
            assert [(await answer("192.0.2.10"))[0] for _ in range(5)] == [200] * 5
            assert [(await answer("100.64.0.1"))[0] for _ in range(3)] == [200, 200, 429]
            assert (await answer("198.18.0.1"))[0] == 403      # geo_fixture: DE, banned by country
            assert (await answer("198.51.100.99"))[0] == 200   # geo_fixture: AS64501, allow-listed
            assert (await answer("192.0.2.66"))[0] == 403      # the static deny-list still answers first
            assert enf.stats.allow_listed == 7 and enf.stats.blocked == 2

            signed(enf, None, b"allow:ip:203.0.113.5")         # the allow entry's tombstone
            assert (await answer("203.0.113.5"))[0] == 403 and len(enf.allowed) == 2
            signed(enf, None, b"ip:203.0.113.5")               # a ban's tombstone leaves the allow entries
            assert len(enf.allowed) == 2
    asyncio.run(go())


def test_an_allow_message_under_a_ban_key_is_malformed() -> None:
    """Each key names its kind: a signed allow value under ``ip:…`` (or a ban under
    ``allow:ip:…``) is counted as malformed and changes nothing."""
    enf = Enforcement()
    allow, ban = live("ip", "192.0.2.1", "allow"), live("ip", "192.0.2.1")
    signed(enf, allow, key=b"ip:192.0.2.1")
    signed(enf, ban, key=b"allow:ip:192.0.2.1")
    assert enf.stats.malformed == 2 and len(enf.store) == 0 and len(enf.allowed) == 0
    enf.apply(allow.key().encode(), allow.to_json(), time.time())          # unsigned
    assert enf.stats.unsigned == 1 and len(enf.allowed) == 0


def test_gateway_process_honours_allow_entries(settings: GatewatchSettings, sample_api: str) -> None:
    """A real gateway: an allow entry beats a ban on the same IP and the rate limit; an
    unsigned one is ignored; a principal entry beats a principal ban; tombstones end them."""
    partner, other = "127.0.0.61", "127.0.0.62"
    raw_key = add_key(settings.keys_file, "key_partner", owner="partner")
    with gateway(settings, sample_api, ip_rate_limit=RateLimit(rate_per_s=0.01, burst=3)) as s:
        ban = live("ip", partner)
        decision_feed.publish(s, ban)
        decision_feed.publish(s, live("principal", "key_partner"))
        wait_until(lambda: status(s, partner) == 403, "the ban to block")

        forged = live("ip", partner, "allow")
        produce(s, forged.key().encode(), forged.to_json())              # unsigned: ignored
        wait_until(lambda: rejected(s).get("unsigned") == 1, "the unsigned allow entry to be rejected")
        assert status(s, partner) == 403

        decision_feed.publish(s, live("ip", partner, "allow"))
        wait_until(lambda: status(s, partner) == 200, "the allow entry to win over the ban")
        assert [status(s, partner) for _ in range(8)] == [200] * 8      # no rate limit either
        assert [status(s, other) for _ in range(5)][-1] == 429           # another client is limited
        found = metrics(s)
        assert found[("gatewatch_decisions_active", ())] == 2

        base = f"http://{s.listen_host}:{s.listen_port}"
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.63"), timeout=5) as client:
            get = lambda: client.get(f"{base}/health", headers={s.api_key_header: raw_key}).status_code  # noqa: E731
            assert get() == 403                                          # principal ban
            decision_feed.publish(s, live("principal", "key_partner", "allow"))
            wait_until(lambda: get() == 200, "the principal allow entry")
            refused = client.get(f"{base}/orders/1", headers={s.api_key_header: "wrong"})
            assert refused.status_code == 401 and "WWW-Authenticate" in refused.headers   # the gateway's 401
        assert metrics(s)[("gatewatch_allow_entries_active", ())] == 2

        key = f"allow:ip:{partner}".encode()
        produce(s, key, None, SIGNER.headers(key, None))                # the allow entry's signed tombstone
        wait_until(lambda: status(s, partner) == 403, "the ban to apply again")
        with httpx.Client(transport=httpx.HTTPTransport(local_address=partner), timeout=5) as client:
            assert client.get(f"{base}/health").json()["decision_id"] == ban.id
        assert metrics(s)[("gatewatch_allow_entries_active", ())] == 1
        assert metrics(s)[("gatewatch_requests_allow_listed_total", ())] >= 10
