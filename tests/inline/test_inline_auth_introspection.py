"""OAuth 2.0 token introspection (inline/introspection.py): pure parsing and caching
rules, and the introspector against the real authorization server process."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from urllib.parse import unquote_plus

import pytest

from auth_testkit import AUDIENCE, GATEWAY_CLIENT, auth_server, make_keys
from inline.bearer import accepted, rejected, unavailable
from inline.introspection import (
    IntrospectionError,
    Introspector,
    TtlCache,
    basic_credentials,
    cache_ttl,
    parse_introspection_policy,
    parse_introspection_response,
)


def policy(**overrides):
    args = {"url": "https://as.test/introspect", "client_id": "gw", "client_secret": "s"}
    args.update(overrides)
    return parse_introspection_policy(**args)


@pytest.mark.parametrize("overrides, message", [
    ({"url": "file:///etc/passwd"}, "url"),
    ({"url": ""}, "url"),
    ({"client_id": " "}, "client_id"),
    ({"client_secret": ""}, "client_secret"),
    ({"principal_claims": [" "]}, "principal_claims"),
    ({"cache_max_ttl_s": -1}, "cache_max_ttl_s"),
    ({"negative_ttl_s": 86_401}, "negative_ttl_s"),
    ({"cache_max_entries": 0}, "cache_max_entries"),
    ({"max_in_flight": 0}, "max_in_flight"),
    ({"timeout_ms": 30_001}, "timeout_ms"),
])
def test_policy_refuses_bad_options(overrides, message):
    with pytest.raises(ValueError, match=message):
        policy(**overrides)


def test_secret_stays_out_of_repr():
    assert "hunter2" not in repr(policy(client_secret="hunter2"))


def test_basic_credentials_follow_rfc6749():
    value = basic_credentials("id:1", "p+ss w/ord")
    pair = base64.b64decode(value.removeprefix("Basic ")).decode()
    client_id, _, secret = pair.partition(":")      # the ':' in the id is encoded, so this splits right
    assert (unquote_plus(client_id), unquote_plus(secret)) == ("id:1", "p+ss w/ord")


NOW = 1_000_000.0


@pytest.mark.parametrize("body, expected", [
    ({"active": True, "sub": "u1", "exp": NOW + 60}, ("ok", "u1")),
    ({"active": True, "username": "bob", "client_id": "app"}, ("ok", "bob")),
    ({"active": True, "client_id": "app"}, ("ok", "app")),
    ({"active": True, "sub": "", "client_id": "app"}, ("ok", "app")),
    ({"active": False, "sub": "u1"}, ("invalid", "token is not active")),
    ({"active": True, "sub": "u1", "exp": NOW}, ("invalid", "token has expired")),
    ({"active": True, "sub": "u1", "exp": "later"}, ("invalid", "token has expired")),
    ({"active": True, "sub": "u1", "nbf": NOW + 5}, ("invalid", "not valid yet")),
    ({"active": True}, ("invalid", "no usable subject")),
    ({"active": True, "sub": 5}, ("invalid", "no usable subject")),
])
def test_parse_response(body, expected):
    verdict = parse_introspection_response(json.dumps(body).encode(), policy(), NOW)
    status, value = expected
    assert verdict.status == status
    if status == "ok":
        assert verdict.principal == value
    else:
        assert value in verdict.detail and verdict.error == "invalid_token"


def test_parse_response_audience():
    pol = policy(audiences=[AUDIENCE])
    ok = {"active": True, "sub": "u", "aud": ["x", AUDIENCE]}
    assert parse_introspection_response(json.dumps(ok).encode(), pol, NOW).status == "ok"
    for aud in ("x", None, 3, [3]):
        body = json.dumps({"active": True, "sub": "u", "aud": aud}).encode()
        assert parse_introspection_response(body, pol, NOW).detail == "token audience is not accepted"


@pytest.mark.parametrize("body", [b"", b"<html>", b"[]", b'{"sub": "u"}', b'{"active": "true"}',
                                  b'{"active": 1}', b"[" * 50_000])
def test_broken_responses_raise(body):
    with pytest.raises(IntrospectionError):
        parse_introspection_response(body, policy(), NOW)


def test_cache_ttl_bounds():
    pol = policy(cache_max_ttl_s=300, negative_ttl_s=30)
    assert cache_ttl(accepted("u", expires_at=NOW + 60), pol, NOW) == 60        # bounded by exp
    assert cache_ttl(accepted("u", expires_at=NOW + 3600), pol, NOW) == 300     # bounded by max TTL
    assert cache_ttl(accepted("u"), pol, NOW) == 300
    assert cache_ttl(accepted("u", expires_at=NOW - 5), pol, NOW) == 0
    assert cache_ttl(rejected("no"), pol, NOW) == 30
    assert cache_ttl(unavailable("down"), pol, NOW) == 0


def test_ttl_cache_expires_and_evicts_lru():
    cache: TtlCache[str, int] = TtlCache(max_entries=2)
    cache.put("a", 1, deadline=10)
    cache.put("b", 2, deadline=10)
    assert cache.get("a", now=5) == 1          # a is now the most recent
    cache.put("c", 3, deadline=10)             # evicts b
    assert cache.get("b", now=5) is None and cache.get("c", now=5) == 3
    assert cache.get("a", now=10) is None and len(cache) == 1


# --- against the real authorization server ----------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with auth_server(tmp_path_factory.mktemp("as"), *make_keys().values()) as s:
        yield s


def run_with(pol, body):
    introspector = Introspector(pol)

    async def go():
        try:
            return await body(introspector)
        finally:
            await introspector.close()
    return asyncio.run(go())


def test_introspection_positive_and_negative_caches(server):
    server.reset()
    good = server.issue(sub="user-7", expires_in=3600)
    machine = server.issue()                       # client credentials, no sub: client_id is the principal
    pol = parse_introspection_policy(url=f"{server.base}/introspect", client_id=GATEWAY_CLIENT[0],
                                     client_secret=GATEWAY_CLIENT[1])

    async def body(i: Introspector):
        now = time.time()
        first = await i.verify(good, now)
        assert (first.status, first.principal) == ("ok", "user-7")
        assert (await i.verify(machine, now)).principal == "app"
        assert (await i.verify(good, now)).principal == "user-7"      # cached
        assert server.stats()["introspect"] == 2
        bogus = await i.verify("no-such-token", now)
        assert (bogus.status, bogus.detail) == ("invalid", "token is not active")
        await i.verify("no-such-token", now)
        assert server.stats()["introspect"] == 3                      # negative answer cached too
        # Revocation shows after the positive cache entry expires (at most cache_max_ttl_s).
        server.revoke(good)
        assert (await i.verify(good, now)).status == "ok"
        assert (await i.verify(good, now + pol.cache_max_ttl_s)).status == "invalid"
        assert i.stats.hits == 3
    run_with(pol, body)


def test_positive_cache_never_outlives_the_token(server):
    server.reset()
    short = server.issue(sub="u-short", expires_in=2)
    pol = parse_introspection_policy(url=f"{server.base}/introspect", client_id=GATEWAY_CLIENT[0],
                                     client_secret=GATEWAY_CLIENT[1], cache_max_ttl_s=3600)

    async def body(i: Introspector):
        now = time.time()
        assert (await i.verify(short, now)).status == "ok"
        later = await i.verify(short, now + 3)      # past exp: the cache entry is gone, the server says no
        assert later.status == "invalid"
        assert server.stats()["introspect"] == 2
    run_with(pol, body)


def test_concurrent_requests_share_one_call(server):
    server.reset()
    token = server.issue(sub="u-many")
    server.faults(introspect_delay_ms=200)
    pol = parse_introspection_policy(url=f"{server.base}/introspect", client_id=GATEWAY_CLIENT[0],
                                     client_secret=GATEWAY_CLIENT[1])

    async def body(i: Introspector):
        verdicts = await asyncio.gather(*(i.verify(token, time.time()) for _ in range(40)))
        assert {v.principal for v in verdicts} == {"u-many"}
        assert server.stats()["introspect"] == 1
    run_with(pol, body)


@pytest.mark.parametrize("fault, client_secret", [
    ({"introspect_status": 503}, GATEWAY_CLIENT[1]),
    ({"introspect_delay_ms": 1500}, GATEWAY_CLIENT[1]),   # over the 300 ms timeout
    ({}, "wrong-secret"),                                  # the server answers 401 to the gateway
])
def test_endpoint_failures_are_unavailable_and_not_cached(server, fault, client_secret):
    server.reset()
    token = server.issue(sub="u-outage")
    server.faults(**fault)
    pol = parse_introspection_policy(url=f"{server.base}/introspect", client_id=GATEWAY_CLIENT[0],
                                     client_secret=client_secret, timeout_ms=300)

    async def body(i: Introspector):
        verdict = await i.verify(token, time.time())
        assert verdict.status == "unavailable" and i.stats.failures == 1
        assert len(i.positive) == 0 and len(i.negative) == 0
    run_with(pol, body)


def test_unreachable_endpoint_is_unavailable():
    from gatewatch.netutil import free_port
    pol = parse_introspection_policy(url=f"http://127.0.0.1:{free_port()}/introspect", client_id="gw",
                                     client_secret="s", timeout_ms=500)

    async def body(i: Introspector):
        assert (await i.verify("tok", time.time())).status == "unavailable"
    run_with(pol, body)


def test_audience_checked_when_configured(server):
    server.reset()
    mine = server.issue(sub="u-aud", aud=AUDIENCE)
    theirs = server.issue(sub="u-aud", aud="https://other.test")
    pol = parse_introspection_policy(url=f"{server.base}/introspect", client_id=GATEWAY_CLIENT[0],
                                     client_secret=GATEWAY_CLIENT[1], audiences=[AUDIENCE])

    async def body(i: Introspector):
        assert (await i.verify(mine, time.time())).status == "ok"
        assert (await i.verify(theirs, time.time())).detail == "token audience is not accepted"
    run_with(pol, body)


def test_not_yet_valid_token(server):
    server.reset()
    later = server.issue(sub="u-later", nbf_in=600)
    pol = parse_introspection_policy(url=f"{server.base}/introspect", client_id=GATEWAY_CLIENT[0],
                                     client_secret=GATEWAY_CLIENT[1])

    async def body(i: Introspector):
        assert (await i.verify(later, time.time())).detail == "token is not active"
    run_with(pol, body)


def test_token_is_hashed_in_the_caches(server):
    server.reset()
    token = server.issue(sub="u-hash")
    pol = parse_introspection_policy(url=f"{server.base}/introspect", client_id=GATEWAY_CLIENT[0],
                                     client_secret=GATEWAY_CLIENT[1])

    async def body(i: Introspector):
        await i.verify(token, time.time())
        await i.verify("x" * 8000, time.time())
        keys = list(i.positive._data) + list(i.negative._data)
        assert all(isinstance(k, bytes) and len(k) == 32 for k in keys)
        assert token.encode() not in b"".join(keys)
    run_with(pol, body)

