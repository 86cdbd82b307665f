"""Proof-of-work challenges: what a ``challenge`` decision asks of a client.

A ``challenge`` decision stops the requests it matches unless each one carries a
solved challenge. The gateway answers such a request **403** with the header
``Gatewatch-Mitigated: challenge`` (the convention of Cloudflare's
``cf-mitigated: challenge``) and a JSON body holding a fresh ALTCHA v2 challenge
(https://altcha.org, library ``altcha``: an HMAC-signed key-derivation puzzle
with an expiry). The client — the ALTCHA widget in a browser, or
``altcha.solve_challenge`` in an SDK — finds the counter whose derived key starts
with the challenge's prefix and sends the request again with the solution, the
base64 ALTCHA payload, in :data:`SOLUTION_HEADER`. A valid, unexpired solution that
was not used before lets **that one request** through.

Why: a credential-stuffing attack spread over hundreds of addresses tries a few
passwords from each, so per-address limits never fill, and a per-account limit
locks the account's owner out with the attackers (the trade-off measured in
:mod:`inline.enforcement`). Attack tools do not solve challenges, and one that
does pays the work for every attempt; a person logging in pays it once.

Cost, measured here with ``altcha`` 2.3.0 (iterated SHA-256, prefix ``00`` = 256
counters on average): at ``cost`` 500 a Python client solves in ~0.05–0.1 s; the
gateway issues a challenge in ~0.07 ms and verifies a solution in ~0.5 ms (one key
derivation). Verification runs only on requests that carry a solution whose
signature (HMAC, cheap) is valid.

Single use: each gateway process remembers the solutions it accepted until their
challenge expires. Behind several gateway processes, a ledger in Redis
(:mod:`inline.challenge_ledger`, ``gatewatch_challenge_redis_url``) makes a solution
pass once in all of them; without one, or while Redis is away, N gateways accept a
solution up to N times.

What it does not do: the memory of used solutions without Redis is lost on
restart; a challenge is not bound to the client or to the decision, so solutions
can be farmed elsewhere (each still costs its work).
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass
from typing import Protocol

import altcha

from inline.ratelimit_redis import BackendUnavailable

logger = logging.getLogger(__name__)

#: Request header carrying a solved challenge (the base64 ALTCHA payload).
SOLUTION_HEADER = "X-Gatewatch-Challenge"
#: Response header marking a challenge answer (Cloudflare's ``cf-mitigated`` convention).
MITIGATED_HEADER = "Gatewatch-Mitigated"
#: Key-derivation algorithm of the challenges (ALTCHA v2: iterated SHA-256).
ALGORITHM = "SHA-256"
#: Longest solution header read, bytes (a payload is ~600 bytes).
MAX_SOLUTION_BYTES = 4096


@dataclass(frozen=True)
class ChallengeSpec:
    """``hmac_key``: secret that signs challenges (non-empty); ``cost``: key-derivation
    iterations per counter tried (≥ 1; the work is ~256 × cost SHA-256 on average);
    ``ttl_s``: seconds a challenge stays solvable (≥ 1)."""

    hmac_key: str
    cost: int = 500
    ttl_s: int = 300

    def __post_init__(self) -> None:
        if not self.hmac_key:
            raise ValueError("challenge hmac_key must not be empty")
        if self.cost < 1 or self.ttl_s < 1:
            raise ValueError("challenge cost and ttl_s must be >= 1")


class SolutionLedger(Protocol):
    """Where gateways claim the solutions they accept (:mod:`inline.challenge_ledger`)."""

    async def claim(self, signature: str, expires_at: int) -> bool:
        """True if no gateway claimed the solution before; raises ``BackendUnavailable``."""
        ...


class ChallengeGate:
    """Issues challenges and checks solutions (see the module docstring); remembers the
    solutions it accepted until their challenge expires, so each passes once — in every
    gateway sharing ``ledger``, when one is given (:meth:`check_shared`)."""

    def __init__(self, spec: ChallengeSpec, ledger: SolutionLedger | None = None) -> None:
        self.spec = spec
        self.ledger = ledger
        self._used: set[str] = set()
        self._expiry: list[tuple[int, str]] = []   # (expires_at epoch s, signature) of used solutions

    def issue(self, now: float) -> dict:
        """A fresh challenge as the JSON object the ALTCHA client reads
        (``{"parameters": {...}, "signature": "..."}``), valid ``ttl_s`` from ``now`` (epoch s)."""
        challenge = altcha.create_challenge(ALGORITHM, self.spec.cost, expires_at=int(now) + self.spec.ttl_s,
                                            hmac_secret=self.spec.hmac_key)
        return challenge.to_dict()

    def check(self, solution: str | None, now: float) -> str:
        """Verdict on a request's :data:`SOLUTION_HEADER` value at ``now`` (epoch s), by
        this gateway's memory only: ``"passed"`` (valid, unexpired, first use: now used),
        ``"missing"``, ``"replayed"`` or ``"invalid"`` (malformed, expired, tampered or
        wrong). Never raises."""
        verdict, signature, expires_at = self._verify(solution, now)
        if verdict != "valid":
            return verdict
        self._remember(signature, expires_at)
        return "passed"

    async def check_shared(self, solution: str | None, now: float) -> str:
        """:meth:`check`, with a valid solution also claimed in the ``ledger`` (when there
        is one): ``"replayed"`` if another gateway claimed it first. Redis away:
        ``"passed_unshared"`` (passed, single-use in this process only: fail open).
        Never raises."""
        verdict, signature, expires_at = self._verify(solution, now)
        if verdict != "valid":
            return verdict
        if self.ledger is None:
            self._remember(signature, expires_at)
            return "passed"
        self._remember(signature, expires_at)   # before the await: a concurrent copy here is replayed
        try:
            first = await self.ledger.claim(signature, expires_at)
        except BackendUnavailable as exc:
            logger.warning("challenge ledger unavailable (%s): solution single-use in this gateway only", exc)
            return "passed_unshared"
        return "passed" if first else "replayed"

    def _verify(self, solution: str | None, now: float) -> tuple[str, str, int]:
        """``("valid", signature, expires_at)`` for a valid, unexpired solution not used
        here before; else ``(verdict, "", 0)`` with the verdict of :meth:`check`."""
        if not solution:
            return "missing", "", 0
        if len(solution) > MAX_SOLUTION_BYTES:
            return "invalid", "", 0
        self._forget_expired(now)
        try:
            payload = altcha.Payload.from_base64(solution)
            signature = payload.challenge.signature
            expires_at = payload.challenge.parameters.expires_at
        except Exception:   # any malformed payload (base64, JSON, fields) is just invalid
            return "invalid", "", 0
        if not signature or expires_at is None or expires_at <= now:
            return "invalid", "", 0
        if signature in self._used:
            return "replayed", "", 0
        try:
            verified = altcha.verify_solution(payload, self.spec.hmac_key).verified
        except Exception:
            return "invalid", "", 0
        return ("valid", signature, int(expires_at)) if verified else ("invalid", "", 0)

    def _remember(self, signature: str, expires_at: int) -> None:
        self._used.add(signature)
        heapq.heappush(self._expiry, (expires_at, signature))

    def __len__(self) -> int:
        """Solutions remembered as used."""
        return len(self._used)

    def _forget_expired(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, signature = heapq.heappop(self._expiry)
            self._used.discard(signature)
