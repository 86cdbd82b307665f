"""Upstream circuit breaker per route template: stop sending to an upstream route that is failing.

State machine (as resilience4j's CircuitBreaker and Hystrix, with a
time-based sliding window and the clock passed in):

``closed``
    Every call goes upstream; outcomes are counted in a sliding window of
    ``window_s`` seconds (one bucket per second, O(1) per call). Once the
    window holds at least ``min_calls`` calls and the share of failures
    reaches ``failure_rate``, the breaker opens. A failure is a 5xx answer,
    a connection error or timeout (mitmproxy's ``error`` hook), or a call
    slower than ``slow_call_s`` (resilience4j's slow-call rule).
``open``
    Calls are refused at once — 503 with ``Retry-After`` (RFC 9110 §10.2.3)
    the seconds left — for ``open_s`` seconds.
``half_open``
    Then up to ``half_open_probes`` calls go upstream as probes: if they all
    succeed the breaker closes (fresh window); the first failure opens it
    again for another ``open_s``. Further calls are refused meanwhile. A
    probe whose outcome never arrives (client gone) is replaced after
    ``open_s``.

References: resilience4j "CircuitBreaker" documentation (states, sliding
windows, ``minimumNumberOfCalls``, ``failureRateThreshold``,
``slowCallDurationThreshold``, ``permittedNumberOfCallsInHalfOpenState``);
Netflix Hystrix wiki "How it Works" (circuit breaker, sleep window);
Envoy's outlier detection is the per-host analogue.

The addon keeps one breaker per route template (``/users/{id}``), so one
broken endpoint does not take the others down. At most
:data:`MAX_BREAKERS` routes get their own breaker; the rest share one
(bounded memory against random paths). Fail-open by design: a flow whose
route is unknown is never refused.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from mitmproxy import ctx, exceptions, http

from gatewatch.settings import load_settings
from inline.flowstate import answered, get_facts, json_answer

State = Literal["closed", "open", "half_open"]

#: Routes with a breaker of their own; more share :data:`OVERFLOW_ROUTE`'s.
MAX_BREAKERS = 10_000
OVERFLOW_ROUTE = "*"
#: ``flow.metadata`` key: the route whose breaker let this flow go upstream.
ROUTE_KEY = "gatewatch.breaker_route"


@dataclass(frozen=True)
class BreakerSpec:
    """Thresholds (seconds, counts, a rate in (0, 1]); see the module docstring."""

    window_s: float = 10.0
    min_calls: int = 20
    failure_rate: float = 0.5
    slow_call_s: float = 10.0
    open_s: float = 5.0
    half_open_probes: int = 3

    def __post_init__(self) -> None:
        if not (self.window_s >= 1 and self.min_calls >= 1 and 0 < self.failure_rate <= 1
                and self.slow_call_s > 0 and self.open_s > 0 and self.half_open_probes >= 1):
            raise ValueError(f"invalid circuit breaker thresholds: {self}")


class Breaker:
    """One circuit breaker. Times are seconds on one monotonic clock, passed in."""

    def __init__(self, spec: BreakerSpec) -> None:
        self.spec = spec
        self.state: State = "closed"
        self._buckets: deque[list[int]] = deque()   # [second, calls, failures], oldest first
        self._calls = 0
        self._failures = 0
        self._opened_at = 0.0
        self._probes_issued = 0
        self._probes_ok = 0
        self._last_probe_at = 0.0
        self.opened = 0   # times the breaker opened (for metrics)

    def allow(self, now: float) -> float:
        """Ask to send one call at ``now``. Returns 0.0 if it may go upstream, else
        the seconds until the breaker may let calls through again (> 0)."""
        if self.state == "open":
            remaining = self._opened_at + self.spec.open_s - now
            if remaining > 0:
                return remaining
            self.state, self._probes_issued, self._probes_ok = "half_open", 0, 0
        if self.state == "half_open":
            if self._probes_issued >= self.spec.half_open_probes:
                if now - self._last_probe_at < self.spec.open_s:
                    return max(0.001, self._last_probe_at + self.spec.open_s - now)
                self._probes_issued -= 1   # a probe never reported back: replace it
            self._probes_issued += 1
            self._last_probe_at = now
        return 0.0

    def record(self, now: float, ok: bool) -> None:
        """Report the outcome of a call that :meth:`allow` let through."""
        if self.state == "open":
            return   # a call from before the breaker opened
        if self.state == "half_open":
            if not ok:
                self._open(now)
                return
            self._probes_ok += 1
            if self._probes_ok >= self.spec.half_open_probes:
                self.state = "closed"
                self._reset_window()
            return
        self._count(now, ok)
        if self._calls >= self.spec.min_calls and self._failures >= self.spec.failure_rate * self._calls:
            self._open(now)

    def failure_rate(self, now: float) -> float | None:
        """Share of failed calls in the current window, None when it is empty."""
        self._evict(now)
        return self._failures / self._calls if self._calls else None

    def _open(self, now: float) -> None:
        self.state, self._opened_at = "open", now
        self.opened += 1
        self._reset_window()

    def _reset_window(self) -> None:
        self._buckets.clear()
        self._calls = self._failures = 0

    def _evict(self, now: float) -> None:
        oldest = math.floor(now) - math.ceil(self.spec.window_s) + 1
        while self._buckets and self._buckets[0][0] < oldest:
            _, calls, failures = self._buckets.popleft()
            self._calls -= calls
            self._failures -= failures

    def _count(self, now: float, ok: bool) -> None:
        self._evict(now)
        second = math.floor(now)
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        self._calls += 1
        if not ok:
            bucket[2] += 1
            self._failures += 1


def call_ok(status: int | None, latency_s: float, slow_call_s: float) -> bool:
    """True if an upstream call succeeded: an answer below 500, faster than ``slow_call_s``.
    ``status`` None means a connection error or timeout."""
    return status is not None and status < 500 and latency_s < slow_call_s


class CircuitBreaker:
    """Addon: a :class:`Breaker` per route template; 503 + ``Retry-After`` while open.

    Options ``gatewatch_breaker_*`` (enabled, window_s, min_calls,
    failure_rate, slow_call_s, open_s, half_open_probes). Goes after every
    addon that may answer in ``request`` (only calls that really go upstream
    are counted) and before the metrics and event-shipping addons. ``clock``
    (seconds, monotonic) is injectable for tests.
    """

    OPTIONS = ("enabled", "window_s", "min_calls", "failure_rate", "slow_call_s", "open_s", "half_open_probes")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.spec: BreakerSpec | None = BreakerSpec()
        self.breakers: dict[str, Breaker] = {}
        self.refused = 0

    def load(self, loader) -> None:
        b = load_settings().circuit_breaker
        loader.add_option("gatewatch_breaker_enabled", bool, b.enabled, "Upstream circuit breaker per route on/off.")
        loader.add_option("gatewatch_breaker_window_s", float, b.window_s, "Sliding window of calls, seconds.")
        loader.add_option("gatewatch_breaker_min_calls", int, b.min_calls, "Calls in the window before it may open.")
        loader.add_option("gatewatch_breaker_failure_rate", float, b.failure_rate,
                          "Share of failed calls (0..1] that opens the breaker.")
        loader.add_option("gatewatch_breaker_slow_call_s", float, b.slow_call_s,
                          "A call slower than this (seconds) counts as failed.")
        loader.add_option("gatewatch_breaker_open_s", float, b.open_s, "Seconds open before half-open probes.")
        loader.add_option("gatewatch_breaker_half_open_probes", int, b.half_open_probes,
                          "Successful probes needed to close again.")

    def configure(self, updated: set[str]) -> None:
        names = {f"gatewatch_breaker_{name}" for name in self.OPTIONS}
        if not updated & names:
            return
        o = ctx.options
        if not o.gatewatch_breaker_enabled:
            self.spec = None
        else:
            try:
                self.spec = BreakerSpec(o.gatewatch_breaker_window_s, o.gatewatch_breaker_min_calls,
                                        o.gatewatch_breaker_failure_rate, o.gatewatch_breaker_slow_call_s,
                                        o.gatewatch_breaker_open_s, o.gatewatch_breaker_half_open_probes)
            except ValueError as exc:
                raise exceptions.OptionsError(str(exc)) from exc
        self.breakers.clear()

    def breaker(self, route: str) -> Breaker:
        """The breaker of ``route`` (created on first use; shared beyond :data:`MAX_BREAKERS`)."""
        found = self.breakers.get(route)
        if found is None:
            assert self.spec is not None
            if len(self.breakers) >= MAX_BREAKERS:
                route = OVERFLOW_ROUTE
                found = self.breakers.get(route)
            if found is None:
                found = self.breakers[route] = Breaker(self.spec)
        return found

    def request(self, flow: http.HTTPFlow) -> None:
        facts = get_facts(flow)
        if self.spec is None or facts is None or not facts.route or answered(flow):
            return
        wait = self.breaker(facts.route).allow(self.clock())
        if wait > 0:
            self.refused += 1
            json_answer(flow, 503, {"error": "unavailable", "detail": "upstream circuit open",
                                    "route": facts.route, "retry_after_s": max(1, math.ceil(wait))},
                        "error", {"Retry-After": str(max(1, math.ceil(wait)))})
            return
        flow.metadata[ROUTE_KEY] = facts.route

    def response(self, flow: http.HTTPFlow) -> None:
        route = flow.metadata.pop(ROUTE_KEY, None)
        if route is None or self.spec is None or flow.response is None:
            return
        latency = 0.0
        if flow.response.timestamp_start and flow.request.timestamp_end:
            latency = max(0.0, flow.response.timestamp_start - flow.request.timestamp_end)
        self.breaker(route).record(self.clock(), call_ok(flow.response.status_code, latency,
                                                         self.spec.slow_call_s))

    def error(self, flow: http.HTTPFlow) -> None:
        route = flow.metadata.pop(ROUTE_KEY, None)
        if route is None or self.spec is None:
            return
        if flow.error is not None and "client" in flow.error.msg.lower():
            return   # the client went away: says nothing about the upstream
        self.breaker(route).record(self.clock(), False)
