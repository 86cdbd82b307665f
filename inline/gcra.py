"""GCRA, the Generic Cell Rate Algorithm: the arithmetic of gatewatch's rate limits.

Source: ITU-T Recommendation I.371, "Traffic control and congestion control
in B-ISDN", the virtual scheduling algorithm; explained for HTTP APIs in
Brandur Leach, "Rate limiting, cells, and GCRA" (2015,
https://brandur.org/rate-limiting), the design of his ``throttled`` library.

GCRA keeps one number per key: the theoretical arrival time (TAT) of the
next request. With emission interval ``T = 1 / rate_per_s`` and a burst of
``burst`` requests, a request at ``now`` is allowed when
``max(TAT, now) + T - burst * T <= now``; then ``max(TAT, now) + T`` becomes
the new TAT. It behaves like a token bucket of ``burst`` tokens refilled at
``rate_per_s`` — without a refill timer — with O(1) time and one number of
state per key. A key whose TAT has passed is indistinguishable from a new
key, so state can be forgotten then (swept here, expired in Redis).

Derived figures, as the IETF RateLimit fields report them
(:mod:`inline.ratelimit_headers`):

- *remaining* — requests allowed right now: ``floor(burst - (TAT - now) / T)``;
- *reset* — seconds until the whole burst is available again: ``TAT - now``;
- *retry after* — for a refused request, seconds until it would be allowed:
  ``TAT - now - (burst - 1) * T``.

Several limits can apply to one request (per IP, per principal, per route
policy). :func:`check_all` judges them together, all or nothing: the
request is allowed only if every limit allows it, and then counts against
every limit; a refused request counts against none (so a client over one
limit does not also drain its others). :mod:`inline.ratelimit_redis`
implements the same arithmetic in a Lua script for state shared between
gateway processes.

Time is in seconds here, on one clock chosen by the caller (monotonic
in-process); the Redis script works in integer microseconds of the Redis
server clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Slack for float rounding when counting whole requests (``2.9999999999`` is 3).
_EPS = 1e-9


@dataclass(frozen=True)
class RateSpec:
    """A GCRA limit: ``rate_per_s`` requests per second sustained, ``burst``
    requests at once (both > 0)."""

    rate_per_s: float
    burst: int

    @property
    def interval_s(self) -> float:
        """Emission interval T in seconds (time between two requests at the sustained rate)."""
        return 1.0 / self.rate_per_s

    @property
    def window_s(self) -> float:
        """Seconds an idle-from-empty key takes to get its whole burst back: ``burst / rate``."""
        return self.burst / self.rate_per_s

    def __str__(self) -> str:
        return f"{self.rate_per_s:g}:{self.burst}"


def parse_rate_limit(text: str) -> RateSpec | None:
    """Parse a limit option: ``"RATE:BURST"`` (e.g. ``"50:100"``: 50 req/s,
    bursts of 100) or ``"off"`` (no limit → None).

    Raises ``ValueError`` if RATE is not a positive finite number or BURST
    not a positive integer.
    """
    text = text.strip()
    if text.lower() == "off":
        return None
    rate_s, sep, burst_s = text.partition(":")
    if not sep:
        raise ValueError(f"rate limit {text!r} is not 'RATE:BURST' or 'off'")
    try:
        rate, burst = float(rate_s), int(burst_s)
    except ValueError:
        raise ValueError(f"rate limit {text!r}: RATE must be a number and BURST an integer") from None
    if not (math.isfinite(rate) and rate > 0) or burst < 1:
        raise ValueError(f"rate limit {text!r}: RATE must be > 0 and BURST >= 1")
    return RateSpec(rate, burst)


def format_rate_limit(limit) -> str:
    """A limit with ``rate_per_s`` and ``burst`` (:class:`gatewatch.settings.RateLimit`,
    :class:`RateSpec`) as the option text ``"RATE:BURST"``; None → ``"off"``."""
    if limit is None:
        return "off"
    return f"{limit.rate_per_s:g}:{limit.burst}"


def gcra(tat: float | None, now: float, spec: RateSpec) -> tuple[bool, float, float]:
    """One GCRA decision (virtual scheduling form of ITU-T I.371).

    ``tat`` is the key's stored theoretical arrival time (None for a new
    key), ``now`` the current time, both in seconds on the same monotonic
    clock. Returns ``(allowed, new_tat, retry_after_s)``: store ``new_tat``
    (unchanged when refused); ``retry_after_s`` is 0 when allowed, else the
    wait in seconds until this request would be allowed.
    """
    t = spec.interval_s
    base = now if tat is None or tat < now else tat
    new_tat = base + t
    allow_at = new_tat - spec.burst * t
    if allow_at > now:
        return False, (now if tat is None else tat), allow_at - now
    return True, new_tat, 0.0


def retry_after_header(retry_after_s: float) -> str:
    """``Retry-After`` value (RFC 9110 §10.2.3): whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(retry_after_s)))


@dataclass(frozen=True, slots=True)
class LimitState:
    """One limit after a check: ``remaining`` requests allowed right now (0..burst),
    ``reset_s`` seconds until its whole burst is back, ``retry_after_s`` seconds
    until a request would pass this limit (0 if it does now)."""

    remaining: int
    reset_s: float
    retry_after_s: float = 0.0

    @property
    def refused(self) -> bool:
        """True if this limit refused the request."""
        return self.retry_after_s > 0


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of checking one request against its limits: ``allowed`` and one
    :class:`LimitState` per limit, in the order the limits were given."""

    allowed: bool
    states: tuple[LimitState, ...]

    @property
    def retry_after_s(self) -> float:
        """Seconds until every refusing limit would allow the request (0 if allowed)."""
        return max((s.retry_after_s for s in self.states), default=0.0)


def remaining_after(tat: float, now: float, spec: RateSpec) -> int:
    """Requests a key with theoretical arrival time ``tat`` may still make at ``now``
    (``floor(burst - (tat - now) / T)``, clamped to 0..burst)."""
    ahead = max(0.0, tat - now)
    return max(0, min(spec.burst, math.floor(spec.burst - ahead / spec.interval_s + _EPS)))


def check_all(tats: Sequence[float | None], now: float,
              specs: Sequence[RateSpec]) -> tuple[Verdict, list[float | None]]:
    """Judge one request against several limits at ``now``, all or nothing.

    ``tats[i]`` is the stored TAT of limit ``i`` (None: new key) and
    ``specs[i]`` its limit; times in seconds on one clock. Returns the
    :class:`Verdict` and the TATs to store (unchanged when refused). With one
    limit this is :func:`gcra`.
    """
    bases = [now if tat is None or tat < now else tat for tat in tats]
    allowed = all(base - now <= (spec.burst - 1) * spec.interval_s + _EPS
                  for base, spec in zip(bases, specs))
    states, new_tats = [], list(tats)
    for i, (base, spec) in enumerate(zip(bases, specs)):
        if allowed:
            tat = base + spec.interval_s
            new_tats[i] = tat
            states.append(LimitState(remaining_after(tat, now, spec), tat - now))
        else:
            retry = max(0.0, base - now - (spec.burst - 1) * spec.interval_s)
            states.append(LimitState(0 if retry > _EPS else remaining_after(base, now, spec),
                                     base - now, retry if retry > _EPS else 0.0))
    return Verdict(allowed, tuple(states)), new_tats


class GcraLimiter:
    """In-process GCRA state for many keys: ``{key: TAT}``, swept of expired keys.

    ``spec``: the limit of :meth:`hit` (None if only :meth:`check` is used,
    which takes a limit per key). ``sweep_every_s``: time between sweeps of
    keys whose TAT has passed (a sweep is O(keys)). ``max_keys``: above this
    many keys a sweep runs at once (still at most once per second), which
    bounds memory to the keys active within one burst window.
    """

    def __init__(self, spec: RateSpec | None = None, sweep_every_s: float = 10.0,
                 max_keys: int = 100_000) -> None:
        self.spec = spec
        self.sweep_every_s = sweep_every_s
        self.max_keys = max_keys
        self._tat: dict[str, float] = {}
        self._last_sweep = -math.inf
        self.refused = 0

    def __len__(self) -> int:
        return len(self._tat)

    def _maybe_sweep(self, now: float) -> None:
        if now - self._last_sweep >= self.sweep_every_s or (
                len(self._tat) >= self.max_keys and now - self._last_sweep >= 1.0):
            self.sweep(now)

    def hit(self, key: str, now: float) -> float:
        """Count one request of ``key`` at ``now`` (seconds, monotonic) against
        :attr:`spec`. Returns 0.0 if allowed, else the seconds to wait (> 0)."""
        assert self.spec is not None, "GcraLimiter.hit needs a spec"
        self._maybe_sweep(now)
        allowed, new_tat, retry_after = gcra(self._tat.get(key), now, self.spec)
        if allowed:
            self._tat[key] = new_tat
            return 0.0
        self.refused += 1
        return retry_after

    def check(self, hits: Sequence[tuple[str, RateSpec]], now: float) -> Verdict:
        """Count one request against several ``(key, limit)`` pairs at ``now``,
        all or nothing (:func:`check_all`); store the new TATs if allowed."""
        self._maybe_sweep(now)
        keys = [key for key, _ in hits]
        verdict, tats = check_all([self._tat.get(k) for k in keys], now, [spec for _, spec in hits])
        if verdict.allowed:
            for key, tat in zip(keys, tats):
                self._tat[key] = tat  # type: ignore[assignment]
        else:
            self.refused += 1
        return verdict

    def sweep(self, now: float) -> int:
        """Forget keys whose TAT is at or before ``now``; returns how many."""
        stale = [k for k, tat in self._tat.items() if tat <= now]
        for k in stale:
            del self._tat[k]
        self._last_sweep = now
        return len(stale)
