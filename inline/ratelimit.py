"""In-process rate limiting with GCRA, per client IP and per principal.

GCRA, the Generic Cell Rate Algorithm (ITU-T Recommendation I.371, "Traffic
control and congestion control in B-ISDN", the virtual scheduling
algorithm; explained for HTTP APIs in Brandur Leach, "Rate limiting, cells,
and GCRA", 2015), keeps one number per key: the theoretical arrival time
(TAT) of the next request. With emission interval ``T = 1 / rate_per_s``
and a burst of ``burst`` requests, a request at ``now`` is allowed when
``max(TAT, now) + T - burst * T <= now``, which then becomes the new TAT.
It behaves like a token bucket of ``burst`` tokens refilled at
``rate_per_s``, with O(1) time and one float of state per key.

State is per gateway process (Redis would share it between processes; not
done here). A key whose TAT is in the past is indistinguishable from a new
key, so such keys are swept periodically and the table holds only keys
seen within the last ``burst / rate_per_s`` seconds (plus one sweep
interval).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from mitmproxy import ctx, exceptions, http

from gatewatch.settings import RateLimit as RateLimitSetting
from gatewatch.settings import load_settings
from inline import flowtags
from inline.flowstate import answered, get_facts, json_answer


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


def format_rate_limit(limit: RateLimitSetting) -> str:
    """A :class:`gatewatch.settings.RateLimit` as the option text ``"RATE:BURST"``."""
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


class GcraLimiter:
    """GCRA state for many keys: ``{key: TAT}``, swept of expired keys.

    ``sweep_every_s``: time between sweeps of keys whose TAT has passed (a
    sweep is O(keys)). ``max_keys``: above this many keys a sweep runs at
    once (still at most once per second), which bounds memory to the keys
    active within one burst window.
    """

    def __init__(self, spec: RateSpec, sweep_every_s: float = 10.0, max_keys: int = 100_000) -> None:
        self.spec = spec
        self.sweep_every_s = sweep_every_s
        self.max_keys = max_keys
        self._tat: dict[str, float] = {}
        self._last_sweep = -math.inf
        self.refused = 0

    def __len__(self) -> int:
        return len(self._tat)

    def hit(self, key: str, now: float) -> float:
        """Count one request of ``key`` at ``now`` (seconds, monotonic).
        Returns 0.0 if allowed, else the seconds to wait (> 0)."""
        if now - self._last_sweep >= self.sweep_every_s or (
                len(self._tat) >= self.max_keys and now - self._last_sweep >= 1.0):
            self.sweep(now)
        allowed, new_tat, retry_after = gcra(self._tat.get(key), now, self.spec)
        if allowed:
            self._tat[key] = new_tat
            return 0.0
        self.refused += 1
        return retry_after

    def sweep(self, now: float) -> int:
        """Forget keys whose TAT is at or before ``now``; returns how many."""
        stale = [k for k, tat in self._tat.items() if tat <= now]
        for k in stale:
            del self._tat[k]
        self._last_sweep = now
        return len(stale)


class RateLimit:
    """Addon: 429 with ``Retry-After`` when a client IP or a principal exceeds its GCRA limit.

    Options: ``gatewatch_ip_rate_limit`` and ``gatewatch_principal_rate_limit``
    (``"RATE:BURST"`` or ``"off"``). The IP limit applies to every request,
    authenticated or not (it also slows key guessing); the principal limit
    to requests with a valid key. Allow-listed clients (:mod:`inline.lists`)
    are not limited. ``clock`` (seconds, monotonic) is injectable for tests.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.ip: GcraLimiter | None = None
        self.principal: GcraLimiter | None = None

    def load(self, loader) -> None:
        s = load_settings()
        loader.add_option("gatewatch_ip_rate_limit", str, format_rate_limit(s.ip_rate_limit),
                          "Per client IP limit as 'RATE:BURST' (requests/s, burst size) or 'off'.")
        loader.add_option("gatewatch_principal_rate_limit", str, format_rate_limit(s.principal_rate_limit),
                          "Per principal (API key id) limit as 'RATE:BURST' or 'off'.")

    def configure(self, updated: set[str]) -> None:
        for name in ("ip", "principal"):
            option = f"gatewatch_{name}_rate_limit"
            if option in updated:
                try:
                    spec = parse_rate_limit(getattr(ctx.options, option))
                except ValueError as exc:
                    raise exceptions.OptionsError(f"{option}: {exc}") from exc
                setattr(self, name, GcraLimiter(spec) if spec else None)

    def request(self, flow: http.HTTPFlow) -> None:
        facts = get_facts(flow)
        if facts is None or answered(flow) or flowtags.allow_listed(flow):
            return
        now = self.clock()
        for scope, limiter, key in (("ip", self.ip, facts.client_ip),
                                    ("principal", self.principal, facts.principal)):
            if limiter is None or not key:
                continue
            wait = limiter.hit(key, now)
            if wait > 0:
                flowtags.mark_blocked(flow, scope)
                header = retry_after_header(wait)
                json_answer(flow, 429, {"error": "rate_limited", "scope": scope,
                                        "retry_after_s": int(header)},
                            "rate_limit", {"Retry-After": header})
                return
