"""OAuth 2.0 token introspection (RFC 7662) for opaque bearer tokens.

The gateway POSTs ``token=…&token_type_hint=access_token`` to the
introspection endpoint (RFC 7662 §2.1), authenticating itself as a client
with HTTP Basic (``client_secret_basic``: id and secret form-urlencoded
first, RFC 6749 §2.3.1), and reads the JSON answer (§2.2): a token is
accepted only if ``active`` is the JSON value ``true``, its ``exp`` (if any)
has not passed, its ``nbf`` (if any) has, its ``aud`` names a configured
audience (when audiences are configured), and it names a principal — the
first usable one of ``sub``, ``username``, ``client_id`` (configurable).

Answers are cached (§4 allows it, trading revocation latency for load):

- positive: until ``min(exp, now + cache_max_ttl_s)`` — a revoked token is
  accepted at most ``cache_max_ttl_s`` longer, never past its expiry;
- negative (``active: false``): ``negative_ttl_s``;
- neither when the endpoint fails or answers something that is not an
  introspection response: the verdict is ``unavailable`` (503), never a
  guess.

The two caches are separate LRU maps, each bounded by ``cache_max_entries``,
so a flood of random tokens churns the negative cache only. Keys are
SHA-256 digests of the tokens (32 bytes each, whatever the token's size; no
raw token is kept). Concurrent requests with the same token share one call
in flight, and at most ``max_in_flight`` calls run at once.

:func:`parse_introspection_response` and :func:`cache_ttl` are pure;
:class:`Introspector` adds the HTTP calls (httpx, asynchronous).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar
from urllib.parse import quote_plus

import httpx

from inline.bearer import (
    BearerVerdict,
    ThrottledWarning,
    accepted,
    principal_claim_value,
    read_limited,
    rejected,
    unavailable,
)

logger = logging.getLogger(__name__)

#: Largest introspection response read, bytes.
MAX_RESPONSE_BYTES = 64 * 1024


class IntrospectionError(ValueError):
    """The endpoint's answer is not an RFC 7662 introspection response."""


@dataclass(frozen=True)
class IntrospectionPolicy:
    """Parsed introspection options (see :func:`parse_introspection_policy`).

    ``client_secret`` is kept out of ``repr`` so that it cannot reach a log.
    """

    url: str
    client_id: str
    client_secret: str = field(repr=False)
    principal_claims: tuple[str, ...] = ("sub", "username", "client_id")
    audiences: frozenset[str] = frozenset()
    cache_max_ttl_s: int = 300
    negative_ttl_s: int = 30
    cache_max_entries: int = 100_000
    max_in_flight: int = 32
    timeout_s: float = 2.0


def parse_introspection_policy(*, url: str, client_id: str, client_secret: str,
                               principal_claims: Iterable[str] = ("sub", "username", "client_id"),
                               audiences: Iterable[str] = (), cache_max_ttl_s: int = 300,
                               negative_ttl_s: int = 30, cache_max_entries: int = 100_000,
                               max_in_flight: int = 32, timeout_ms: int = 2000) -> IntrospectionPolicy:
    """Validate introspection options into an :class:`IntrospectionPolicy`.

    ``url`` must be ``http``/``https`` (https outside tests); ``client_id``
    and ``client_secret`` are required (RFC 7662 §2.1 requires the caller
    to be authorized); ``principal_claims`` non-empty; ``cache_max_ttl_s``
    and ``negative_ttl_s`` 0..86400 (0 = do not cache); ``cache_max_entries``
    ≥ 1; ``max_in_flight`` 1..1024; ``timeout_ms`` 1..30000. Raises
    ``ValueError`` naming the bad field.
    """
    url = url.strip()
    try:
        parsed = httpx.URL(url)
    except Exception:
        raise ValueError(f"url: not a URL: {url!r}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"url: must be an http(s) URL, got {url!r}")
    if not client_id.strip() or not client_secret:
        raise ValueError("client_id/client_secret: both are required")
    claims = tuple(c.strip() for c in principal_claims if c.strip())
    if not claims:
        raise ValueError("principal_claims: at least one claim name is required")
    for name, value in (("cache_max_ttl_s", cache_max_ttl_s), ("negative_ttl_s", negative_ttl_s)):
        if not 0 <= value <= 86_400:
            raise ValueError(f"{name}: must be within 0..86400")
    if cache_max_entries < 1:
        raise ValueError("cache_max_entries: must be at least 1")
    if not 1 <= max_in_flight <= 1024:
        raise ValueError("max_in_flight: must be within 1..1024")
    if not 1 <= timeout_ms <= 30_000:
        raise ValueError("timeout_ms: must be within 1..30000")
    return IntrospectionPolicy(url=url, client_id=client_id.strip(), client_secret=client_secret,
                               principal_claims=claims,
                               audiences=frozenset(a.strip() for a in audiences if a.strip()),
                               cache_max_ttl_s=cache_max_ttl_s, negative_ttl_s=negative_ttl_s,
                               cache_max_entries=cache_max_entries, max_in_flight=max_in_flight,
                               timeout_s=timeout_ms / 1000.0)


def basic_credentials(client_id: str, client_secret: str) -> str:
    """The ``Authorization`` value for ``client_secret_basic`` (RFC 6749 §2.3.1):
    ``Basic base64(urlencode(id) ":" urlencode(secret))``."""
    pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def parse_introspection_response(body: bytes, policy: IntrospectionPolicy, now: float) -> BearerVerdict:
    """Decide on a token from the introspection endpoint's answer ``body`` at
    ``now`` (Unix seconds).

    RFC 7662 §2.2: the body is a JSON object whose ``active`` member is
    REQUIRED. ``active`` other than ``true`` → ``invalid`` ("token is not
    active"). An active token is still refused if ``exp`` is not a number or
    has passed, ``nbf`` is in the future, ``aud`` misses every configured
    audience, or no principal claim is usable. Returns ``ok`` with the
    principal and ``expires_at=exp`` (None if absent).

    Raises :class:`IntrospectionError` for a body that is not JSON, not an
    object, or has no boolean ``active`` — the endpoint is broken, which
    says nothing about the token.
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise IntrospectionError("introspection response is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("active"), bool):
        raise IntrospectionError("introspection response has no boolean 'active'")
    if data["active"] is not True:
        return rejected("token is not active")
    exp = None
    if "exp" in data:
        exp = _number(data["exp"])
        if exp is None or now >= exp:
            return rejected("token has expired")
    if "nbf" in data:
        nbf = _number(data["nbf"])
        if nbf is None or nbf > now:
            return rejected("token is not valid yet (nbf)")
    if policy.audiences:
        aud = data.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not any(isinstance(a, str) and a in policy.audiences for a in auds):
            return rejected("token audience is not accepted")
    principal = principal_claim_value(data, policy.principal_claims)
    if principal is None:
        return rejected("token has no usable subject")
    return accepted(principal, expires_at=exp)


def cache_ttl(verdict: BearerVerdict, policy: IntrospectionPolicy, now: float) -> float:
    """Seconds to cache ``verdict`` from ``now``: ``ok`` → up to the token's
    ``exp`` and at most ``policy.cache_max_ttl_s``; ``invalid`` →
    ``policy.negative_ttl_s``; ``unavailable`` → 0 (never cached)."""
    if verdict.status == "ok":
        ttl = float(policy.cache_max_ttl_s)
        if verdict.expires_at is not None:
            ttl = min(ttl, verdict.expires_at - now)
        return max(0.0, ttl)
    if verdict.status == "invalid":
        return float(policy.negative_ttl_s)
    return 0.0


K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """An LRU map of at most ``max_entries`` values, each valid until its own
    deadline (seconds on the caller's clock). Not thread-safe (one event loop)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K, now: float) -> V | None:
        """The value of ``key`` if present and ``now`` is before its deadline."""
        found = self._data.get(key)
        if found is None:
            return None
        deadline, value = found
        if now >= deadline:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V, deadline: float) -> None:
        """Store ``value`` until ``deadline``, evicting the least recently used beyond the bound."""
        self._data[key] = (deadline, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)


@dataclass
class IntrospectionStats:
    """Counters: endpoint ``calls``, cache ``hits``, ``failures`` (endpoint
    down or broken answer), ``waits`` for a slot (``max_in_flight`` reached)."""

    calls: int = 0
    hits: int = 0
    failures: int = 0
    waits: int = 0


class Introspector:
    """Verifies opaque bearer tokens for one :class:`IntrospectionPolicy` by
    introspection, with the caches and bounds described in the module doc.

    The httpx ``AsyncClient`` is made on first use inside the running loop;
    call :meth:`close` when done. ``clock`` gives Unix seconds (token
    ``exp`` values are Unix times).
    """

    def __init__(self, policy: IntrospectionPolicy) -> None:
        self.policy = policy
        self.positive: TtlCache[bytes, BearerVerdict] = TtlCache(policy.cache_max_entries)
        self.negative: TtlCache[bytes, BearerVerdict] = TtlCache(policy.cache_max_entries)
        self.stats = IntrospectionStats()
        self._inflight: dict[bytes, asyncio.Future[BearerVerdict]] = {}
        self._slots = asyncio.Semaphore(policy.max_in_flight)
        self._client: httpx.AsyncClient | None = None
        self._authorization = basic_credentials(policy.client_id, policy.client_secret)
        self._warn = ThrottledWarning(logger)

    async def verify(self, token: str, now: float) -> BearerVerdict:
        """Verify ``token`` at ``now`` (Unix seconds): from a cache, by joining a
        call in flight for the same token, or by calling the endpoint. Never raises."""
        key = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        cached = self.positive.get(key, now) or self.negative.get(key, now)
        if cached is not None:
            self.stats.hits += 1
            return cached
        inflight = self._inflight.get(key)
        if inflight is None:
            inflight = self._inflight[key] = asyncio.ensure_future(self._introspect(token, key, now))
        return await asyncio.shield(inflight)

    async def _introspect(self, token: str, key: bytes, now: float) -> BearerVerdict:
        try:
            verdict = await asyncio.wait_for(self._call(token, now), self.policy.timeout_s)
        except Exception as exc:  # timeout, connection, HTTP status, broken answer: not the token's fault
            self.stats.failures += 1
            self._warn("token introspection at %s failed (%s)", self.policy.url, _describe(exc))
            return unavailable("token introspection is unavailable")
        finally:
            del self._inflight[key]
        ttl = cache_ttl(verdict, self.policy, now)
        if ttl > 0:
            (self.positive if verdict.status == "ok" else self.negative).put(key, verdict, now + ttl)
        return verdict

    async def _call(self, token: str, now: float) -> BearerVerdict:
        if self._slots.locked():
            self.stats.waits += 1
        async with self._slots:
            if self._client is None:
                # trust_env=False: no proxy or netrc from the environment on the auth path.
                self._client = httpx.AsyncClient(timeout=self.policy.timeout_s, trust_env=False,
                                                 follow_redirects=False)
            self.stats.calls += 1
            async with self._client.stream(
                    "POST", self.policy.url,
                    data={"token": token, "token_type_hint": "access_token"},
                    headers={"Authorization": self._authorization, "Accept": "application/json"}) as response:
                if response.status_code != 200:
                    raise IntrospectionError(f"HTTP {response.status_code}")
                body = await read_limited(response, MAX_RESPONSE_BYTES)
        return parse_introspection_response(body, self.policy, now)

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
