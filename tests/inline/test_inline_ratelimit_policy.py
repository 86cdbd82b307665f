"""Rate-limit policies, all-or-nothing GCRA and the IETF RateLimit fields (pure functions)."""

from __future__ import annotations

import json

import pytest

from inline.gcra import GcraLimiter, LimitState, RateSpec, Verdict, check_all, remaining_after
from inline.ratelimit_headers import limit_item, policy_item, ratelimit_fields
from inline.ratelimit_policy import Policy, match_hits, parse_policies, parse_tiers


# --- GCRA: several limits, all or nothing ---------------------------------------------

def test_check_all_reports_remaining_and_reset():
    spec = RateSpec(rate_per_s=2.0, burst=4)          # T = 0.5 s, whole burst back in 2 s
    verdict, tats = check_all([None], 10.0, [spec])
    assert verdict == Verdict(True, (LimitState(remaining=3, reset_s=0.5),))
    assert tats == [10.5]
    for expected in (2, 1, 0):
        verdict, tats = check_all(tats, 10.0, [spec])
        assert verdict.allowed and verdict.states[0].remaining == expected
    verdict, same = check_all(tats, 10.0, [spec])
    assert not verdict.allowed and same == tats
    assert verdict.states[0] == LimitState(0, 2.0, 0.5)   # one more in 0.5 s; all back in 2 s
    assert verdict.retry_after_s == 0.5


def test_check_all_refusal_counts_against_no_limit():
    loose, tight = RateSpec(100.0, 100), RateSpec(1.0, 1)
    verdict, tats = check_all([None, None], 0.0, [loose, tight])
    assert verdict.allowed and tats[0] == pytest.approx(0.01) and tats[1] == 1.0
    verdict, after = check_all(tats, 0.0, [loose, tight])
    assert not verdict.allowed and after == tats               # the loose limit was not drained
    assert verdict.states[0] == LimitState(99, pytest.approx(0.01), 0.0)
    assert verdict.states[1].refused and verdict.retry_after_s == pytest.approx(1.0)


def test_remaining_is_robust_to_float_rounding():
    spec = RateSpec(10.0, 3)
    assert remaining_after(100.0 + 0.1 + 0.1, 100.0, spec) == 1
    assert remaining_after(99.0, 100.0, spec) == 3            # TAT in the past: whole burst


def test_limiter_check_shares_keys_across_specs_and_sweeps():
    limiter = GcraLimiter(sweep_every_s=5.0)
    hits = [("ip|10.0.0.1", RateSpec(1.0, 2)), ("principal|k", RateSpec(1.0, 5))]
    assert [limiter.check(hits, 0.0).allowed for _ in range(3)] == [True, True, False]
    assert limiter.refused == 1 and len(limiter) == 2
    assert limiter.check(hits[1:], 0.0).states[0].remaining == 2   # principal counted twice, not thrice
    limiter.check([("other", RateSpec(1.0, 1))], 10.0)             # sweep due: old keys forgotten
    assert len(limiter) == 1


# --- policies ----------------------------------------------------------------------------

def test_default_policies_and_tiers():
    policies = parse_policies("50:100", "100:200", ["gold=1000:2000", "internal=off"])
    assert [(p.name, p.key, p.route) for p in policies] == [("ip", "ip", "*"), ("principal", "principal", "*")]
    principal = policies[1]
    assert principal.spec_for("default") == RateSpec(100.0, 200)
    assert principal.spec_for("") == RateSpec(100.0, 200)
    assert principal.spec_for("gold") == RateSpec(1000.0, 2000)
    assert principal.spec_for("internal") is None
    assert parse_policies("off", "off") == ()
    only_tiers = parse_policies("off", "off", ["gold=5:5"])
    assert only_tiers[0].spec_for("gold") == RateSpec(5.0, 5) and only_tiers[0].spec_for("") is None


def test_configured_policies_parse_both_limit_forms():
    text = json.dumps([
        {"name": "login", "route": "/login", "methods": ["post"], "key": "ip", "limit": "0.2:5"},
        {"name": "api", "key": "principal", "tiers": {"default": {"rate_per_s": 10, "burst": 20},
                                                      "gold": "100:200", "free": None}},
        {"name": "admin", "route": "/admin/*", "key": "ip", "limit": "1:1", "per_route": True},
    ])
    login, api, admin = parse_policies("off", "off", [], text)
    assert login == Policy("login", "ip", "/login", frozenset({"POST"}), RateSpec(0.2, 5), {}, False)
    assert api.default == RateSpec(10.0, 20) and api.spec_for("gold") == RateSpec(100.0, 200)
    assert api.spec_for("free") is None and api.spec_for("silver") == RateSpec(10.0, 20)
    assert admin.per_route and admin.matches("GET", "/admin/users/{id}") and not admin.matches("GET", "/adminx")


@pytest.mark.parametrize("text, message", [
    ('[{"name": "Bad Name", "key": "ip", "limit": "1:1"}]', "policy name"),
    ('[{"name": "ip", "key": "ip", "limit": "1:1"}]', "used twice"),
    ('[{"name": "a", "key": "ip", "limit": "1:1"}, {"name": "a", "key": "ip", "limit": "1:1"}]', "used twice"),
    ('[{"name": "a", "route": "users", "key": "ip", "limit": "1:1"}]', "must be '.' or start with"),
    ('[{"name": "a", "route": "/a/*/b", "key": "ip", "limit": "1:1"}]', "may only end"),
    ('[{"name": "a", "key": "ip"}]', "needs a limit"),
    ('[{"name": "a", "key": "subnet", "limit": "1:1"}]', "rate-limit policies"),
    ('[{"name": "a", "key": "ip", "limit": "0:1"}]', "rate-limit policies"),
    ('[{"name": "a", "key": "ip", "limit": "fast"}]', "rate-limit policies"),
    ('[{"name": "a", "key": "ip", "limit": "1:1", "methods": ["GET POST"]}]', "bad methods"),
    ("{not json", "rate-limit policies"),
])
def test_bad_policies_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_policies("1:1", "1:1", [], text)


@pytest.mark.parametrize("items", [["gold"], ["=1:1"], ["gold=fast"]])
def test_bad_tiers_are_refused(items):
    with pytest.raises(ValueError):
        parse_tiers(items)


def test_match_hits_by_route_method_key_and_tier():
    text = json.dumps([{"name": "login", "route": "/login", "methods": ["POST"], "key": "ip", "limit": "0.2:5"},
                       {"name": "orders", "route": "/orders/*", "key": "principal", "per_route": True,
                        "tiers": {"default": "1:10", "gold": None}}])
    policies = parse_policies("50:100", "100:200", [], text)
    login = match_hits(policies, "POST", "/login", "10.0.0.1", "", "")
    assert [(h.policy.name, h.counter) for h in login] == [("ip", "ip|10.0.0.1"), ("login", "login|10.0.0.1")]
    assert [h.policy.name for h in match_hits(policies, "GET", "/login", "10.0.0.1", "", "")] == ["ip"]
    orders = match_hits(policies, "GET", "/orders/{id}", "10.0.0.1", "key_a", "default")
    assert [(h.policy.name, h.counter) for h in orders] == [
        ("ip", "ip|10.0.0.1"), ("principal", "principal|key_a"), ("orders", "orders|12:/orders/{id}|key_a")]
    gold = match_hits(policies, "GET", "/orders/{id}", "10.0.0.1", "key_g", "gold")
    assert [h.policy.name for h in gold] == ["ip", "principal"]      # gold is unlimited on /orders/*
    assert match_hits(policies, "GET", "/x", "", "", "") == []        # no key at all: nothing counted


# --- IETF RateLimit fields ------------------------------------------------------------------

def test_policy_and_limit_items():
    assert policy_item("ip", RateSpec(50.0, 100)) == '"ip";q=100;w=2'
    assert policy_item("login", RateSpec(0.2, 5)) == '"login";q=5;w=25'
    assert policy_item("odd", RateSpec(3.0, 10)) == '"odd";q=10;w=4'     # never looser than enforced
    assert policy_item("fast", RateSpec(1000.0, 1)) == '"fast";q=1;w=1'
    assert limit_item("ip", LimitState(97, 0.06)) == '"ip";r=97;t=1'
    assert limit_item("ip", LimitState(0, 2.0, 0.5)) == '"ip";r=0;t=1'


def test_fields_on_allowed_and_refused_requests():
    policies = parse_policies("50:100", "1:2")
    hits = match_hits(policies, "GET", "/", "10.0.0.1", "key_a", "")
    allowed = Verdict(True, (LimitState(99, 0.02), LimitState(1, 1.0)))
    assert ratelimit_fields(hits, allowed) == {
        "RateLimit-Policy": '"ip";q=100;w=2, "principal";q=2;w=2',
        "RateLimit": '"ip";r=99;t=1, "principal";r=1;t=1'}
    refused = Verdict(False, (LimitState(99, 0.02), LimitState(0, 2.0, 1.2)))
    fields = ratelimit_fields(hits, refused)
    assert fields["RateLimit"] == '"principal";r=0;t=2'             # only the refusing policy
    assert fields["Retry-After"] == "2"                              # not earlier than any t
    assert fields["RateLimit-Policy"] == '"ip";q=100;w=2, "principal";q=2;w=2'
