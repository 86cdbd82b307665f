"""JWT bearer tokens (RFC 7519) verified against a JSON Web Key Set URL (RFC 7517 §5).

A token is accepted when all of these hold:

1. it is a JWS in compact serialization (RFC 7515 §7.1) — three
   base64url segments; encrypted tokens (JWE) are refused;
2. its ``alg`` (RFC 7515 §4.1.1) is on the configured allow-list, which may
   only hold asymmetric algorithms (RS*, PS*, ES*, EdDSA): ``none``
   (RFC 7518 §3.6) is refused, and so is every HMAC algorithm, because the
   keys come from a public key set — accepting ``HS256`` would let anyone
   sign with the RSA public key as the HMAC secret (the RS256/HS256
   confusion, RFC 8725 §2.1 and §3.1);
3. the key is found in the configured key set by ``kid`` (RFC 7515 §4.1.4)
   and its type fits the algorithm (RSA for RS*/PS*, EC with the matching
   curve for ES*, OKP for EdDSA); ``jku``, ``jwk``, ``x5u`` and ``x5c``
   headers are ignored — keys come from the configured URL only
   (RFC 8725 §3.10); a ``crit`` header is refused (RFC 7515 §4.1.11);
4. the signature verifies (PyJWT);
5. the claims (RFC 7519 §4.1): ``exp`` present and not passed, ``nbf`` and
   ``iat`` not in the future, each with the configured leeway; ``iss``
   equals the configured issuer; ``aud`` names a configured audience; the
   principal claim (``sub`` by default) is a usable principal.

The key set is cached (:class:`JwksCache`) for a TTL; a token whose ``kid``
is unknown triggers a refetch, but at most one fetch per
``jwks_min_refetch_s`` so that a flood of tokens with bogus ``kid``s cannot
hammer the key server. When a refetch fails the previous keys stay in use
(stale-if-error); with no keys at all the verdict is ``unavailable``.

Steps 1–2 (:func:`peek_header`), 3 (:func:`select_key`), 4–5
(:func:`verify_jwt`, :func:`check_claims`) and key-set parsing
(:func:`parse_jwks`) are pure functions of their arguments (the clock is
passed in); :class:`JwtVerifier` adds the asynchronous fetching (httpx).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

import httpx
import jwt
from jwt import PyJWK

from inline.bearer import (
    BearerVerdict,
    ThrottledWarning,
    accepted,
    read_limited,
    rejected,
    unavailable,
    usable_principal,
)

logger = logging.getLogger(__name__)

_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_OKP_CURVES = frozenset({"Ed25519", "Ed448"})

#: Algorithms the allow-list may hold: asymmetric signatures only.
SUPPORTED_ALGORITHMS = _RSA_ALGORITHMS | frozenset(_EC_CURVES) | frozenset({"EdDSA"})

#: Public members copied from a JWK, by key type (private members are never used).
_PUBLIC_MEMBERS = {"RSA": ("n", "e"), "EC": ("crv", "x", "y"), "OKP": ("crv", "x")}

#: Shortest RSA modulus accepted, bits (RFC 7518 §3.3 requires 2048).
MIN_RSA_BITS = 2048
#: Largest key set document read, bytes.
MAX_JWKS_BYTES = 1 << 20
#: Most keys read from one key set.
MAX_JWKS_KEYS = 100
#: Longest ``kid`` accepted, characters.
MAX_KID = 256

#: PyJWT options: PyJWT checks the signature only; the claims are checked by
#: :func:`check_claims` against a clock passed in.
_SIGNATURE_ONLY = {"verify_signature": True, "verify_exp": False, "verify_nbf": False,
                   "verify_iat": False, "verify_aud": False, "verify_iss": False,
                   "verify_sub": False, "verify_jti": False, "require": [],
                   "enforce_minimum_key_length": True}


class TokenRejected(Exception):
    """A token refused before any key lookup; ``str(exc)`` is a safe description."""


class JwksError(ValueError):
    """A key set document that cannot be used (not JSON, no usable key, too large)."""


class JwksUnavailable(Exception):
    """No key set has been loaded yet, and none could be fetched now."""


@dataclass(frozen=True)
class JwtPolicy:
    """Parsed JWT options (see :func:`parse_jwt_policy`). Durations in seconds."""

    jwks_url: str
    issuer: str
    audiences: frozenset[str]
    algorithms: frozenset[str]
    leeway_s: int = 30
    principal_claim: str = "sub"
    jwks_ttl_s: int = 300
    jwks_min_refetch_s: int = 30
    timeout_s: float = 2.0


def parse_jwt_policy(*, jwks_url: str, issuer: str, audiences: Iterable[str], algorithms: Iterable[str],
                     leeway_s: int = 30, principal_claim: str = "sub", jwks_ttl_s: int = 300,
                     jwks_min_refetch_s: int = 30, timeout_ms: int = 2000) -> JwtPolicy:
    """Validate JWT options into a :class:`JwtPolicy`.

    ``jwks_url`` must be an ``http``/``https`` URL (use https outside tests);
    ``issuer`` and at least one audience are required (a token minted for
    another API must not pass); ``algorithms`` must be non-empty and within
    :data:`SUPPORTED_ALGORITHMS` (``none`` and ``HS*`` are refused by name);
    ``leeway_s`` 0..300; ``jwks_ttl_s`` ≥ 1; ``jwks_min_refetch_s`` 1..ttl;
    ``timeout_ms`` 1..30000. Raises ``ValueError`` naming the bad field.
    """
    url = jwks_url.strip()
    try:
        parsed = httpx.URL(url)
    except Exception:
        raise ValueError(f"jwks_url: not a URL: {url!r}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"jwks_url: must be an http(s) URL, got {url!r}")
    if not issuer.strip():
        raise ValueError("issuer: required (the expected 'iss' claim)")
    auds = frozenset(a.strip() for a in audiences if a.strip())
    if not auds:
        raise ValueError("audience: at least one expected 'aud' value is required")
    algs = frozenset(a.strip() for a in algorithms if a.strip())
    if not algs:
        raise ValueError("algorithms: at least one algorithm is required")
    for alg in sorted(algs):
        if alg.lower() == "none":
            raise ValueError("algorithms: 'none' (unsigned tokens) is never accepted")
        if alg.upper().startswith("HS"):
            raise ValueError(f"algorithms: {alg} is an HMAC algorithm; keys from a JWKS URL are public keys "
                             "(RS256/HS256 confusion)")
        if alg not in SUPPORTED_ALGORITHMS:
            raise ValueError(f"algorithms: unsupported {alg!r}; choose from {sorted(SUPPORTED_ALGORITHMS)}")
    if not 0 <= leeway_s <= 300:
        raise ValueError("leeway_s: must be within 0..300")
    if not principal_claim.strip():
        raise ValueError("principal_claim: must not be empty")
    if jwks_ttl_s < 1:
        raise ValueError("jwks_ttl_s: must be at least 1")
    if not 1 <= jwks_min_refetch_s <= jwks_ttl_s:
        raise ValueError("jwks_min_refetch_s: must be within 1..jwks_ttl_s")
    if not 1 <= timeout_ms <= 30_000:
        raise ValueError("timeout_ms: must be within 1..30000")
    return JwtPolicy(jwks_url=url, issuer=issuer.strip(), audiences=auds, algorithms=algs,
                     leeway_s=leeway_s, principal_claim=principal_claim.strip(), jwks_ttl_s=jwks_ttl_s,
                     jwks_min_refetch_s=jwks_min_refetch_s, timeout_s=timeout_ms / 1000.0)


# --- key sets -------------------------------------------------------------------------


@dataclass(frozen=True)
class JwkEntry:
    """One usable key of a key set: its ``kid`` (None if absent), ``kty`` and a
    PyJWT verifier per allowed algorithm that fits the key."""

    kid: str | None
    kty: str
    verifiers: Mapping[str, PyJWK]


@dataclass(frozen=True)
class KeySet:
    """The usable keys of a JWKS document, indexed by ``kid``."""

    entries: tuple[JwkEntry, ...]
    by_kid: Mapping[str, tuple[JwkEntry, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, entries: Iterable[JwkEntry]) -> KeySet:
        """A key set of ``entries``, indexed by their ``kid``."""
        entries = tuple(entries)
        index: dict[str, list[JwkEntry]] = {}
        for entry in entries:
            if entry.kid is not None:
                index.setdefault(entry.kid, []).append(entry)
        return cls(entries, {kid: tuple(found) for kid, found in index.items()})

    def knows(self, kid: str) -> bool:
        """True if some key carries ``kid``."""
        return kid in self.by_kid


def _fits(alg: str, kty: object, crv: object) -> bool:
    """True if algorithm ``alg`` can use a key of type ``kty`` (curve ``crv``) — RFC 7518 §3."""
    if not isinstance(crv, (str, type(None))):
        return False
    if alg in _RSA_ALGORITHMS:
        return kty == "RSA"
    if alg in _EC_CURVES:
        return kty == "EC" and crv == _EC_CURVES[alg]
    if alg == "EdDSA":
        return kty == "OKP" and crv in _OKP_CURVES
    return False


def usable_key(jwk: object, algorithms: frozenset[str]) -> JwkEntry | None:
    """The key ``jwk`` (one member of a JWKS ``keys`` array) as a :class:`JwkEntry`,
    or None if the gateway must not use it for verifying signatures:
    not an object; ``use`` other than ``sig`` or ``key_ops`` without ``verify``
    (RFC 7517 §4.2–4.3); a symmetric (``oct``) or unknown key type; a ``kid``
    that is not a short string; a declared ``alg`` not on the allow-list; no
    allowed algorithm that fits; an RSA modulus under :data:`MIN_RSA_BITS`;
    or key material PyJWT cannot load. Only public members are used.
    """
    if not isinstance(jwk, dict):
        return None
    kty = jwk.get("kty")
    if not isinstance(kty, str) or kty not in _PUBLIC_MEMBERS or jwk.get("use", "sig") != "sig":
        return None
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    kid = jwk.get("kid")
    if kid is not None and not (isinstance(kid, str) and 0 < len(kid) <= MAX_KID):
        return None
    fitting = [alg for alg in sorted(algorithms) if _fits(alg, kty, jwk.get("crv"))]
    declared = jwk.get("alg")
    if declared is not None:
        fitting = [declared] if declared in fitting else []
    public = {"kty": kty, **{m: jwk[m] for m in _PUBLIC_MEMBERS[kty] if m in jwk}}
    verifiers: dict[str, PyJWK] = {}
    try:
        for alg in fitting:
            verifiers[alg] = PyJWK(public, algorithm=alg)
    except Exception:  # malformed key material of any kind: skip this key, keep the others
        return None
    if not verifiers:
        return None
    if kty == "RSA" and next(iter(verifiers.values())).key.key_size < MIN_RSA_BITS:
        return None
    return JwkEntry(kid=kid, kty=kty, verifiers=verifiers)


def parse_jwks(document: bytes, algorithms: frozenset[str]) -> KeySet:
    """Parse a JWK Set document (RFC 7517 §5: ``{"keys": [...]}``) into a :class:`KeySet`.

    Unusable keys are skipped (:func:`usable_key`). Raises :class:`JwksError`
    if the document is over :data:`MAX_JWKS_BYTES`, not a JSON object with a
    ``keys`` array of at most :data:`MAX_JWKS_KEYS` members, or holds no
    usable key.
    """
    if len(document) > MAX_JWKS_BYTES:
        raise JwksError("key set document too large")
    try:
        data = json.loads(document)
    except (ValueError, RecursionError):
        raise JwksError("key set is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise JwksError("key set has no 'keys' array")
    if len(data["keys"]) > MAX_JWKS_KEYS:
        raise JwksError(f"key set has more than {MAX_JWKS_KEYS} keys")
    entries = [e for e in (usable_key(k, algorithms) for k in data["keys"]) if e is not None]
    if not entries:
        raise JwksError("key set has no usable signing key")
    return KeySet.of(entries)


def select_key(keys: KeySet, kid: str | None, alg: str) -> PyJWK | None:
    """The verifier for a token with ``kid`` and ``alg``, or None.

    With a ``kid``, only keys with that ``kid`` are candidates; without one,
    every key is. Exactly one candidate must fit ``alg`` (two would be
    ambiguous; none means the token cannot be verified).
    """
    candidates = keys.by_kid.get(kid, ()) if kid is not None else keys.entries
    found = [entry.verifiers[alg] for entry in candidates if alg in entry.verifiers]
    return found[0] if len(found) == 1 else None


# --- tokens ---------------------------------------------------------------------------


@dataclass(frozen=True)
class JwtHeader:
    """The parts of a JOSE header the gateway uses: ``alg`` and ``kid`` (or None)."""

    alg: str
    kid: str | None


def is_jws(token: str) -> bool:
    """True if ``token`` looks like a JWS compact serialization: three segments,
    the first a base64url JSON object with an ``alg`` member. Cheap and never
    raises; used to route a bearer token to JWT verification or introspection."""
    if token.count(".") != 2:
        return False
    head = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return False
    return isinstance(header, dict) and "alg" in header


def peek_header(token: str, algorithms: frozenset[str]) -> JwtHeader:
    """Read and check the unverified JOSE header of ``token`` (steps 1–2 above).

    Raises :class:`TokenRejected` (with a description safe to send back:
    it never quotes the token) for: not three segments (a JWE has five),
    bad base64url or JSON, ``alg`` ``none``, an HMAC ``alg``, an ``alg`` not in
    ``algorithms``, a ``crit`` header, or a ``kid`` that is not a short string.
    """
    dots = token.count(".")
    if dots == 4:
        raise TokenRejected("encrypted tokens (JWE) are not accepted")
    if dots != 2:
        raise TokenRejected("token is not a signed JWT")
    try:
        header = jwt.get_unverified_header(token)
    except Exception:  # PyJWT raises DecodeError/InvalidTokenError; anything else is malformed too
        raise TokenRejected("malformed token") from None
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise TokenRejected("token has no algorithm")
    if alg.lower() == "none":
        raise TokenRejected("unsigned tokens (alg none) are not accepted")
    if alg.upper().startswith("HS"):
        raise TokenRejected("HMAC-signed tokens are not accepted")
    if alg not in algorithms:
        raise TokenRejected("token algorithm is not allowed")
    if "crit" in header:
        raise TokenRejected("critical header extensions are not supported")
    kid = header.get("kid")
    if kid is not None and not (isinstance(kid, str) and 0 < len(kid) <= MAX_KID):
        raise TokenRejected("malformed key id")
    return JwtHeader(alg=alg, kid=kid)


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def check_claims(claims: Mapping[str, object], policy: JwtPolicy, now: float) -> BearerVerdict:
    """Check the registered claims of a verified token (RFC 7519 §4.1) at ``now``
    (Unix seconds) with ``policy.leeway_s`` of clock skew allowed.

    ``exp`` is required and must be a number with ``now < exp + leeway``
    (§4.1.4); ``nbf`` and ``iat``, when present, must be numbers not after
    ``now + leeway`` (§4.1.5–4.1.6); ``iss`` must equal ``policy.issuer``
    (§4.1.1, exact string comparison); ``aud`` (a string or an array of
    strings) must contain one of ``policy.audiences`` (§4.1.3); the
    ``policy.principal_claim`` must be a usable principal. Returns ``ok``
    with the principal and ``expires_at=exp``, or ``invalid``.
    """
    leeway = policy.leeway_s
    exp = _number(claims.get("exp"))
    if exp is None:
        return rejected("token has no valid expiry (exp)")
    if now >= exp + leeway:
        return rejected("token has expired")
    if "nbf" in claims:
        nbf = _number(claims["nbf"])
        if nbf is None or nbf > now + leeway:
            return rejected("token is not valid yet (nbf)")
    if "iat" in claims:
        iat = _number(claims["iat"])
        if iat is None or iat > now + leeway:
            return rejected("token issue time (iat) is in the future")
    if claims.get("iss") != policy.issuer:
        return rejected("token issuer is not accepted")
    aud = claims.get("aud")
    auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if not any(isinstance(a, str) and a in policy.audiences for a in auds):
        return rejected("token audience is not accepted")
    principal = usable_principal(claims.get(policy.principal_claim))
    if principal is None:
        return rejected("token has no usable subject")
    return accepted(principal, expires_at=exp)


def verify_jwt(token: str, key: PyJWK, alg: str, policy: JwtPolicy, now: float) -> BearerVerdict:
    """Verify the signature of ``token`` with ``key`` for ``alg``, then its claims
    (:func:`check_claims`) at ``now`` (Unix seconds). Never raises: every
    failure is an ``invalid`` verdict whose description never quotes the token.
    """
    try:
        claims = jwt.decode(token, key=key, algorithms=[alg], options=_SIGNATURE_ONLY)
    except jwt.InvalidSignatureError:
        return rejected("token signature does not verify")
    except Exception:  # DecodeError, InvalidKeyError, …, or anything unexpected: refuse
        return rejected("malformed token")
    return check_claims(claims, policy, now)


# --- fetching -------------------------------------------------------------------------


@dataclass
class JwksStats:
    """Counters: ``fetches`` started, ``failures`` among them, refetches
    triggered by an unknown ``kid`` and ones ``held`` back by the floor."""

    fetches: int = 0
    failures: int = 0
    unknown_kid_refetches: int = 0
    held: int = 0


class JwksCache:
    """The key set of one JWKS URL, cached for ``ttl_s`` seconds.

    ``fetch`` is an async callable returning the document bytes (raising on
    failure). Every fetch — on first use, after the TTL, or for an unknown
    ``kid`` — is at least ``min_refetch_s`` after the previous attempt
    (``clock`` seconds, monotonic); concurrent callers share one fetch in
    flight. A failed fetch keeps the previous keys. :meth:`lookup` raises
    :class:`JwksUnavailable` only when no key set was ever loaded.
    """

    def __init__(self, fetch: Callable[[], Awaitable[bytes]], algorithms: frozenset[str], ttl_s: float,
                 min_refetch_s: float, clock: Callable[[], float] = time.monotonic,
                 source: str = "JWKS", warn: Callable[..., None] | None = None) -> None:
        self.fetch = fetch
        self.algorithms = algorithms
        self.ttl_s = ttl_s
        self.min_refetch_s = min_refetch_s
        self.clock = clock
        self.source = source
        self.warn = warn or ThrottledWarning(logger)
        self.keys: KeySet | None = None
        self.loaded_at = 0.0
        self.attempted_at: float | None = None
        self.stats = JwksStats()
        self._inflight: asyncio.Future[bool] | None = None

    def _may_fetch(self) -> bool:
        return self.attempted_at is None or self.clock() - self.attempted_at >= self.min_refetch_s

    async def _await_fetch(self) -> bool:
        """Join the fetch in flight, or start one if the floor allows. False if none ran."""
        if self._inflight is None:
            if not self._may_fetch():
                return False
            self._inflight = asyncio.ensure_future(self._load())
        return await asyncio.shield(self._inflight)

    async def refresh(self) -> bool:
        """Fetch now if the floor allows (or join a fetch in flight); True if new keys loaded."""
        return await self._await_fetch()

    async def lookup(self, kid: str | None, alg: str) -> PyJWK | None:
        """The verifier for ``kid``/``alg`` (:func:`select_key`), fetching as described above."""
        if self.keys is None or self.clock() - self.loaded_at >= self.ttl_s:
            await self._await_fetch()
        if self.keys is None:
            raise JwksUnavailable("no signing keys loaded")
        key = select_key(self.keys, kid, alg)
        if key is None and kid is not None and not self.keys.knows(kid):
            if self._inflight is not None or self._may_fetch():
                self.stats.unknown_kid_refetches += 1
                await self._await_fetch()
                key = select_key(self.keys, kid, alg)
            else:
                self.stats.held += 1
        return key

    async def _load(self) -> bool:
        self.attempted_at = self.clock()
        self.stats.fetches += 1
        try:
            keys = parse_jwks(await self.fetch(), self.algorithms)
            self.keys, self.loaded_at = keys, self.clock()
            return True
        except Exception as exc:  # network, HTTP status, size, parse: keep the old keys
            self.stats.failures += 1
            self.warn("fetching the JWKS from %s failed (%s); %s", self.source, _describe(exc),
                      "keeping the previous keys" if self.keys is not None else "no keys yet")
            return False
        finally:
            self._inflight = None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


class JwtVerifier:
    """Verifies JWT bearer tokens for one :class:`JwtPolicy`, fetching its key set
    with an httpx ``AsyncClient`` (never blocking the event loop).

    Create it anywhere; the HTTP client is made on first use, inside the
    running loop. Call :meth:`close` when done.
    """

    def __init__(self, policy: JwtPolicy) -> None:
        self.policy = policy
        self._client: httpx.AsyncClient | None = None
        self.cache = JwksCache(self._fetch, policy.algorithms, policy.jwks_ttl_s, policy.jwks_min_refetch_s,
                               source=policy.jwks_url)

    async def _fetch(self) -> bytes:
        if self._client is None:
            # trust_env=False: no proxy or netrc from the environment on the key path.
            self._client = httpx.AsyncClient(timeout=self.policy.timeout_s, trust_env=False,
                                             follow_redirects=False)

        async def get() -> bytes:
            async with self._client.stream(
                    "GET", self.policy.jwks_url,
                    headers={"Accept": "application/jwk-set+json, application/json"}) as response:
                if response.status_code != 200:
                    raise JwksError(f"HTTP {response.status_code}")
                return await read_limited(response, MAX_JWKS_BYTES)
        return await asyncio.wait_for(get(), self.policy.timeout_s)

    async def verify(self, token: str, now: float) -> BearerVerdict:
        """Verify ``token`` at ``now`` (Unix seconds). Never raises."""
        try:
            header = peek_header(token, self.policy.algorithms)
        except TokenRejected as exc:
            return rejected(str(exc))
        try:
            key = await self.cache.lookup(header.kid, header.alg)
        except JwksUnavailable:
            return unavailable("token signing keys are not available yet")
        if key is None:
            return rejected("no signing key matches the token")
        return verify_jwt(token, key, header.alg, self.policy, now)

    async def warm(self) -> None:
        """Load the key set now (at start-up), so the first request does not wait."""
        await self.cache.refresh()

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
