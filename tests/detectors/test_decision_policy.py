"""The decision step: :func:`decide` (one detection, one decision) and the stateful
:class:`DecisionPolicy` (actions per scope, shadow mode, allow entries, no duplicates, escalation)."""

from __future__ import annotations

import pickle
from datetime import datetime, timedelta, timezone

import pytest

from detectors.decision_policy import DecisionPolicy, decide
from gatewatch.decision_store import DecisionStore
from gatewatch.events import Decision, Detection, parse_decision
from gatewatch.settings import DetectorPolicySettings, load_settings

T0 = datetime(2025, 3, 1, 12, tzinfo=timezone.utc)


def _detection() -> Detection:
    return Detection(detection_id="d" * 32, ts=T0, detector="credential_stuffing", scope="ip",
                     value="203.0.113.7", summary="10 failed logins", evidence={"failures": 10},
                     sample_event_ids=["e1", "e2"])


def test_ban_with_ttl_and_evidence() -> None:
    decision = decide(_detection(), ban_ttl_s=600)
    assert (decision.scope, decision.value, decision.action) == ("ip", "203.0.113.7", "ban")
    assert decision.created_at == T0 and decision.expires_at == T0 + timedelta(seconds=600)
    assert decision.ttl_s == 600
    assert decision.evidence == {"failures": 10, "sample_event_ids": ["e1", "e2"]}
    assert decision.detection_id == "d" * 32 and decision.detector == "credential_stuffing"
    assert decision.reason == "credential_stuffing: 10 failed logins"
    assert decision.origin == "detector" and decision.key() == "ip:203.0.113.7"
    assert decision.active_at(T0 + timedelta(seconds=599)) and not decision.active_at(T0 + timedelta(seconds=600))


def test_same_detection_same_decision_id_and_round_trip() -> None:
    a, b = decide(_detection(), 600), decide(_detection(), 600)
    assert a.id == b.id and len(a.id) == 32
    assert parse_decision(a.to_json()) == a


def test_rejects_non_positive_ttl() -> None:
    with pytest.raises(ValueError):
        decide(_detection(), 0)


# -- the stateful policy -------------------------------------------------------------------


def _policy(**kw) -> DecisionPolicy:
    cfg = DetectorPolicySettings(**({"ban_ttl_s": 600, "max_ttl_s": 3600, "escalation_reset_s": 86_400,
                                     "actions": {"ip": "ban", "username": "throttle",
                                                 "principal": "challenge"}} | kw))
    return DecisionPolicy({"credential_stuffing": cfg})


def _det(n: int, ts: datetime, scope: str = "ip", value: str = "203.0.113.7",
         detector: str = "credential_stuffing") -> Detection:
    return Detection(detection_id=f"det{n}", ts=ts, detector=detector, scope=scope, value=value,
                     summary="s", evidence={"failures": 10}, sample_event_ids=["e1"])


def test_one_active_decision_per_scope_and_value() -> None:
    policy = _policy()
    first = policy.decide(_det(1, T0))
    assert first.outcome == "decision" and first.decision is not None
    assert first.detection.evidence["policy"] == "decision"
    again = policy.decide(_det(2, T0 + timedelta(seconds=30)))
    assert (again.outcome, again.decision) == ("duplicate", None)
    assert again.detection.evidence["policy"] == "duplicate"
    other = policy.decide(_det(3, T0 + timedelta(seconds=30), value="203.0.113.8"))
    assert other.outcome == "decision" and policy.active_decisions == 2


def test_a_stronger_action_replaces_a_weaker_one() -> None:
    policy = DecisionPolicy({
        "a": DetectorPolicySettings(actions={"principal": "challenge"}),
        "b": DetectorPolicySettings(actions={"principal": "ban"})})
    assert policy.decide(_det(1, T0, "principal", "k1", detector="a")).decision.action == "challenge"
    stronger = policy.decide(_det(2, T0 + timedelta(seconds=5), "principal", "k1", detector="b"))
    assert stronger.decision is not None and stronger.decision.action == "ban"
    assert stronger.decision.key() == "principal:k1"
    weaker = policy.decide(_det(3, T0 + timedelta(seconds=6), "principal", "k1", detector="a"))
    assert weaker.outcome == "duplicate"


def test_escalation_doubles_up_to_the_cap_and_resets_after_a_quiet_period() -> None:
    policy = _policy()
    ttls = []
    t = T0
    for n in range(5):  # each offence right after the previous decision expired
        result = policy.decide(_det(n, t))
        assert result.decision is not None
        ttls.append(result.decision.ttl_s)
        assert result.decision.evidence["escalation"]["offence"] == n + 1
        t = result.decision.expires_at + timedelta(seconds=1)
    assert ttls == [600, 1200, 2400, 3600, 3600]
    # Quiet for longer than escalation_reset_s after the last decision expired: start over.
    later = t + timedelta(seconds=86_400 + 1)
    assert policy.decide(_det(9, later)).decision.ttl_s == 600


def test_shadow_mode_records_and_decides_nothing() -> None:
    policy = _policy(shadow=True)
    result = policy.decide(_det(1, T0))
    assert (result.outcome, result.decision) == ("shadow", None)
    assert result.detection.evidence == {"failures": 10, "policy": "shadow"}
    assert policy.active_decisions == 0


def test_alert_only_scopes_and_detectors() -> None:
    policy = DecisionPolicy.from_settings(load_settings())
    latency = Detection(detection_id="l1", ts=T0, detector="latency_regression", scope="route",
                        value="GET /orders/{id}")
    assert policy.decide(latency).outcome == "alert_only"
    spike = _det(1, T0, "global", "login_failures")
    assert policy.decide(spike).outcome == "alert_only"
    assert policy.decide(_det(2, T0, detector="geo")).outcome == "alert_only"
    account = policy.decide(_det(3, T0, "username", "ab" * 32))
    assert account.decision is not None and account.decision.action == "challenge"
    ban = policy.decide(Detection(detection_id="b1", ts=T0, detector="bola", scope="principal", value="k"))
    assert ban.decision is not None and ban.decision.action == "ban" and ban.decision.ttl_s == 600


def test_policy_state_pickles_and_is_bounded() -> None:
    policy = _policy(escalation_reset_s=3600)
    policy.decide(_det(1, T0))
    restored = pickle.loads(pickle.dumps(policy))
    assert restored.decide(_det(2, T0 + timedelta(seconds=10))).outcome == "duplicate"
    for n in range(1000):
        restored.decide(_det(n + 10, T0 + n * timedelta(seconds=10), value=f"10.0.{n // 250}.{n % 250}"))
    assert restored.active_decisions <= 61  # 600 s TTL at one decision per 10 s
    assert len(restored._offences) <= (600 + 3600) // 10 + 2


def test_rejects_a_cap_below_the_ttl() -> None:
    with pytest.raises(ValueError):
        DecisionPolicy({"x": DetectorPolicySettings(ban_ttl_s=600, max_ttl_s=60)})


def _allowed(*entries: tuple[str, str, float]) -> DecisionStore:
    """Allow entries ``(scope, value, ttl_s)`` created at T0, as the worker keeps them."""
    store = DecisionStore(allow=True)
    for scope, value, ttl_s in entries:
        entry = Decision(scope=scope, value=value, action="allow", created_at=T0,
                         expires_at=T0 + timedelta(seconds=ttl_s), detector="manual", origin="cli")
        store.apply(entry.key().encode(), entry.to_json(), T0.timestamp())
    return store


def test_allow_listed_values_get_no_decision_and_no_offence() -> None:
    """An allow entry wins: the detection is kept with evidence policy=allow_listed and the
    entry's id; once the entry is gone the value is a first offender (no escalation)."""
    policy = _policy()
    allowed = _allowed(("prefix", "203.0.113.0/24", 60), ("principal", "partner", 3600))
    entry_id = allowed.lookup("prefix", "203.0.113.0/24", T0.timestamp()).id
    result = policy.decide(_det(1, T0), allowed)
    assert (result.outcome, result.decision) == ("allow_listed", None)
    assert result.detection.evidence == {"failures": 10, "policy": "allow_listed", "allow_entry": entry_id}
    assert policy.decide(_det(2, T0, "principal", "partner"), allowed).outcome == "allow_listed"
    assert policy.decide(_det(5, T0, "principal", "someone"), allowed).decision.action == "challenge"
    other = policy.decide(_det(3, T0, value="198.51.100.1"), allowed)          # not covered
    assert other.outcome == "decision"
    # The /24 entry expires after 60 s (detection time is the clock): then a first-offence ban.
    later = policy.decide(_det(4, T0 + timedelta(seconds=60)), allowed)
    assert later.outcome == "decision" and later.decision.ttl_s == 600
    assert later.decision.evidence["escalation"]["offence"] == 1


def test_shadow_and_alert_only_come_before_the_allow_list() -> None:
    allowed = _allowed(("ip", "203.0.113.7", 600))
    assert _policy(shadow=True).decide(_det(1, T0), allowed).outcome == "shadow"
    assert _policy().decide(_det(2, T0, "global", "x"), allowed).outcome == "alert_only"
    assert _policy().decide(_det(3, T0), None).outcome == "decision"        # no entries passed in
