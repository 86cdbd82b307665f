"""Proof-of-work challenges (inline/challenge.py), solved with altcha's own solver; the shared
ledger of used solutions (inline/challenge_ledger.py) on a real redis-server."""

from __future__ import annotations

import asyncio
import time

import altcha
import pytest

from inline.challenge import ChallengeGate, ChallengeSpec
from inline.challenge_ledger import DEFAULT_PREFIX, RedisSolutionLedger, ledger_spec
from redis_testkit import RedisServer, redis_server  # noqa: F401  (fixture)

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


def test_gates_sharing_a_redis_ledger_pass_a_solution_once_in_all(redis_server: RedisServer):  # noqa: F811
    """Two gates with their own ledger clients on one real redis-server, as two gateway
    processes: the first claim wins, the key expires with the challenge, invalid
    solutions never reach Redis, and a hung Redis passes the solution unshared."""
    async def go() -> None:
        ledgers = [RedisSolutionLedger(ledger_spec(redis_server.url)) for _ in range(2)]
        first, second = (ChallengeGate(ChallengeSpec(KEY, cost=10, ttl_s=60), ledger) for ledger in ledgers)
        try:
            now = time.time()
            solution = solved(first, now)
            assert await first.check_shared(solution, now) == "passed"
            assert await second.check_shared(solution, now) == "replayed"
            assert await first.check_shared(solution, now) == "replayed"   # its own memory, no claim
            signature = altcha.Payload.from_base64(solution).challenge.signature
            assert 55 <= await ledgers[0].client.ttl(DEFAULT_PREFIX + signature) <= 61
            assert [ledger.claims for ledger in ledgers] == [1, 1]
            assert await second.check_shared("not a payload", now) == "invalid"
            assert await second.check_shared(None, now) == "missing"
            assert [ledger.claims for ledger in ledgers] == [1, 1]

            redis_server.pause()
            try:
                hung = solved(second, now)
                assert await second.check_shared(hung, now) == "passed_unshared"
                assert await second.check_shared(hung, now) == "replayed"
                assert ledgers[1].failures == 1
            finally:
                redis_server.resume()
        finally:
            for ledger in ledgers:
                await ledger.close()
    asyncio.run(go())
