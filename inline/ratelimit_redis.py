"""GCRA state in Redis, shared by every gateway process: one atomic Lua script per request.

Several gateway processes (``gatewatch gateway --workers N``, or several
hosts) must count one client's requests together, or each would grant the
whole limit. Here every request runs one Lua script (:data:`SCRIPT`) that
reads the TATs of all the limits it is counted against, decides all or
nothing (:func:`inline.gcra.check_all`) and writes the new TATs. Redis runs a
script atomically (no other command runs meanwhile), so concurrent requests
from any number of gateways are counted exactly. The script is sent once and
then called by its SHA-1 with ``EVALSHA`` (redis-py's ``register_script``,
which reloads it on a ``NOSCRIPT`` answer, e.g. after a Redis restart).

**Clock.** The script reads the Redis server clock (``TIME``), never the
gateways' clocks: all gateways judge on one clock, so clock skew between
gateway hosts cannot grant or refuse extra requests. (A write after
``TIME`` is allowed because scripts replicate their effects, the only mode
since Redis 7.0; Redis ≥ 5 needed.) Times in the script are integer
microseconds; an emission interval is rounded to whole microseconds (rates
up to 10⁶/s; relative error at most rate / 2·10⁶: 5·10⁻⁵ at 100/s, none
for rates that divide 10⁶).

**State.** One string key per counter, ``PREFIX + counter`` holding the TAT
in microseconds, with an expiry at the TAT (``PX``): a key whose TAT has
passed equals a new key, so Redis forgets idle clients by itself. All keys
of one request must live on one server: Redis Cluster is not supported
(use one primary, optionally with Sentinel).

**Failure.** Each call is bounded by ``timeout_s`` (default 5 ms; the
timeout cancels the call and redis-py drops that connection). Slow, down,
refusing connections, out of pool connections or answering garbage: the
call raises :class:`BackendUnavailable` with a reason (``timeout``,
``error``) — never anything else — and the addon fails open or closed
(:mod:`inline.ratelimit`). After :data:`FAILURES_TO_OPEN` consecutive
failures Redis is not asked for :data:`RETRY_S` seconds (reason ``down``),
so an outage does not cost every request its timeout; the first call after
that probes it again. redis-py's own retries are off: the timeout is the
whole budget. A call that timed out may still have reached Redis and run
there later: such a request passed (fail open) and was counted too — a
client is never granted more than it would be without the outage.

Reference: Redis docs "Scripting with Lua" (atomicity, ``EVALSHA``, script
cache), "TIME"; redis-py ``redis.asyncio`` (``Redis.from_url``,
``register_script``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from inline.gcra import LimitState, RateSpec, Verdict

logger = logging.getLogger(__name__)

#: Consecutive failures after which Redis is left alone for :data:`RETRY_S`.
FAILURES_TO_OPEN = 3
#: Seconds Redis is not asked after :data:`FAILURES_TO_OPEN` failures.
RETRY_S = 1.0
#: Most connections one gateway process opens to Redis; beyond, calls wait for one.
MAX_CONNECTIONS = 64
#: Backstop socket timeouts of redis-py, seconds (the per-call timeout is much shorter).
SOCKET_TIMEOUT_S = 1.0

#: The GCRA script. KEYS[i]: counter i. ARGV[1]: "now" in µs, or "" for the server
#: clock (the gateway always sends ""; tests pin the time). ARGV[2i], ARGV[2i+1]:
#: emission interval of limit i in µs (integer >= 1) and its burst (integer >= 1).
#: Returns {allowed (1/0), then per limit: remaining, reset µs, retry-after µs}.
SCRIPT = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local n = #KEYS
local base = {}
local allowed = 1
for i = 1, n do
  local interval = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat == nil or tat < now then tat = now end
  base[i] = tat
  if tat - now > (burst - 1) * interval then allowed = 0 end
end
local out = {allowed}
for i = 1, n do
  local interval = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local tat = base[i]
  local retry = 0
  if allowed == 1 then
    tat = tat + interval
    redis.call('SET', KEYS[i], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000))
  else
    retry = tat - now - (burst - 1) * interval
    if retry < 0 then retry = 0 end
  end
  local remaining = 0
  if retry == 0 then
    remaining = math.floor((burst * interval - (tat - now)) / interval)
    if remaining < 0 then remaining = 0 end
    if remaining > burst then remaining = burst end
  end
  out[#out + 1] = remaining
  out[#out + 1] = tat - now
  out[#out + 1] = retry
end
return out
"""

Reason = Literal["timeout", "error", "down"]


class BackendUnavailable(Exception):
    """Redis could not judge the request; ``reason`` is ``timeout``, ``error`` or
    ``down`` (not asked: too many recent failures)."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class RedisSpec:
    """Where and how to reach Redis: ``url`` (``redis://host:port/db``,
    ``rediss://`` for TLS, ``unix://``), ``timeout_s`` per call, key ``prefix``."""

    url: str
    timeout_s: float = 0.005
    prefix: str = "gatewatch:rl:"


def interval_us(spec: RateSpec) -> int:
    """The emission interval of ``spec`` in whole microseconds (at least 1)."""
    return max(1, round(1_000_000 / spec.rate_per_s))


def parse_reply(reply: Sequence[int], count: int) -> Verdict:
    """The :class:`Verdict` of a :data:`SCRIPT` reply for ``count`` limits.
    Raises ``ValueError`` for a reply of another shape."""
    if len(reply) != 1 + 3 * count:
        raise ValueError(f"rate-limit script answered {len(reply)} values for {count} limits")
    states = tuple(LimitState(int(reply[1 + 3 * i]), int(reply[2 + 3 * i]) / 1e6, int(reply[3 + 3 * i]) / 1e6)
                   for i in range(count))
    return Verdict(int(reply[0]) == 1, states)


def redis_client(url: str) -> Redis:
    """A ``redis.asyncio`` client of ``url`` as the gateway uses Redis: a blocking pool of
    at most :data:`MAX_CONNECTIONS` (beyond, a call waits for a connection within its
    timeout instead of failing at once), :data:`SOCKET_TIMEOUT_S` socket timeouts, no
    retries (each caller's timeout is its whole budget). It connects on first use.
    Raises ``ValueError`` for a URL redis-py cannot parse."""
    from redis.asyncio import BlockingConnectionPool
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    pool = BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=SOCKET_TIMEOUT_S,
        socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0))
    return Redis(connection_pool=pool)


class RedisGcra:
    """GCRA over Redis (see the module docstring). Create it anywhere (it connects
    on first use, inside the running event loop); :meth:`close` it in ``done()``.

    ``clock`` (seconds, monotonic) only times the pause after failures.
    Counters: ``calls`` (answered by Redis), ``failures`` (by reason).
    """

    def __init__(self, spec: RedisSpec, clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self.clock = clock
        self.client = redis_client(spec.url)
        self.script = self.client.register_script(SCRIPT)
        self.calls = 0
        self._consecutive = 0
        self._pause_until = float("-inf")

    async def check(self, hits: Sequence[tuple[str, RateSpec]], now_us: int | None = None) -> Verdict:
        """Count one request against ``(counter, limit)`` pairs, all or nothing, on the
        Redis clock (``now_us`` pins the time: tests only).

        Raises :class:`BackendUnavailable` when Redis does not answer within the
        timeout, fails, or is paused after repeated failures.
        """
        if self.clock() < self._pause_until:
            raise BackendUnavailable("down")
        keys = [self.spec.prefix + counter for counter, _ in hits]
        args: list[str | int] = ["" if now_us is None else str(int(now_us))]
        for _, limit in hits:
            args += [interval_us(limit), limit.burst]
        try:
            reply = await asyncio.wait_for(self.script(keys=keys, args=args), self.spec.timeout_s)
            verdict = parse_reply(reply, len(hits))
        except asyncio.CancelledError:
            raise
        except (asyncio.TimeoutError, RedisTimeoutError) as exc:
            raise self._failed("timeout", exc) from None
        except Exception as exc:  # connection refused/reset, pool exhausted, script error, bad reply
            raise self._failed("error", exc) from None
        if self._consecutive:
            logger.warning("rate-limit Redis %s answers again", self._where())
        self._consecutive = 0
        self.calls += 1
        return verdict

    async def warm(self) -> bool:
        """Load the script into Redis's script cache ahead of the first request (so that
        call is one ``EVALSHA``). Returns False, logging a warning, if Redis is away."""
        try:
            self.script.sha = await asyncio.wait_for(self.client.script_load(SCRIPT), SOCKET_TIMEOUT_S)
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # not fatal: the first calls load it, or fail open/closed
            logger.warning("rate-limit Redis %s not reachable at start-up: %s: %s",
                           self._where(), type(exc).__name__, exc)
            return False

    def _failed(self, reason: Reason, exc: BaseException) -> BackendUnavailable:
        self._consecutive += 1
        if self._consecutive == 1:
            # Warning, not error: error-level logs during start-up stop mitmdump.
            logger.warning("rate-limit Redis %s: %s (%s)", self._where(), reason, type(exc).__name__)
        if self._consecutive >= FAILURES_TO_OPEN:
            self._pause_until = self.clock() + RETRY_S
        return BackendUnavailable(reason, f"{type(exc).__name__}: {exc}")

    def _where(self) -> str:
        kw = self.client.connection_pool.connection_kwargs
        return f"{kw.get('host', kw.get('path', '?'))}:{kw.get('port', '')}"

    async def close(self) -> None:
        """Close the connections (idempotent)."""
        await self.client.aclose()
