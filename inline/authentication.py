"""Authentication: API keys and bearer tokens (JWT or introspected).

A request may carry **one** credential:

- an API key in one header (``X-API-Key`` by default). The keys file holds
  only SHA-256 hashes (see :mod:`gatewatch.keys`), so the gateway hashes the
  presented key and looks the hash up; the principal is the key's ``id``,
  never the key itself;
- a bearer token in ``Authorization: Bearer …`` (RFC 6750 §2.1), when JWT
  verification (:mod:`inline.jwt_auth`) and/or token introspection
  (:mod:`inline.introspection`) is configured. A token that parses as a
  JWS goes to JWT verification when it is configured; any other token goes
  to introspection when that is configured. The principal is the token's
  subject (``sub`` by default).

Precedence, decided per request:

1. an API key **and** a bearer token: refused (401, ``invalid_request``):
   one credential per request, so that the gateway and the upstream cannot
   disagree on who is calling;
2. an API key: checked as always;
3. a bearer token: verified;
4. neither: ``missing`` on protected routes, ``public`` on public ones.

``Authorization`` headers of other schemes (``Basic …``) are the upstream's
business and pass through unread; so does every ``Authorization`` header
when no bearer method is configured.

Routes listed as public need no credential. A credential sent to a public
route is still checked, and a bad one is refused: a client that presents a
credential learns whether it is valid, consistently on every route.

Refusals are 401 with an RFC 9457 problem body (``application/problem+json``;
``error: "unauthorized"``, ``detail``, and ``auth_error`` with the RFC 6750
code for bearer tokens) and ``WWW-Authenticate`` challenges (RFC 9110
§11.6.1 requires one on every 401): ``ApiKey realm="gatewatch",
header="X-API-Key"`` (API keys have no registered scheme, so the challenge
names the header to use) and, when bearer tokens are accepted, ``Bearer
realm="gatewatch"`` — with ``error`` and ``error_description`` (RFC 6750
§3) when a token was refused. Every credential refusal is 401, including
RFC 6750's ``invalid_request`` cases (for which §3.1 says SHOULD 400), so
that "authentication failed" is one status for clients and dashboards.

When a token cannot be checked right now (no signing keys could be fetched
yet, the introspection endpoint is down or broken) the answer is 503 with
``Retry-After`` and the event says ``auth="unavailable"``: an outage of the
authorization server is not a bad credential, and failing open is not an
option for authentication.

The addon identifies the client in ``requestheaders`` (so that decision
enforcement and rate limiting can act on the principal) and refuses in
``request``, which runs after the enforcement and rate-limit addons; a
banned or flooding client is therefore answered 403/429 without learning
whether its credential is valid. Both hooks are ``async``: key-set fetches
and introspection calls are awaited without blocking other flows. They run
before per-IP rate limiting, so they are bounded on their own: the key-set
refetch floor, the introspection caches and ``max_in_flight``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mitmproxy import ctx, exceptions, http

from gatewatch.events import AuthResult
from gatewatch.keys import ApiKey, KeysFileError, hash_key, load_keys
from gatewatch.settings import IntrospectionSettings, JwtSettings, load_settings
from inline.bearer import NO_BEARER, BearerVerdict, bearer_challenge, parse_authorization
from inline.flowstate import FlowFacts, answered, get_facts, problem_answer
from inline.introspection import IntrospectionPolicy, Introspector, parse_introspection_policy
from inline.jwt_auth import JwtPolicy, JwtVerifier, is_jws, parse_jwt_policy
from inline.routes import BadPath, ensure_facts, normalize_path

logger = logging.getLogger(__name__)

#: Realm of every challenge the gateway sends (RFC 9110 §11.5).
REALM = "gatewatch"
#: Key, in ``flow.metadata``, of the flow's :class:`Identity` (no secret in it).
IDENTITY_KEY = "gatewatch.auth"
#: ``Retry-After`` (seconds) of the 503 sent when a token cannot be checked now.
UNAVAILABLE_RETRY_S = 5


@dataclass(frozen=True)
class PublicRoutes:
    """Parsed public-route patterns: ``exact`` paths and path ``prefixes``."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]

    def matches(self, path: str) -> bool:
        """True if the normalized ``path`` is public."""
        return path in self.exact or any(path.startswith(p) for p in self.prefixes)


def parse_public_routes(patterns: Iterable[str]) -> PublicRoutes:
    """Parse public-route patterns: an exact path (``/health``) or a prefix
    ending in ``*`` (``/docs/*`` matches every path starting with ``/docs/``).

    Exact paths are normalized like request paths (so ``/health/`` equals
    ``/health``). Raises ``ValueError`` for a pattern that does not start
    with ``/`` or is not a valid path.
    """
    exact: set[str] = set()
    prefixes: list[str] = []
    for pattern in patterns:
        pattern = pattern.strip()
        if not pattern.startswith("/"):
            raise ValueError(f"public route {pattern!r} must start with '/'")
        if pattern.endswith("*"):
            prefixes.append(pattern[:-1])
        else:
            try:
                exact.add(normalize_path(pattern))
            except BadPath as exc:
                raise ValueError(f"public route {pattern!r}: {exc}") from None
    return PublicRoutes(frozenset(exact), tuple(prefixes))


@dataclass(frozen=True)
class Identity:
    """Outcome of authenticating one request: ``auth`` result, ``principal``
    (key id or token subject, ``""`` if none), a human ``detail`` for
    refusals, the ``scheme`` of the credential that was judged (``ApiKey``,
    ``Bearer``, or ``""`` when none was sent) and, for refused bearer
    tokens, the RFC 6750 §3.1 ``error`` code; ``tier``: the API key's tier
    (``""`` for bearer tokens and refusals), which rate-limit policies follow.
    Never holds the credential."""

    auth: AuthResult
    principal: str = ""
    detail: str = ""
    scheme: Literal["", "ApiKey", "Bearer"] = ""
    error: str | None = None
    tier: str = ""

    @property
    def refused(self) -> bool:
        """True if the request must be answered 401."""
        return self.auth in ("missing", "invalid")


def identity_of(verdict: BearerVerdict) -> Identity:
    """The :class:`Identity` for a bearer token's verdict."""
    if verdict.status == "ok":
        return Identity("ok", principal=verdict.principal, scheme="Bearer")
    if verdict.status == "unavailable":
        return Identity("unavailable", detail=verdict.detail, scheme="Bearer")
    return Identity("invalid", detail=verdict.detail, scheme="Bearer", error=verdict.error or "invalid_token")


def identify(presented: Sequence[str], keys: Mapping[str, ApiKey], public: bool,
             header: str = "X-API-Key") -> Identity:
    """Authenticate a request from the values of its API-key header.

    ``presented`` holds every value of the header (normally zero or one);
    ``keys`` maps stored hashes to keys (:func:`gatewatch.keys.load_keys`).
    Results: ``ok`` (one known key), ``invalid`` (unknown key, or several
    values), ``missing`` (no key on a protected route), ``public`` (no key
    on a public route).
    """
    values = [v.strip() for v in presented if v.strip()]
    if not values:
        if public:
            return Identity("public")
        return Identity("missing", detail=f"missing API key in header {header}")
    if len(values) > 1:
        return Identity("invalid", detail=f"more than one {header} header", scheme="ApiKey")
    if not values[0].isascii() or not values[0].isprintable():
        # Keys are ASCII tokens; header bytes that are not UTF-8 arrive here as
        # surrogates (mitmproxy decodes with surrogateescape) and cannot be hashed.
        return Identity("invalid", detail="unknown API key", scheme="ApiKey")
    key = keys.get(hash_key(values[0]))
    if key is None:
        return Identity("invalid", detail="unknown API key", scheme="ApiKey")
    return Identity("ok", principal=key.id, scheme="ApiKey", tier=key.tier)


#: Seconds between two checks of the keys file for changes.
KEYS_RECHECK_S = 1.0


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


@dataclass(frozen=True)
class AuthSpec:
    """Parsed authentication options. ``jwt``/``introspection`` are None when off."""

    keys: Mapping[str, ApiKey]
    header: str
    public: PublicRoutes
    jwt: JwtPolicy | None = None
    introspection: IntrospectionPolicy | None = None

    @property
    def bearer(self) -> bool:
        """True if bearer tokens are accepted (JWT, introspection or both)."""
        return self.jwt is not None or self.introspection is not None


def challenges(ident: Identity, spec: AuthSpec) -> list[str]:
    """The ``WWW-Authenticate`` challenges of a 401 for ``ident`` (one field line each).

    A refused bearer token gets the bearer challenge with ``error`` and
    ``error_description`` (RFC 6750 §3); a refused API key the ``ApiKey``
    challenge; a request without credentials every scheme the gateway
    accepts, ``ApiKey`` first, with no error code (RFC 6750 §3.1).
    """
    api_key = f'ApiKey realm="{REALM}", header="{spec.header}"'
    if ident.scheme == "Bearer":
        return [bearer_challenge(REALM, ident.error, ident.detail)]
    if ident.scheme == "ApiKey" or not spec.bearer:
        return [api_key]
    return [api_key, bearer_challenge(REALM)]


#: Option names per concern (``configure`` re-parses when one of them changes).
_KEY_OPTIONS = {"gatewatch_keys_file", "gatewatch_api_key_header", "gatewatch_public_routes"}
_JWT_OPTIONS = {"gatewatch_jwt_jwks_url", "gatewatch_jwt_issuer", "gatewatch_jwt_audience",
                "gatewatch_jwt_algorithms", "gatewatch_jwt_leeway_s", "gatewatch_jwt_principal_claim",
                "gatewatch_jwt_jwks_ttl_s", "gatewatch_jwt_jwks_min_refetch_s", "gatewatch_jwt_timeout_ms"}
_INTROSPECTION_OPTIONS = {
    "gatewatch_introspection_url", "gatewatch_introspection_client_id",
    "gatewatch_introspection_client_secret", "gatewatch_introspection_principal_claims",
    "gatewatch_introspection_audience", "gatewatch_introspection_cache_max_ttl_s",
    "gatewatch_introspection_negative_ttl_s", "gatewatch_introspection_cache_max_entries",
    "gatewatch_introspection_max_in_flight", "gatewatch_introspection_timeout_ms"}


def jwt_policy_from_options(o) -> JwtPolicy | None:
    """The JWT policy of mitmproxy options ``o`` (None when ``gatewatch_jwt_jwks_url``
    is empty). Raises ``OptionsError`` naming the bad option."""
    if not o.gatewatch_jwt_jwks_url.strip():
        return None
    try:
        return parse_jwt_policy(
            jwks_url=o.gatewatch_jwt_jwks_url, issuer=o.gatewatch_jwt_issuer,
            audiences=o.gatewatch_jwt_audience, algorithms=o.gatewatch_jwt_algorithms,
            leeway_s=o.gatewatch_jwt_leeway_s, principal_claim=o.gatewatch_jwt_principal_claim,
            jwks_ttl_s=o.gatewatch_jwt_jwks_ttl_s, jwks_min_refetch_s=o.gatewatch_jwt_jwks_min_refetch_s,
            timeout_ms=o.gatewatch_jwt_timeout_ms)
    except ValueError as exc:
        raise exceptions.OptionsError(f"gatewatch_jwt_{exc}") from None


def introspection_policy_from_options(o) -> IntrospectionPolicy | None:
    """The introspection policy of mitmproxy options ``o`` (None when
    ``gatewatch_introspection_url`` is empty). Raises ``OptionsError``."""
    if not o.gatewatch_introspection_url.strip():
        return None
    try:
        return parse_introspection_policy(
            url=o.gatewatch_introspection_url, client_id=o.gatewatch_introspection_client_id,
            client_secret=o.gatewatch_introspection_client_secret,
            principal_claims=o.gatewatch_introspection_principal_claims,
            audiences=o.gatewatch_introspection_audience,
            cache_max_ttl_s=o.gatewatch_introspection_cache_max_ttl_s,
            negative_ttl_s=o.gatewatch_introspection_negative_ttl_s,
            cache_max_entries=o.gatewatch_introspection_cache_max_entries,
            max_in_flight=o.gatewatch_introspection_max_in_flight,
            timeout_ms=o.gatewatch_introspection_timeout_ms)
    except ValueError as exc:
        raise exceptions.OptionsError(f"gatewatch_introspection_{exc}") from None


class Authentication:
    """Addon: identifies the principal from an API key or a bearer token; answers
    401 on protected routes without a valid credential and on any route with
    a bad one, 503 when a token cannot be checked now.

    Options: ``gatewatch_keys_file``, ``gatewatch_api_key_header``,
    ``gatewatch_public_routes``; ``gatewatch_jwt_*`` (on when
    ``gatewatch_jwt_jwks_url`` is set; see :class:`gatewatch.settings.JwtSettings`);
    ``gatewatch_introspection_*`` (on when ``gatewatch_introspection_url``
    is set; see :class:`gatewatch.settings.IntrospectionSettings`).

    Counters: ``refused`` (401s), ``unavailable`` (503s), ``failures``
    (401s by ``detail``, a small fixed set of reasons).
    """

    def __init__(self) -> None:
        self._keys_file: Path | None = None
        self._keys_mtime: int | None = None
        self._keys_checked = 0.0
        self.spec: AuthSpec | None = None
        self.jwt: JwtVerifier | None = None
        self.introspector: Introspector | None = None
        self.refused = 0
        self.unavailable = 0
        self.failures: Counter[str] = Counter()
        self._tasks: set[asyncio.Task] = set()

    def load(self, loader) -> None:
        s = load_settings()
        loader.add_option("gatewatch_keys_file", str, str(s.keys_file),
                          "TOML file of API-key hashes (gatewatch.keys); read at start-up.")
        loader.add_option("gatewatch_api_key_header", str, s.api_key_header,
                          "Request header that carries the API key.")
        loader.add_option("gatewatch_public_routes", Sequence[str], list(s.public_routes),
                          "Paths served without a credential: exact path, or prefix ending in '*'.")
        j = s.jwt or JwtSettings.model_construct(jwks_url="", issuer="", audience=[])
        loader.add_option("gatewatch_jwt_jwks_url", str, j.jwks_url,
                          "JWK Set URL for JWT bearer tokens; empty: JWTs are not accepted.")
        loader.add_option("gatewatch_jwt_issuer", str, j.issuer, "Expected 'iss' of JWTs.")
        loader.add_option("gatewatch_jwt_audience", Sequence[str], list(j.audience),
                          "Accepted 'aud' values of JWTs (one must match).")
        loader.add_option("gatewatch_jwt_algorithms", Sequence[str], list(j.algorithms),
                          "Allowed JWS algorithms (asymmetric only: RS*, PS*, ES*, EdDSA).")
        loader.add_option("gatewatch_jwt_leeway_s", int, j.leeway_s,
                          "Clock skew allowed on exp, nbf and iat, seconds.")
        loader.add_option("gatewatch_jwt_principal_claim", str, j.principal_claim,
                          "JWT claim that names the principal.")
        loader.add_option("gatewatch_jwt_jwks_ttl_s", int, j.jwks_ttl_s,
                          "Seconds a fetched key set is used before it is refetched.")
        loader.add_option("gatewatch_jwt_jwks_min_refetch_s", int, j.jwks_min_refetch_s,
                          "Floor between key-set fetches, seconds (bounds refetches on unknown kids).")
        loader.add_option("gatewatch_jwt_timeout_ms", int, j.timeout_ms, "Timeout of a key-set fetch, ms.")
        i = s.introspection or IntrospectionSettings.model_construct(url="", client_id="", client_secret="")
        loader.add_option("gatewatch_introspection_url", str, i.url,
                          "RFC 7662 introspection endpoint for opaque tokens; empty: off.")
        loader.add_option("gatewatch_introspection_client_id", str, i.client_id,
                          "Client id of the gateway at the authorization server.")
        loader.add_option("gatewatch_introspection_client_secret", str, i.client_secret,
                          "Client secret of the gateway (HTTP Basic, RFC 6749 §2.3.1).")
        loader.add_option("gatewatch_introspection_principal_claims", Sequence[str], list(i.principal_claims),
                          "Introspection response members tried in order for the principal.")
        loader.add_option("gatewatch_introspection_audience", Sequence[str], list(i.audience),
                          "If set, the introspected 'aud' must name one of these.")
        loader.add_option("gatewatch_introspection_cache_max_ttl_s", int, i.cache_max_ttl_s,
                          "Longest a positive answer is cached, seconds (never past the token's exp).")
        loader.add_option("gatewatch_introspection_negative_ttl_s", int, i.negative_ttl_s,
                          "Seconds an inactive token's answer is cached.")
        loader.add_option("gatewatch_introspection_cache_max_entries", int, i.cache_max_entries,
                          "Bound of each introspection cache (positive, negative).")
        loader.add_option("gatewatch_introspection_max_in_flight", int, i.max_in_flight,
                          "Most introspection calls at once.")
        loader.add_option("gatewatch_introspection_timeout_ms", int, i.timeout_ms,
                          "Timeout of an introspection call, ms.")

    def configure(self, updated: set[str]) -> None:
        if not updated & (_KEY_OPTIONS | _JWT_OPTIONS | _INTROSPECTION_OPTIONS):
            return
        opts = ctx.options
        header = opts.gatewatch_api_key_header.strip()
        if not header or not all(c.isalnum() or c in "-_" for c in header):
            raise exceptions.OptionsError(f"gatewatch_api_key_header: invalid header name {header!r}")
        try:
            keys = load_keys(Path(opts.gatewatch_keys_file))
        except KeysFileError as exc:
            raise exceptions.OptionsError(f"gatewatch_keys_file: {exc}") from exc
        try:
            public = parse_public_routes(opts.gatewatch_public_routes)
        except ValueError as exc:
            raise exceptions.OptionsError(f"gatewatch_public_routes: {exc}") from exc
        jwt_policy = jwt_policy_from_options(opts)
        introspection = introspection_policy_from_options(opts)
        spec = AuthSpec(keys=keys, header=header, public=public, jwt=jwt_policy, introspection=introspection)
        if spec.bearer and header.lower() == "authorization":
            raise exceptions.OptionsError("gatewatch_api_key_header: cannot be Authorization "
                                          "while bearer tokens are accepted")
        # New verifiers (and empty caches) only for a policy that changed.
        if self.jwt is None or self.jwt.policy != jwt_policy:
            self._retire(self.jwt)
            self.jwt = JwtVerifier(jwt_policy) if jwt_policy is not None else None
            self._warm()
        if self.introspector is None or self.introspector.policy != introspection:
            self._retire(self.introspector)
            self.introspector = Introspector(introspection) if introspection is not None else None
        self.spec = spec
        self._keys_file = Path(opts.gatewatch_keys_file)
        self._keys_mtime = _mtime(self._keys_file)
        self._keys_checked = time.monotonic()

    def _reload_keys_if_changed(self) -> None:
        """Re-read the keys file when it changed (checked at most every
        :data:`KEYS_RECHECK_S`): rotations and revocations apply without a restart.
        A broken new file keeps the keys in force (warned)."""
        now = time.monotonic()
        if self.spec is None or now - self._keys_checked < KEYS_RECHECK_S:
            return
        self._keys_checked = now
        mtime = _mtime(self._keys_file)
        if mtime == self._keys_mtime:
            return
        self._keys_mtime = mtime
        try:
            keys = load_keys(self._keys_file)
        except KeysFileError as exc:
            logger.warning("keys file changed but is not usable, keeping the keys in force: %s", exc)
            return
        self.spec = dataclasses.replace(self.spec, keys=keys)
        logger.info("keys file reloaded: %d active keys", len(keys))

    def _spawn(self, coro) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:  # no loop yet (load time): running() will do it
            coro.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _warm(self) -> None:
        if self.jwt is not None:
            self._spawn(self.jwt.warm())

    def _retire(self, verifier: JwtVerifier | Introspector | None) -> None:
        if verifier is not None:
            self._spawn(verifier.close())

    def running(self) -> None:
        # Fetch the key set at start-up, so the first request does not wait for it.
        # (A failure is logged as a warning: error-level logs during start-up stop mitmdump.)
        if self.jwt is not None and self.jwt.cache.attempted_at is None:
            self._warm()

    async def done(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for verifier in (self.jwt, self.introspector):
            if verifier is not None:
                await verifier.close()

    async def authenticate(self, flow: http.HTTPFlow, facts: FlowFacts, spec: AuthSpec) -> Identity:
        """Authenticate ``flow`` by the precedence in the module doc. Never returns
        the credential; may await a key-set fetch or an introspection call."""
        headers = flow.request.headers
        api_values = headers.get_all(spec.header)
        bearer = parse_authorization(headers.get_all("authorization")) if spec.bearer else NO_BEARER
        if not bearer.present:
            ident = identify(api_values, spec.keys, spec.public.matches(facts.path), spec.header)
            if ident.auth == "missing" and spec.bearer:
                ident = Identity("missing", detail=f"missing credential: an API key in header {spec.header} "
                                                   "or an Authorization: Bearer token")
            return ident
        if any(v.strip() for v in api_values):
            return Identity("invalid", detail="send an API key or a bearer token, not both",
                            scheme="Bearer", error="invalid_request")
        if bearer.token is None:
            return Identity("invalid", detail=bearer.detail, scheme="Bearer", error=bearer.error)
        now = time.time()
        if self.jwt is not None and (self.introspector is None or is_jws(bearer.token)):
            return identity_of(await self.jwt.verify(bearer.token, now))
        if self.introspector is not None:
            return identity_of(await self.introspector.verify(bearer.token, now))
        return Identity("invalid", detail="bearer tokens are not accepted", scheme="Bearer",
                        error="invalid_token")

    async def _identify(self, flow: http.HTTPFlow, facts: FlowFacts, spec: AuthSpec) -> Identity:
        try:
            ident = await self.authenticate(flow, facts, spec)
        except Exception:  # fail closed: an unexpected error must not let the request through
            logger.exception("authentication failed unexpectedly; refusing the request")
            ident = Identity("invalid", detail="authentication error")
        facts.auth, facts.principal, facts.auth_detail = ident.auth, ident.principal, ident.detail
        facts.tier = ident.tier
        flow.metadata[IDENTITY_KEY] = ident
        return ident

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._reload_keys_if_changed()
        facts = get_facts(flow)
        if self.spec is None or facts is None or facts.bad_path is not None or answered(flow):
            return
        await self._identify(flow, facts, self.spec)

    async def request(self, flow: http.HTTPFlow) -> None:
        if answered(flow):
            return
        facts = ensure_facts(flow)
        spec = self.spec
        if spec is None:
            # Not configured: never let a request through unchecked (fail closed).
            problem_answer(flow, 401, "authentication unavailable", "unauthorized", "auth",
                           headers={"WWW-Authenticate": f'ApiKey realm="{REALM}"'})
            return
        ident = flow.metadata.get(IDENTITY_KEY)
        if facts.auth_detail is None or ident is None:
            ident = await self._identify(flow, facts, spec)
        if ident.auth == "unavailable":
            self.unavailable += 1
            problem_answer(flow, 503, ident.detail, "unavailable", "auth",
                           headers={"Retry-After": str(UNAVAILABLE_RETRY_S)})
            return
        if not ident.refused:
            return
        self.refused += 1
        self.failures[ident.detail] += 1
        extensions = {"auth_error": ident.error} if ident.error else None
        problem_answer(flow, 401, ident.detail, "unauthorized", "auth", extensions,
                       {"WWW-Authenticate": challenges(ident, spec)})
