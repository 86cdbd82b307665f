"""Rate limiting: GCRA policies per route × client IP or principal, with API-key tiers.

The algorithm is GCRA (ITU-T I.371's virtual scheduling; Brandur Leach,
"Rate limiting, cells, and GCRA", 2015): :mod:`inline.gcra`. Which limits
a request is counted against — the default ``ip`` and ``principal``
policies and the configured ones, a tier's limit following the API key's
tier — is :mod:`inline.ratelimit_policy`. A request passes only if every
matching policy allows it; a refused request counts against none.

State lives in this process by default (monotonic clock). With
``gatewatch_rate_limit_redis_url`` it lives in Redis, shared by every
gateway process, updated atomically by one Lua script per request on the
Redis server's clock (:mod:`inline.ratelimit_redis`); the ``request`` hook
awaits it, which does not block other flows.

Answers:

- allowed — the upstream's response gets ``RateLimit-Policy`` and
  ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers, see
  :mod:`inline.ratelimit_headers`; ``gatewatch_rate_limit_headers`` turns
  them off). So do the gateway's own later answers (a 401, say);
- refused — 429 with ``Retry-After`` (whole seconds), the same two fields
  and ``{"error": "rate_limited", "scope": "ip"|"principal", "policy":
  NAME, "retry_after_s": N}``; ``scope`` and ``policy`` name the first
  refusing policy in order;
- Redis slow or down (no answer within ``gatewatch_rate_limit_redis_timeout_ms``,
  default 5 ms) — **fail open** by default: the request passes, without
  RateLimit fields; with ``gatewatch_rate_limit_fail_open=false`` it is
  answered **503** with ``Retry-After: 1`` and ``{"error": "unavailable",
  "detail": "rate limiter unavailable"}`` — 503 rather than 429 because the
  client did nothing wrong: the gateway cannot count. Never a 500. Every
  such request is counted in :attr:`RateLimit.backend_errors` by
  ``(reason, outcome)``, served as
  ``gatewatch_ratelimit_backend_errors_total{reason,outcome}`` (reason
  ``timeout``/``error``/``down``, outcome ``fail_open``/``fail_closed``).

Allow-listed clients (:mod:`inline.lists`) and flows another addon already
answered are not counted.

The GCRA arithmetic and the limiter are re-exported here (``RateSpec``,
``parse_rate_limit``, ``GcraLimiter``, …) for the addons that use them
(throttle decisions in :mod:`inline.enforcement`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence

from mitmproxy import ctx, exceptions, http

from gatewatch.settings import load_settings
from inline import flowtags
from inline.flowstate import answered, get_facts, json_answer
from inline.gcra import (  # noqa: F401  (re-exported)
    GcraLimiter,
    LimitState,
    RateSpec,
    Verdict,
    format_rate_limit,
    gcra,
    parse_rate_limit,
    retry_after_header,
)
from inline.ratelimit_headers import ratelimit_fields
from inline.ratelimit_policy import Hit, Policy, match_hits, parse_policies
from inline.ratelimit_redis import BackendUnavailable, RedisGcra, RedisSpec

logger = logging.getLogger(__name__)

#: Key, in ``flow.metadata``, of the RateLimit fields for the flow's response.
HEADERS_KEY = "gatewatch.ratelimit_headers"
#: ``Retry-After`` (seconds) of the fail-closed 503.
UNAVAILABLE_RETRY_S = 1

_POLICY_OPTIONS = {"gatewatch_ip_rate_limit", "gatewatch_principal_rate_limit",
                   "gatewatch_principal_rate_limit_tiers", "gatewatch_rate_limit_policies"}
_REDIS_OPTIONS = {"gatewatch_rate_limit_redis_url", "gatewatch_rate_limit_redis_timeout_ms",
                  "gatewatch_rate_limit_redis_prefix"}


class RateLimit:
    """Addon: 429 with ``Retry-After`` when a request exceeds a GCRA policy; IETF
    RateLimit fields on answers (see the module docstring).

    Options: ``gatewatch_ip_rate_limit``, ``gatewatch_principal_rate_limit``
    (``"RATE:BURST"`` or ``"off"``), ``gatewatch_principal_rate_limit_tiers``
    (``TIER=RATE:BURST|off`` items), ``gatewatch_rate_limit_policies`` (JSON
    list of :class:`gatewatch.settings.RateLimitPolicy`),
    ``gatewatch_rate_limit_headers``, ``gatewatch_rate_limit_redis_url``
    (empty: in-process), ``gatewatch_rate_limit_redis_timeout_ms``,
    ``gatewatch_rate_limit_redis_prefix``, ``gatewatch_rate_limit_fail_open``.
    ``clock`` (seconds, monotonic) is the in-process clock, injectable for tests.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.policies: tuple[Policy, ...] = ()
        self.local = GcraLimiter()
        self.redis: RedisGcra | None = None
        self.headers = True
        self.fail_open = True
        self.refused = 0
        #: Requests Redis could not judge, by ``(reason, outcome)``.
        self.backend_errors: Counter[tuple[str, str]] = Counter()
        self._tasks: set[asyncio.Task] = set()

    def load(self, loader) -> None:
        s = load_settings()
        loader.add_option("gatewatch_ip_rate_limit", str, format_rate_limit(s.ip_rate_limit),
                          "Per client IP limit as 'RATE:BURST' (requests/s, burst size) or 'off'.")
        loader.add_option("gatewatch_principal_rate_limit", str, format_rate_limit(s.principal_rate_limit),
                          "Per principal (API key id) limit as 'RATE:BURST' or 'off'.")
        loader.add_option("gatewatch_principal_rate_limit_tiers", Sequence[str],
                          [f"{tier}={format_rate_limit(limit)}"
                           for tier, limit in s.principal_rate_limit_tiers.items()],
                          "Per-principal limit by API-key tier: 'TIER=RATE:BURST' or 'TIER=off'.")
        loader.add_option("gatewatch_rate_limit_policies", str,
                          json.dumps([p.model_dump(mode="json") for p in s.rate_limit_policies]),
                          "Further policies, a JSON list: {name, route, methods, key: ip|principal, "
                          "limit: 'RATE:BURST', tiers: {tier: 'RATE:BURST'|null}, per_route}.")
        loader.add_option("gatewatch_rate_limit_headers", bool, s.rate_limit_headers,
                          "Send RateLimit-Policy and RateLimit fields (IETF draft).")
        loader.add_option("gatewatch_rate_limit_redis_url", str, s.rate_limit_redis_url or "",
                          "redis:// URL of limiter state shared by gateway processes; empty: in-process.")
        loader.add_option("gatewatch_rate_limit_redis_timeout_ms", int, s.rate_limit_redis_timeout_ms,
                          "Longest wait for Redis per request, ms; then fail open or closed.")
        loader.add_option("gatewatch_rate_limit_redis_prefix", str, s.rate_limit_redis_prefix,
                          "Prefix of the limiter's Redis keys.")
        loader.add_option("gatewatch_rate_limit_fail_open", bool, s.rate_limit_fail_open,
                          "Redis slow or down: pass requests (true) or answer 503 (false).")

    def configure(self, updated: set[str]) -> None:
        o = ctx.options
        if updated & _POLICY_OPTIONS:
            try:
                self.policies = parse_policies(
                    o.gatewatch_ip_rate_limit, o.gatewatch_principal_rate_limit,
                    o.gatewatch_principal_rate_limit_tiers, o.gatewatch_rate_limit_policies)
            except ValueError as exc:
                names = ", ".join(sorted(updated & _POLICY_OPTIONS))
                raise exceptions.OptionsError(f"{names}: {exc}") from exc
        if "gatewatch_rate_limit_headers" in updated:
            self.headers = o.gatewatch_rate_limit_headers
        if "gatewatch_rate_limit_fail_open" in updated:
            self.fail_open = o.gatewatch_rate_limit_fail_open
        if updated & _REDIS_OPTIONS:
            timeout_ms = o.gatewatch_rate_limit_redis_timeout_ms
            if not 1 <= timeout_ms <= 60_000:
                raise exceptions.OptionsError("gatewatch_rate_limit_redis_timeout_ms must be within 1..60000")
            url = o.gatewatch_rate_limit_redis_url.strip()
            spec = RedisSpec(url, timeout_ms / 1000, o.gatewatch_rate_limit_redis_prefix) if url else None
            if spec is not None and not url.startswith(("redis://", "rediss://", "unix://")):
                raise exceptions.OptionsError(
                    f"gatewatch_rate_limit_redis_url: {url!r} is not redis://, rediss:// or unix://")
            if (self.redis.spec if self.redis else None) != spec:
                if self.redis is not None:
                    self._spawn(self.redis.close())
                try:
                    self.redis = RedisGcra(spec) if spec else None
                except ValueError as exc:  # a URL redis-py cannot parse
                    raise exceptions.OptionsError(f"gatewatch_rate_limit_redis_url: {exc}") from exc
                if self.redis is not None:
                    self._spawn(self.redis.warm())

    def _spawn(self, coro) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:  # no loop yet (load time): nothing to warm or close then
            coro.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def done(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.redis is not None:
            await self.redis.close()

    async def judge(self, hits: Sequence[Hit]) -> Verdict:
        """Count one request against ``hits``, in process or in Redis.
        Raises :class:`BackendUnavailable` when Redis cannot judge it."""
        pairs = [(h.counter, h.spec) for h in hits]
        if self.redis is None:
            return self.local.check(pairs, self.clock())
        return await self.redis.check(pairs)

    async def request(self, flow: http.HTTPFlow) -> None:
        facts = get_facts(flow)
        if facts is None or answered(flow) or flowtags.allow_listed(flow):
            return
        hits = match_hits(self.policies, flow.request.method, facts.route, facts.client_ip,
                          facts.principal, facts.tier)
        if not hits:
            return
        try:
            verdict = await self.judge(hits)
        except BackendUnavailable as exc:
            self.backend_errors[(exc.reason, "fail_open" if self.fail_open else "fail_closed")] += 1
            if not self.fail_open and not answered(flow):
                json_answer(flow, 503, {"error": "unavailable", "detail": "rate limiter unavailable"},
                            "rate_limit", {"Retry-After": str(UNAVAILABLE_RETRY_S)})
            return
        if answered(flow):  # the flow was killed or answered while Redis was asked
            return
        fields = ratelimit_fields(hits, verdict) if self.headers else {}
        if verdict.allowed:
            if fields:
                flow.metadata[HEADERS_KEY] = fields
            return
        self.refused += 1
        first = next(h for h, s in zip(hits, verdict.states) if s.refused)
        header = retry_after_header(verdict.retry_after_s)
        flowtags.mark_blocked(flow, first.policy.key)
        json_answer(flow, 429, {"error": "rate_limited", "scope": first.policy.key,
                                "policy": first.policy.name, "retry_after_s": int(header)},
                    "rate_limit", {**fields, "Retry-After": header})

    def response(self, flow: http.HTTPFlow) -> None:
        fields = flow.metadata.pop(HEADERS_KEY, None)
        if fields and flow.response is not None:
            # Added as further field lines: an upstream's own RateLimit items stay
            # (structured-field lists may be split over several lines, RFC 9651 §3.1).
            for name, value in fields.items():
                flow.response.headers.add(name, value)
