"""Client address through trusted proxies (inline/client_identity.py, inline/routes.py)."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy.test import taddons

from inline.client_identity import (
    TrustedProxies,
    forwarded_for,
    forwarded_hops,
    resolve_client_ip,
    split_header_list,
)
from inline.flowstate import get_facts
from inline.routes import Routes
from inline_testkit import make_flow, run_flow

LB = TrustedProxies.parse(["10.0.0.0/8", "2001:db8:ffff::/48"])
FWD = TrustedProxies.parse(["10.0.0.0/8"], "forwarded")


@pytest.mark.parametrize("peer, values, want", [
    # Untrusted peer: headers ignored.
    ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),
    # Trusted peer: the right-most untrusted hop.
    ("10.0.0.1", ["198.51.100.1"], "198.51.100.1"),
    ("10.0.0.1", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),        # left part is the client's own claim
    ("10.0.0.1", ["6.6.6.6, 198.51.100.1, 10.2.3.4"], "198.51.100.1"),  # through two trusted proxies
    ("10.0.0.1", ["6.6.6.6", "198.51.100.1, 10.2.3.4"], "198.51.100.1"),  # several header lines
    ("10.0.0.1", ["10.9.9.9, 10.2.3.4"], "10.9.9.9"),                # all trusted: the left-most
    ("10.0.0.1", ["198.51.100.1:4711"], "198.51.100.1"),             # port removed
    ("10.0.0.1", ["[2001:DB8::1]:443"], "2001:db8::1"),              # brackets, port, RFC 5952
    ("10.0.0.1", ["2001:db8::1"], "2001:db8::1"),
    ("10.0.0.1", ["::ffff:198.51.100.7"], "198.51.100.7"),           # IPv4-mapped
    ("10.0.0.1", ["unknown"], "10.0.0.1"),                           # not an address: the proxy stands
    ("10.0.0.1", ["198.51.100.1, garbage, 10.2.3.4"], "10.2.3.4"),
    ("10.0.0.1", [""], "10.0.0.1"),
    ("10.0.0.1", [], "10.0.0.1"),
    ("2001:db8:ffff::5", ["192.0.2.8"], "192.0.2.8"),               # trusted IPv6 proxy
])
def test_x_forwarded_for(peer, values, want):
    assert resolve_client_ip(peer, values, LB) == want


@pytest.mark.parametrize("values, want", [
    (['for=198.51.100.1;proto=https;by=10.0.0.1'], "198.51.100.1"),
    (['for=6.6.6.6, for=198.51.100.1'], "198.51.100.1"),
    (['for="[2001:db8:cafe::17]:4711"'], "2001:db8:cafe::17"),
    (['For="_hidden", for=10.1.1.1'], "10.1.1.1"),                   # obfuscated (RFC 7239 §6.3)
    (['proto=http'], "10.0.0.1"),                                   # no for=
    (['for="198.51.100.1,6.6.6.6"'], "10.0.0.1"),                   # quoted comma: one bad hop
])
def test_forwarded_rfc7239(values, want):
    assert resolve_client_ip("10.0.0.1", values, FWD) == want


def test_unbalanced_quote_cannot_swallow_the_proxies_hops():
    assert resolve_client_ip("10.0.0.1", ['"6.6.6.6, 198.51.100.1'], LB) == "198.51.100.1"
    assert resolve_client_ip("10.0.0.1", ['for="6.6.6.6, for=198.51.100.1'], FWD) == "198.51.100.1"


def test_header_parsing_helpers():
    assert split_header_list(['a, "b,c" ,d', "", "e"]) == ["a", '"b', 'c"', "d", "e"]
    assert forwarded_for('proto=http;FOR="[::1]:80";by=x') == "[::1]:80"
    assert forwarded_for("by=x") == ""
    assert forwarded_hops("forwarded", ["for=1.1.1.1;by=x, for=2.2.2.2"]) == ["1.1.1.1", "2.2.2.2"]
    assert len(forwarded_hops("x-forwarded-for", [", ".join(["1.1.1.1"] * 1000)])) == 32


def test_bad_options_rejected():
    with pytest.raises(ValueError):
        TrustedProxies.parse(["10.0.0.0/99"])
    with pytest.raises(ValueError):
        TrustedProxies.parse([], "x-real-ip")


def _trusted(addr: str) -> bool:
    a = ipaddress.ip_address(addr)
    return any(a.version == n.version and a in n
               for n in (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8:ffff::/48")))


addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
junk = st.one_of(st.text(max_size=30), st.sampled_from(['"', 'unknown', '_hidden', '[', ']:']))
hop = st.one_of(addresses, junk, addresses.map(lambda a: f"[{a}]:80"))


@settings(max_examples=300, deadline=None)
@given(peer=addresses, values=st.lists(st.lists(hop, max_size=6).map(", ".join), max_size=3))
def test_untrusted_peer_is_never_overridden(peer, values):
    """Property: whatever the header says, a peer outside the trusted networks is the client."""
    if _trusted(peer):
        return
    assert resolve_client_ip(peer, values, LB) == peer


@settings(max_examples=300, deadline=None)
@given(spoof=st.lists(hop, max_size=5), client=addresses,
       proxies=st.lists(st.ip_addresses(network="10.0.0.0/8").map(str), min_size=1, max_size=3))
def test_client_behind_trusted_chain_whatever_it_prepends(spoof, client, proxies):
    """Property: a client behind trusted proxies is found whatever it put in front.

    The client sends ``X-Forwarded-For: <spoof>``; each trusted proxy appends
    the address it received from, so the gateway sees ``spoof, client,
    proxy1 .. proxy(k-1)`` from peer ``proxy k``."""
    mapped = ipaddress.ip_address(client)
    if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped is not None:
        mapped = mapped.ipv4_mapped
    if _trusted(str(mapped)):
        return
    header = ", ".join([*spoof, client, *proxies[:-1]])
    assert resolve_client_ip(proxies[-1], [header], LB) == str(mapped)


def test_routes_addon_uses_trusted_proxies():
    async def go():
        routes = Routes()
        with taddons.context(routes) as tctx:
            tctx.configure(routes, gatewatch_trusted_proxies=["127.0.0.0/8"])
            via_lb = await run_flow(tctx, [routes], make_flow(headers={"X-Forwarded-For": "6.6.6.6, 198.51.100.4"},
                                                              peer="127.0.0.1"))
            direct = await run_flow(tctx, [routes], make_flow(headers={"X-Forwarded-For": "198.51.100.4"},
                                                              peer="192.0.2.77"))
            with pytest.raises(Exception):
                tctx.configure(routes, gatewatch_trusted_proxies=["nope"])
            tctx.configure(routes, gatewatch_trusted_proxies=[])
            off = await run_flow(tctx, [routes], make_flow(headers={"X-Forwarded-For": "198.51.100.4"},
                                                           peer="127.0.0.1"))
        assert get_facts(via_lb).client_ip == "198.51.100.4"
        assert get_facts(direct).client_ip == "192.0.2.77"
        assert get_facts(off).client_ip == "127.0.0.1"
    asyncio.run(go())
