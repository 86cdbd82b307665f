"""The quality harness's pure parts: the labelled scenario from a seed and the scoring maths.

The full harness (bench/quality.py) runs the real pipeline and is a benchmark,
not a test; here the scenario is built with a deterministic address source
standing in for the geo data (no component is replaced: the picker is an input),
and the scoring is fed a small hand-made run whose figures are worked out below.
"""

from __future__ import annotations

import dataclasses

import itertools
import math

import pytest

from bench.broker_probe import summarize as summarize_probe
from bench.quality_actors import (BULK_USER, DISTRIBUTED_ATTEMPTS_PER_IP, DISTRIBUTED_IPS, FAST_RATE_PER_S,
                                  NAT_USERS, Actor, build_scenario, prefix_of)
from bench.quality_addresses import Address
from bench.quality_client import Outcome
from bench.quality_scoring import (StoredDecision, StoredDetection, StoredRequest, median_or_inf, score)
from gatewatch.sample_api import SampleData
from inline.login import username_hash

KEY = "test-username-key"


def picker():
    """Addresses 198.18.0.1, 198.18.1.1, ... (one /24 each) in whatever country is asked."""
    counter = itertools.count()

    def pick(country: str | None, asn: int | None) -> Address:
        n = next(counter)
        return Address(f"198.18.{n // 250}.{n % 250 + 1}", country or "ZZ", None, 0.0, 0.0, asn or 64500 + n % 7)
    return pick


@pytest.fixture(scope="module")
def scenario():
    return build_scenario(5, 160.0, picker(), KEY)


def test_same_seed_same_scenario(scenario) -> None:
    assert build_scenario(5, 160.0, picker(), KEY) == scenario
    assert build_scenario(6, 160.0, picker(), KEY) != scenario


def test_labels(scenario) -> None:
    attacks = [a for a in scenario.actors if a.attack]
    benign = [a for a in scenario.actors if not a.attack]
    assert {a.kind for a in benign} == {"user", "geo-victim", "nat-office", "mobile", "vpn", "batch", "bulk-sync"}
    assert {a.kind for a in attacks} >= {"stuffing-fast", "stuffing-slow", "stuffing-distributed",
                                         "bola-sequential-fast", "bola-uuid-fast", "impossible-travel", "latency"}
    assert all(a.detectors and a.response in ("ban", "throttle", "challenge", "alert") for a in attacks)
    assert not any(a.detectors or a.response for a in benign)
    assert len({a.name for a in scenario.actors}) == len(scenario.actors)


def test_fast_attacks_are_planned_at_attack_tool_speed(scenario) -> None:
    fast = [a for a in scenario.actors if a.kind.endswith("-fast")]
    assert len(fast) >= 5
    for actor in fast:
        (script,) = actor.scripts
        times = [s.delay_s for s in script.steps if not s.login]
        assert script.open_loop and len({s.ip for s in script.steps}) == 1
        assert (len(times) - 1) / (times[-1] - times[0]) >= FAST_RATE_PER_S


def test_benign_shapes(scenario) -> None:
    nat = scenario.actor("nat-office")
    assert len(nat.scripts) == len(NAT_USERS)
    assert len({s.ip for script in nat.scripts for s in script.steps}) == 1
    assert len({s.ip for s in scenario.actor("mobile").scripts[0].steps}) == 4
    data = SampleData.generate(scenario.users, scenario.seed, scenario.extra_orders)
    bulk = scenario.actor("bulk-sync").scripts[0]
    reads = [int(s.path.rsplit("/", 1)[1]) for s in bulk.steps if s.path.startswith("/orders/")]
    assert len(reads) >= 400 and all(data.orders[o] == BULK_USER for o in reads)
    assert username_hash(KEY, "user1") in {k.split(":", 1)[1] for k in scenario.actor("user-1").keys}


def test_attack_shapes(scenario) -> None:
    data = SampleData.generate(scenario.users, scenario.seed, scenario.extra_orders)
    distributed = scenario.actor("stuffing-distributed").scripts[0].steps
    counts = {ip: len(list(g)) for ip, g in itertools.groupby(sorted(s.ip for s in distributed))}
    assert len(counts) == DISTRIBUTED_IPS and set(counts.values()) == {DISTRIBUTED_ATTEMPTS_PER_IP}
    uuid_script = scenario.actor("bola-uuid-fast-1").scripts[0]
    docs = [s.path.rsplit("/", 1)[1] for s in uuid_script.steps if s.path.startswith("/documents/")]
    real = [d for d in docs if d in data.documents]
    assert real and all(data.documents[d] != uuid_script.user_id for d in real)
    assert 0.25 <= len(real) / len(docs) <= 0.35
    seq = [int(s.path.rsplit("/", 1)[1]) for s in scenario.actor("bola-sequential-fast-1").scripts[0].steps
           if s.path.startswith("/orders/")]
    assert seq == list(range(seq[0], seq[0] + len(seq)))
    thief = scenario.actor("impossible-travel-1").scripts[0]
    victim = scenario.actor("geo-victim-1").scripts[0]
    assert thief.api_key_id == victim.api_key_id and thief.user_id == victim.user_id


def test_short_duration_refused() -> None:
    with pytest.raises(ValueError):
        build_scenario(1, 30.0, picker(), KEY)


# ---------------------------------------------------------------------------- scoring

T0 = 1_700_000_000.0
ATTACKER, USER = "203.0.113.9", "198.51.100.7"


def _out(actor: str, i: int, sent: float, status: int, blocked: str | None = None, foreign: bool = False,
         ip: str = ATTACKER) -> Outcome:
    return Outcome(actor, f"{actor}-{i}", ip, "POST", "/login", T0 + sent, T0 + sent + 0.004, status,
                   blocked, "dec-1" if blocked else None, foreign)


@pytest.fixture
def small_run():
    """An attacker at 200 req/s: 12 failures answered by the upstream (the 10th crosses the
    ip threshold at +45 ms, after a username throttle at +10 ms), then 403s from +60 ms; a
    benign user with one 200 and one 403 by a decision; two true and one false detection."""
    attack = Actor("stuffer", "stuffing-fast", True, detectors=frozenset({"credential_stuffing"}),
                   keys=frozenset({f"ip:{ATTACKER}", f"prefix:{prefix_of(ATTACKER)}", "username:h1"}),
                   rate_per_s=200.0, response="ban")
    benign = Actor("person", "user", False, keys=frozenset({f"ip:{USER}"}))
    outcomes = [_out("stuffer", i, i * 0.005, 401, foreign=(i == 3)) for i in range(12)]
    outcomes += [_out("stuffer", 12 + i, 0.060 + i * 0.005, 403, "ban") for i in range(8)]
    outcomes += [_out("person", 0, 0.01, 200, ip=USER), _out("person", 1, 0.5, 403, "ban", ip=USER)]
    stored = {o.request_id: StoredRequest(o.request_id, o.sent_at + 0.001, o.ip,
                                          "decision" if o.blocked_by else "upstream", o.status, o.decision_id)
              for o in outcomes}
    trigger = stored["stuffer-9"]  # sent at +45 ms, stored at +46 ms
    true_det = StoredDetection("det-1", trigger.ts, "credential_stuffing", "ip", ATTACKER, {"rule": "ip"},
                               tuple(f"stuffer-{i}" for i in range(10)))
    false_det = StoredDetection("det-2", T0 + 0.4, "credential_stuffing", "ip", USER, {"rule": "ip"}, ("person-0",))
    username_det = StoredDetection("det-0", T0 + 0.011, "credential_stuffing", "username", "h1",
                                   {"rule": "username_during_spike"}, ("stuffer-2",))
    decisions = [StoredDecision("dec-1", trigger.ts, "ip", ATTACKER, "ban", "credential_stuffing", "det-1"),
                 StoredDecision("dec-0", T0 + 0.011, "username", "h1", "throttle", "credential_stuffing", "det-0")]
    seen = {"stuffer-9": trigger.ts + 0.003, "det-1": trigger.ts + 0.008, "dec-1": trigger.ts + 0.009}
    created = {"stuffer-9": trigger.ts + 0.002}
    return score([attack, benign], outcomes, [], stored, [username_det, true_det, false_det], decisions, seen,
                 created)


def test_detector_figures(small_run) -> None:
    row = small_run["detectors"]["credential_stuffing"]
    assert (row["detections"], row["true_positives"], row["false_positives"]) == (3, 2, 1)
    assert row["precision"] == pytest.approx(2 / 3, abs=1e-4) and row["recall"] == 1.0
    assert row["benign_actors_blocked"] == ["person"]
    assert small_run["false_positive_detections"][0]["on"] == "person"


def test_attack_timings(small_run) -> None:
    (row,) = small_run["attacks"]
    assert row["start_to_first_detection_s"] == pytest.approx(0.011)
    # the threshold that counts is the ip rule's, whose ban answered the first 403
    assert row["trigger_request_id"] == "stuffer-9" and row["decision"]["id"] == "dec-1"
    assert row["start_to_threshold_s"] == pytest.approx(0.046)
    assert row["threshold_to_event_created_ms"] == pytest.approx(2.0)
    assert row["threshold_to_event_seen_ms"] == pytest.approx(3.0)
    assert row["threshold_to_decision_seen_ms"] == pytest.approx(9.0)
    # the first 403: sent at +60 ms, stored at +61 ms, received at +64 ms; threshold stored at +46 ms
    assert row["threshold_to_first_403_ms"] == pytest.approx(15.0)
    assert row["threshold_to_first_403_client_ms"] == pytest.approx(18.0)
    assert row["answered_before_first_block"] == 12 and row["foreign_objects_before_first_block"] == 1
    assert row["answered_after_threshold"] == 2  # stuffer-10 and stuffer-11
    assert row["achieved_rate_per_s"] == pytest.approx(19 / 0.095, rel=1e-3)


def test_challenges_block_attack_tools_not_people_who_solve_them() -> None:
    """A username challenge (decision dec-c on the distributed attack's detection): the
    attack tool's attempts it answered are blocks; a person answered a challenge who then
    sent the login again, solved, is not blocked; a BOLA attacker logging in to an attacked
    account (a challenge of another actor's decision) is not blocked by it either."""
    spread = Actor("spread", "stuffing-distributed", True, detectors=frozenset({"credential_stuffing"}),
                   keys=frozenset({"username:h1"}), rate_per_s=5.0, response="challenge")
    person = Actor("owner", "user", False, keys=frozenset({f"ip:{USER}"}))
    bola = Actor("bola", "bola-sequential-slow", True, detectors=frozenset({"bola"}),
                 keys=frozenset({"principal:k9"}), rate_per_s=2.0, response="ban", solves_challenges=True)
    outcomes = [_out("spread", 0, 0.0, 401), _out("spread", 1, 0.2, 403, "challenge"),
                _out("owner", 0, 0.3, 403, "challenge", ip=USER), _out("owner", 1, 0.4, 200, ip=USER),
                _out("bola", 0, 0.5, 403, "challenge"), _out("bola", 1, 0.6, 200)]
    outcomes = [dataclasses.replace(o, decision_id="dec-c") if o.blocked_by else o for o in outcomes]
    stored = {o.request_id: StoredRequest(o.request_id, o.sent_at + 0.001, o.ip,
                                          "decision" if o.blocked_by else "upstream", o.status, o.decision_id)
              for o in outcomes}
    det = StoredDetection("det-c", T0 + 0.1, "credential_stuffing", "username", "h1",
                          {"rule": "username_during_spike"}, ("spread-0",))
    decisions = [StoredDecision("dec-c", T0 + 0.1, "username", "h1", "challenge", "credential_stuffing", "det-c")]
    run = score([spread, person, bola], outcomes, [], stored, [det], decisions, {}, {})
    rows = {r["actor"]: r for r in run["attacks"]}
    assert (rows["spread"]["first_block"], rows["spread"]["blocked_requests"]) == ("challenge", 1)
    assert (rows["bola"]["first_block"], rows["bola"]["blocked_requests"]) == (None, 0)
    (owner,) = run["benign"]
    assert (owner["blocked_requests"], owner["challenged_requests"]) == (0, 1)
    assert bola.solves and person.solves and not spread.solves


def test_targets(small_run) -> None:
    verdicts = {t["target"].split(" ")[0]: t for t in small_run["targets"]}
    assert verdicts["recall"]["met"] and verdicts["recall"]["figure"] == 1.0
    assert not verdicts["zero"]["met"] and verdicts["zero"]["figure"] == 1
    assert verdicts["median"]["met"] and verdicts["median"]["figure"] == pytest.approx(15.0)
    assert verdicts["at"]["met"] and verdicts["at"]["figure"] == 2


def test_median_counts_missing_as_infinite() -> None:
    assert median_or_inf([10.0, None, None]) == math.inf
    assert median_or_inf([10.0, 30.0, None]) == 30.0
    assert median_or_inf([]) is None


def test_broker_probe_summary_per_ten_seconds() -> None:
    lines = [{"t": T0 + i * 0.5, "ack_ms": 1.0, "hop_ms": float(i % 10)} for i in range(40)]   # 20 s
    first, second = summarize_probe(lines)
    assert (first["from_s"], first["n"], second["from_s"], second["n"]) == (0.0, 20, 10.0, 20)
    assert (first["hop_ms_median"], first["hop_ms_p90"], first["hop_ms_max"]) == (4.5, 8.0, 9.0)
    assert first["ack_ms_median"] == first["ack_ms_p90"] == 1.0
    assert summarize_probe([]) == []
