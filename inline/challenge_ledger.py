"""Used challenge solutions in Redis, shared by every gateway process.

A solved challenge (:mod:`inline.challenge`) lets one request through. A gateway
remembers the solutions it accepted in its own memory, so behind N gateway
processes (``gatewatch gateway --workers N``, or several hosts) one solution would
pass up to N times. With ``gatewatch_challenge_redis_url`` each accepted solution is
also claimed in Redis with one ``SET key 1 NX EXAT expires_at`` (Redis ≥ 6.2): the
first gateway to claim it lets the request through, every later claim, from any
gateway, finds the key and answers ``replayed``. The key expires with the
challenge, so Redis forgets a solution when it could no longer pass anyway.

**Failure.** A claim is bounded by the spec's ``timeout_s`` (:data:`CLAIM_TIMEOUT_S`,
50 ms: only requests that carry a solution wait for it). Redis slow, down or answering garbage: :meth:`claim`
raises :class:`inline.ratelimit_redis.BackendUnavailable`; the gateway then falls
back to its own memory (**fail open**: the solution passes once per gateway
process, as without Redis; counted in ``gatewatch_challenges_total{outcome=
"passed_unshared"}``). Failing closed would lock out the people the challenge is
there to let in.

Reference: Redis docs "SET" (``NX``, ``EXAT``); redis-py ``redis.asyncio``.
"""

from __future__ import annotations

import asyncio

from inline.ratelimit_redis import BackendUnavailable, RedisSpec, redis_client

#: Prefix of the keys of used solutions (followed by the challenge's signature).
DEFAULT_PREFIX = "gatewatch:challenge:"
#: Longest wait for a claim, seconds (only requests carrying a solution wait for it).
CLAIM_TIMEOUT_S = 0.05


def ledger_spec(url: str) -> RedisSpec:
    """Where the used solutions live: ``url`` (``redis://``, ``rediss://``, ``unix://``),
    :data:`CLAIM_TIMEOUT_S` per claim, keys under :data:`DEFAULT_PREFIX`."""
    return RedisSpec(url, CLAIM_TIMEOUT_S, DEFAULT_PREFIX)


class RedisSolutionLedger:
    """Claims solutions in Redis (see the module docstring). Create it anywhere (it
    connects on first use, inside the running event loop); :meth:`close` it in ``done()``.
    Counters: ``claims`` (answered by Redis), ``failures``."""

    def __init__(self, spec: RedisSpec) -> None:
        self.spec = spec
        self.client = redis_client(spec.url)
        self.claims = 0
        self.failures = 0

    async def claim(self, signature: str, expires_at: int) -> bool:
        """Claim the solution of the challenge signed ``signature``, valid until
        ``expires_at`` (epoch s): True if no gateway claimed it before, False if one did.
        Raises :class:`BackendUnavailable` (reason ``timeout`` or ``error``) when Redis
        does not answer within ``spec.timeout_s`` or fails."""
        key = self.spec.prefix + signature
        try:
            created = await asyncio.wait_for(self.client.set(key, b"1", nx=True, exat=int(expires_at)),
                                             self.spec.timeout_s)
        except asyncio.CancelledError:
            raise
        except asyncio.TimeoutError as exc:
            self.failures += 1
            raise BackendUnavailable("timeout", type(exc).__name__) from None
        except Exception as exc:  # connection refused/reset, pool exhausted, an error reply
            self.failures += 1
            raise BackendUnavailable("error", f"{type(exc).__name__}: {exc}") from None
        self.claims += 1
        return bool(created)

    async def close(self) -> None:
        """Close the connections (idempotent)."""
        await self.client.aclose()
