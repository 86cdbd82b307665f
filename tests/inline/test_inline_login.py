"""Login outcome and username hashing (inline/login.py)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

import pytest
from mitmproxy import exceptions, http
from mitmproxy.test import taddons

from inline.flowstate import get_facts
from inline.login import (
    Login,
    extract_username,
    login_outcome,
    match_login,
    parse_login_routes,
    username_hash,
)
from inline.routes import Routes
from inline_testkit import make_flow, run_flow

ROUTES = json.dumps([
    {"path": "/login"},
    {"method": "post", "path": "/v2/session/", "username_field": "email",
     "success_status": [200, 201], "failure_status": [401],
     "failure_body_regex": "(?i)invalid (password|credentials)"},
])


def test_parse_login_routes():
    specs = parse_login_routes(ROUTES)
    assert [(s.method, s.path, s.username_field) for s in specs] == [
        ("POST", "/login", "username"), ("POST", "/v2/session", "email")]
    assert specs[1].success_status == {200, 201}
    assert parse_login_routes("[]") == ()


@pytest.mark.parametrize("bad", [
    "not json", "{}", '[{"method": "POST"}]', '[{"path": "login"}]',
    '[{"path": "/login", "failure_body_regex": "("}]', '[{"path": "/login", "success_status": ["x"]}]',
])
def test_parse_login_routes_refuses(bad):
    with pytest.raises(ValueError):
        parse_login_routes(bad)


def test_match_login():
    specs = parse_login_routes(ROUTES)
    assert match_login(specs, "post", "/login").path == "/login"
    assert match_login(specs, "GET", "/login") is None
    assert match_login(specs, "POST", "/v2/session").username_field == "email"
    assert match_login(specs, "POST", "/logout") is None


@pytest.mark.parametrize("body, ctype, expected", [
    (b'{"username": "Alice", "password": "x"}', "application/json", "Alice"),
    (b'{"username": "Alice"}', "application/vnd.api+json; charset=utf-8", "Alice"),
    (b'{"username": "Alice"}', "", "Alice"),                       # sniffed JSON
    (b"username=bob%40example.com&password=x", "application/x-www-form-urlencoded", "bob@example.com"),
    (b"username=bob&password=x", "", "bob"),                       # sniffed form
    (b'{"username": 42}', "application/json", None),               # not a string
    (b'{"username": "  "}', "application/json", None),
    (b'["username"]', "application/json", None),
    (b'{"username": ', "application/json", None),                  # broken JSON
    (b"\xff\xfe", "application/x-www-form-urlencoded", None),      # not UTF-8
    (b"", "application/json", None),
    (b"[" * 100_000, "application/json", None),                    # too large
    (b'{"user": "x"}', "application/json", None),
])
def test_extract_username(body, ctype, expected):
    assert extract_username(body, ctype, "username") == expected


def test_extract_username_deeply_nested_json_is_not_an_error():
    assert extract_username(b"[" * 20_000 + b"]" * 20_000, "application/json", "username") is None


def test_username_hash_is_keyed_hmac_of_trimmed_lowercase():
    expected = hmac.new(b"k", b"alice@example.com", hashlib.sha256).hexdigest()
    assert username_hash("k", "  Alice@Example.COM ") == expected
    assert username_hash("other-key", "alice@example.com") != expected
    assert len(expected) == 64


def test_login_outcome():
    plain, regex = parse_login_routes(ROUTES)
    assert login_outcome(plain, 200, "{}") == "success"
    assert login_outcome(plain, 401, "{}") == "failure"
    assert login_outcome(plain, 403, None) == "failure"
    assert login_outcome(plain, 400, "{}") is None
    assert login_outcome(plain, 500, "{}") is None
    assert login_outcome(regex, 200, '{"error": "Invalid password"}') == "failure"
    assert login_outcome(regex, 201, '{"token": "t"}') == "success"
    assert login_outcome(regex, 200, None) == "success"
    assert login_outcome(regex, 403, "{}") is None   # not a failure status on this route


def test_addon_records_hash_and_outcome_and_never_the_secret():
    async def go():
        routes, addon = Routes(), Login()
        with taddons.context(routes, addon) as tctx:
            tctx.configure(addon, gatewatch_login_routes=ROUTES, gatewatch_username_hash_key="k")
            body = json.dumps({"username": "Alice", "password": "hunter2"}).encode()
            failed = await run_flow(
                tctx, [routes, addon],
                make_flow("/login", "POST", {"Content-Type": "application/json"}, body),
                upstream=http.Response.make(401, b'{"error":"bad credentials"}'))
            ok = await run_flow(
                tctx, [routes, addon],
                make_flow("/login?next=/", "POST", {"Content-Type": "application/json"}, body))
            other = await run_flow(tctx, [routes, addon], make_flow("/users/1"))
            regex = await run_flow(
                tctx, [routes, addon],
                make_flow("/v2/session", "POST", {"Content-Type": "application/x-www-form-urlencoded"},
                          b"email=Alice&password=hunter2"),
                upstream=http.Response.make(200, b'{"error":"Invalid credentials"}'))
        assert get_facts(failed).login == "failure"
        assert get_facts(ok).login == "success"
        assert get_facts(ok).username_hash == username_hash("k", "alice")
        assert get_facts(other).login is None and get_facts(other).username_hash is None
        assert get_facts(regex).login == "failure"
        for flow in (failed, ok, regex):
            facts = repr(get_facts(flow))
            assert "hunter2" not in facts and "Alice" not in facts and "alice" not in facts
    asyncio.run(go())


def test_addon_ignores_gateway_answers():
    async def go():
        routes, addon = Routes(), Login()

        class Refuse:
            def request(self, flow):
                from inline.flowstate import json_answer
                json_answer(flow, 429, {"error": "rate_limited"}, "rate_limit")
        with taddons.context(routes, addon) as tctx:
            tctx.configure(addon, gatewatch_login_routes=ROUTES, gatewatch_username_hash_key="k")
            flow = await run_flow(tctx, [routes, Refuse(), addon],
                                  make_flow("/login", "POST", {}, b'{"username": "a"}'))
        assert flow.response.status_code == 429
        assert get_facts(flow).login is None
    asyncio.run(go())


def test_bad_options_are_refused():
    addon = Login()
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError, match="login_routes"):
            tctx.configure(addon, gatewatch_login_routes="[{")
        with pytest.raises(exceptions.OptionsError, match="username_hash_key"):
            tctx.configure(addon, gatewatch_username_hash_key="")
