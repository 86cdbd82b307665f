"""Allow entries in the decision store (gatewatch/decision_store.py): their keys, kept apart
from decisions, and what they cover for the worker's decision policy."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from gatewatch.decision_store import DecisionStore, parse_key
from gatewatch.events import Decision, MalformedRecord, parse_decision

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
T = NOW.timestamp()


def entry(scope: str, value: str, action: str = "allow", ttl_s: float = 600.0) -> Decision:
    return Decision(scope=scope, value=value, action=action, created_at=NOW,
                    expires_at=NOW + timedelta(seconds=ttl_s), detector="manual", origin="cli")


def put(store: DecisionStore, d: Decision, now: float = T) -> str:
    return store.apply(d.key().encode(), d.to_json(), now)


def test_keys_of_decisions_and_allow_entries() -> None:
    assert entry("ip", "192.0.2.1").key() == "allow:ip:192.0.2.1"
    assert entry("ip", "192.0.2.1", "ban").key() == "ip:192.0.2.1"
    assert parse_key(b"allow:ip:2001:db8::1") == (True, "ip", "2001:db8::1")
    assert parse_key(b"prefix:10.0.0.0/8") == (False, "prefix", "10.0.0.0/8")
    for bad in (b"allow:", b"allow:galaxy:x", b"allow:ip:", b"allow:allow:ip:1.2.3.4", None, b"\xff"):
        with pytest.raises(MalformedRecord):
            parse_key(bad)


def test_allow_entries_need_a_request_scope() -> None:
    with pytest.raises(ValueError, match="allow entry's scope"):
        entry("username", "abc")
    raw = entry("ip", "192.0.2.1").model_dump(mode="json") | {"scope": "username"}
    with pytest.raises(MalformedRecord):
        parse_decision(raw)


def test_each_store_takes_only_its_kind() -> None:
    """A ban and an allow entry for the same value coexist, each in its own store; a
    message of the other kind, or an allow entry under a ban's key, is malformed."""
    bans, allowed = DecisionStore(), DecisionStore(allow=True)
    ban, allow = entry("ip", "192.0.2.1", "ban"), entry("ip", "192.0.2.1")
    assert put(bans, ban) == "set" and put(allowed, allow) == "set"
    assert bans.lookup("ip", "192.0.2.1", T).id == ban.id
    assert allowed.lookup("ip", "192.0.2.1", T).id == allow.id
    assert allowed.lookup("ip", "192.0.2.1", T).key() == "allow:ip:192.0.2.1"
    with pytest.raises(MalformedRecord):
        put(bans, allow)                                               # allow key in the decisions
    with pytest.raises(MalformedRecord):
        bans.apply(b"ip:192.0.2.1", allow.to_json(), T)               # allow value under a ban's key
    with pytest.raises(MalformedRecord):
        put(allowed, ban)                                              # ban in the allow entries
    with pytest.raises(MalformedRecord):
        allowed.apply(b"ip:192.0.2.1", None, T)                       # a ban's tombstone
    assert len(bans) == 1 and len(allowed) == 1
    assert allowed.apply(b"allow:ip:192.0.2.1", None, T) == "deleted"   # the allow tombstone
    assert len(allowed) == 0 and bans.lookup("ip", "192.0.2.1", T).id == ban.id


def test_allow_entry_values_are_canonical_and_expire() -> None:
    allowed = DecisionStore(allow=True)
    put(allowed, entry("prefix", "198.51.100.77"))                     # bare address: the default /24
    put(allowed, entry("ip", "2001:DB8::0:1", ttl_s=60))
    assert allowed.lookup("prefix", "198.51.100.0/24", T) is not None
    assert allowed.covering("ip", "2001:db8::1", T + 59) is not None
    assert allowed.covering("ip", "2001:db8::1", T + 60) is None        # expired at lookup
    assert allowed.apply(b"allow:prefix:198.51.100.5", None, T) == "deleted"   # tombstone, value canonicalised
    assert len(allowed) == 0


@pytest.mark.parametrize("scope,value,covered", [
    ("ip", "203.0.113.9", True),          # the address entry
    ("ip", "::ffff:203.0.113.9", True),   # the same address, IPv4-mapped
    ("ip", "10.20.30.40", True),          # inside the /8 entry
    ("ip", "11.0.0.1", False),
    ("prefix", "10.20.30.0/24", True),    # a network inside the /8 entry
    ("prefix", "10.0.0.0/8", True),       # the entry itself
    ("prefix", "10.0.0.0/7", False),      # wider than the entry
    ("prefix", "203.0.113.0/24", False),  # an address entry does not cover its network
    ("ip", "2001:db8:5::1", True),        # inside the IPv6 /48 entry
    ("prefix", "2001:db8:5:1::/64", True),
    ("principal", "partner-key", True),
    ("principal", "other-key", False),
    ("asn", "AS64500", True),
    ("country", "nz", True),
    ("username", "abc", False),
    ("route", "GET /orders", False),      # not a decision scope
    ("ip", "not-an-ip", False),
])
def test_covering(scope: str, value: str, covered: bool) -> None:
    allowed = DecisionStore(allow=True)
    for s, v in (("ip", "203.0.113.9"), ("prefix", "10.0.0.0/8"), ("prefix", "2001:db8:5::/48"),
                 ("principal", "partner-key"), ("asn", "64500"), ("country", "NZ")):
        put(allowed, entry(s, v))
    found = allowed.covering(scope, value, T)
    assert (found is not None) == covered
    if found is not None:
        assert found.action == "allow"
