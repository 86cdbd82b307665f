"""Client identity, path normalization and route templates (inline/routes.py)."""

from __future__ import annotations

import asyncio
import json

import pytest
from mitmproxy.test import taddons

from inline.flowstate import get_facts
from inline.routes import BadPath, Routes, client_ip, is_id_segment, normalize_path, route_template
from inline_testkit import make_flow, run_flow


@pytest.mark.parametrize("peer, expected", [
    (("127.0.0.1", 5000), "127.0.0.1"),
    (("::ffff:192.0.2.7", 5000, 0, 0), "192.0.2.7"),
    (("2001:DB8:0:0:0:0:0:1", 5000, 0, 0), "2001:db8::1"),
    (("fe80::1%eth0", 5000, 0, 2), "fe80::1"),
    (None, ""),
    (("not-an-ip", 1), "not-an-ip"),
])
def test_client_ip(peer, expected):
    assert client_ip(peer) == expected


@pytest.mark.parametrize("target, expected", [
    ("/", "/"),
    ("/users/42?x=1", "/users/42"),
    ("/api//v1///users/", "/api/v1/users"),
    ("/a/./b/../c", "/a/c"),
    ("/../../etc/passwd", "/etc/passwd"),
    ("/login/../admin", "/admin"),
    ("/%61dmin", "/admin"),
    ("/a/%2e%2e/admin", "/admin"),
    ("/caf%C3%A9", "/café"),
    ("/x#frag", "/x"),
])
def test_normalize_path(target, expected):
    assert normalize_path(target) == expected


@pytest.mark.parametrize("target", [
    "*", "users", "http://evil/x", "/a%zz", "/a%2", "/a%2Fb", "/a%5cb", "/a%00b", "/a\x7f",
    "/a%ff", "/\udcff",
])
def test_normalize_path_refuses(target):
    with pytest.raises(BadPath):
        normalize_path(target)


@pytest.mark.parametrize("segment, is_id", [
    ("42", True),
    ("0", True),
    ("3f2a9c1e-1b2c-4d5e-8f90-123456789abc", True),
    ("deadbeefdeadbeef", True),
    ("deadbeefdeadbee", False),          # 15 hex: a word-length token, not an id
    ("Ab3dE5gH7jK9mN1pQ3sT", True),       # 20 chars, letters and digits
    ("Ab3dE5gH7jK9mN1pQ3s", False),       # 19 chars
    ("abcdefghijklmnopqrstuvwxyz", False),  # long, but no digit
    ("users", False),
    ("v1", False),
    ("²", False),
])
def test_is_id_segment(segment, is_id):
    assert is_id_segment(segment) is is_id


def test_route_template():
    assert route_template("/") == "/"
    assert route_template("/users/42/orders/3f2a9c1e-1b2c-4d5e-8f90-123456789abc") == "/users/{id}/orders/{id}"
    assert route_template("/v1/files/0123456789abcdef0123") == "/v1/files/{id}"
    assert route_template("/v1/health") == "/v1/health"


def test_addon_records_facts_and_request_id():
    async def go():
        addon = Routes()
        with taddons.context(addon) as tctx:
            flow = await run_flow(tctx, [addon], make_flow("/users//42/?q=1", peer="::ffff:10.1.2.3"))
        facts = get_facts(flow)
        assert (facts.client_ip, facts.path, facts.route) == ("10.1.2.3", "/users/42", "/users/{id}")
        assert flow.request.headers["X-Request-Id"] == facts.event_id
        assert len(facts.event_id) == 32
        assert flow.response.status_code == 200  # not answered by the gateway
    asyncio.run(go())


def test_addon_answers_bad_path_with_400():
    async def go():
        addon = Routes()
        with taddons.context(addon) as tctx:
            flow = await run_flow(tctx, [addon], make_flow("/files/%zz"))
        assert flow.response.status_code == 400
        assert json.loads(flow.response.content)["error"] == "bad_request"
        assert get_facts(flow).answered_by == "bad_request"
    asyncio.run(go())
