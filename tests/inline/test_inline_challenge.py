"""Proof-of-work challenges (inline/challenge.py), solved with altcha's own solver."""

from __future__ import annotations

import time

import altcha
import pytest

from inline.challenge import ChallengeGate, ChallengeSpec

KEY = "test-challenge-key"


def solved(gate: ChallengeGate, now: float) -> str:
    """A client's answer to a challenge the gate issued at ``now``: the base64 ALTCHA payload."""
    challenge = altcha.Challenge.from_dict(gate.issue(now))
    return altcha.Payload(challenge, altcha.solve_challenge(challenge)).to_base64()


def test_a_solution_passes_once_then_is_forgotten_when_its_challenge_expires():
    gate = ChallengeGate(ChallengeSpec(KEY, cost=10, ttl_s=60))
    now = time.time()
    solution = solved(gate, now)
    assert gate.check(solution, now) == "passed"
    assert gate.check(solution, now + 1) == "replayed"
    assert len(gate) == 1
    assert gate.check(solved(gate, now), now) == "passed"   # a second challenge, a second pass
    assert gate.check(solution, now + 61) == "invalid"      # expired: refused, and no longer remembered
    assert len(gate) == 0


def test_missing_malformed_forged_and_foreign_solutions_are_refused():
    gate = ChallengeGate(ChallengeSpec(KEY, cost=10))
    now = time.time()
    assert gate.check(None, now) == "missing"
    assert gate.check("", now) == "missing"
    for junk in ("not base64!", "e30=", "x" * 5000):   # "e30=" is "{}"
        assert gate.check(junk, now) == "invalid"
    wrong = altcha.Payload.from_base64(solved(gate, now))
    wrong.solution.counter += 1
    assert gate.check(wrong.to_base64(), now) == "invalid"
    other = ChallengeGate(ChallengeSpec("another-key", cost=10))
    assert gate.check(solved(other, now), now) == "invalid"   # signed with another gateway's key
    unsigned = altcha.create_challenge("SHA-256", 10, expires_at=int(now) + 60)
    assert gate.check(altcha.Payload(unsigned, altcha.solve_challenge(unsigned)).to_base64(), now) == "invalid"
    assert len(gate) == 0


@pytest.mark.parametrize("kwargs", [{"hmac_key": ""}, {"hmac_key": KEY, "cost": 0}, {"hmac_key": KEY, "ttl_s": 0}])
def test_bad_specs_raise(kwargs):
    with pytest.raises(ValueError):
        ChallengeSpec(**kwargs)
