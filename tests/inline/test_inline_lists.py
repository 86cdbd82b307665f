"""Allow- and deny-lists (inline/lists.py)."""

from __future__ import annotations

import asyncio
import ipaddress
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import exceptions
from mitmproxy.test import taddons

from inline import flowtags
from inline.lists import CidrSet, Lists, ListsSpec, classify, parse_cidrs
from inline.routes import Routes
from inline_testkit import make_flow, run_flow


def spec(allow=(), deny=()) -> ListsSpec:
    return ListsSpec(CidrSet(parse_cidrs(allow)), CidrSet(parse_cidrs(deny)))


def test_parse_cidrs():
    assert [str(n) for n in parse_cidrs(["10.1.2.3/8", "192.0.2.1", "2001:DB8::/32", "::ffff:192.0.2.0/120"])] == [
        "10.0.0.0/8", "192.0.2.1/32", "2001:db8::/32", "192.0.2.0/24"]
    with pytest.raises(ValueError, match="deny"):
        parse_cidrs(["10.0.0.0/33"], "deny")
    with pytest.raises(ValueError):
        parse_cidrs(["example.com"])


def test_classify_longest_prefix_wins_tie_goes_to_allow():
    s = spec(allow=["10.0.0.0/8", "2001:db8::/32", "192.0.2.0/24"],
             deny=["10.6.6.6", "2001:db8:bad::/48", "192.0.2.0/24", "203.0.113.0/24"])
    assert classify("10.1.1.1", s) == "allow"
    assert classify("10.6.6.6", s) == "deny"
    assert classify("2001:db8:bad::1", s) == "deny"
    assert classify("2001:db8:1::1", s) == "allow"
    assert classify("192.0.2.5", s) == "allow"       # same prefix on both: allow
    assert classify("203.0.113.9", s) == "deny"
    assert classify("198.51.100.1", s) is None
    assert classify("not-an-ip", s) is None
    assert classify("::ffff:203.0.113.9", s) == "deny"   # IPv4-mapped IPv6 is folded to IPv4


@settings(max_examples=200, deadline=None)
@given(nets=st.lists(st.tuples(st.ip_addresses(v=6), st.integers(0, 128)), max_size=20),
       probe=st.ip_addresses(v=6))
def test_cidrset_agrees_with_ipaddress(nets, probe):
    """Property: CidrSet's longest match equals a linear scan with ipaddress."""
    networks = [ipaddress.ip_network((a, n), strict=False) for a, n in nets]
    want = max((n.prefixlen for n in networks if probe in n), default=None)
    assert CidrSet(networks).longest_match(probe) == want


def test_addon_denies_and_marks_allowed():
    async def go():
        routes, lists = Routes(), Lists()
        with taddons.context(routes, lists) as tctx:
            tctx.configure(lists, gatewatch_allow_list=["192.0.2.0/24"], gatewatch_deny_list=["198.51.100.0/24"])
            denied = await run_flow(tctx, [routes, lists], make_flow(peer="198.51.100.3"))
            allowed = await run_flow(tctx, [routes, lists], make_flow(peer="::ffff:192.0.2.3"))
            other = await run_flow(tctx, [routes, lists], make_flow(peer="203.0.113.1"))
            with pytest.raises(exceptions.OptionsError):
                tctx.configure(lists, gatewatch_deny_list=["300.0.0.0/8"])
        assert denied.response.status_code == 403
        assert json.loads(denied.response.content) == {"error": "blocked", "scope": "deny_list"}
        assert flowtags.blocked_scope(denied) == "deny_list"
        assert allowed.response.status_code == 200 and flowtags.allow_listed(allowed)
        assert other.response.status_code == 200 and not flowtags.allow_listed(other)
        assert lists.denied == 1
    asyncio.run(go())
