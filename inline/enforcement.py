"""Decision enforcement: follow the decisions topic, answer 403 (ban) or 429 (throttle).

The gateway reads ``gatewatch.decisions`` from the beginning at start-up and
then follows it (CrowdSec's bouncer "stream, startup=true" model, pushed
rather than polled), keeping every active decision in memory. A message
keyed ``scope:value`` replaces the decision for that key; a tombstone (null
value) or a decision whose ``expires_at`` has passed deletes it; expiry is
also honoured locally — at lookup time and by a heap of expiry times
drained at least once a second — so a decision lapses on time even if no
message says so. Malformed messages are counted and skipped.

Only authenticated messages are applied (:mod:`gatewatch.signing`: an
HMAC-SHA256 over key and value in the ``gatewatch-sig`` record header, one
of the accepted keys). A message without a signature (``unsigned``) or with
one that does not verify (``bad_signature``: wrong or unknown key, tampered
key or value) is counted and ignored before it is parsed, tombstones
included, so write access to the topic alone can neither ban a client nor
lift a ban. ``gatewatch_decision_signing_required = false`` (a migration
aid) accepts unsigned messages; a bad signature is refused either way.
Keys are read at start-up; a changed key does not re-judge what was applied.

Scopes and what a request is matched on (all values canonical, see
:func:`gatewatch.decision_store.canonical_value`):

=============  ==============================================================
``ip``         the client address (:mod:`inline.client_identity`)
``prefix``     every network of the client address whose length is present
               in the store (a bare address as value means the default
               /24 for IPv4, /64 for IPv6: ``gatewatch_decision_prefix_v4/v6``)
``principal``  the API-key id / token subject from authentication
``username``   the keyed username hash of a login request (the value of the
               event's ``username_hash``); checked by :class:`LoginStage`,
               which runs after :class:`inline.login.Login` has read the body
``asn``        the client's autonomous system number, from the geo hook
``country``    the client's ISO 3166-1 alpha-2 country, from the geo hook
=============  ==============================================================

The decisions are kept in a :class:`gatewatch.decision_store.DecisionStore`:
one dict lookup per scope (prefix: one per distinct prefix length), so a
request costs the same whatever the number of active decisions.

Actions: ``ban`` → 403 with ``Retry-After`` until expiry; ``throttle`` → a
tighter GCRA limit (``gatewatch_throttle_rate_limit``) per matching client
address and decision, 429 beyond it, so the other users of an ASN or prefix
keep their own budgets; ``challenge`` → 403 with ``Gatewatch-Mitigated:
challenge`` and a proof-of-work challenge, unless the request carries a solved one
(:mod:`inline.challenge`: each solution lets one request through, in every gateway
sharing ``gatewatch_challenge_redis_url``). A ``username``
challenge spares the account's recognized sources, as a throttle does.

A ``username`` throttle can instead count the login attempts on the account from
every unrecognized source together (``gatewatch_username_throttle_rate_limit``,
``off`` by default; e.g. ``0.0333:3``, one per 30 s after 3): a distributed attack
spreads over hundreds of addresses, so per-address buckets never fill (NIST SP
800-63B §5.2.2, "Rate Limiting (Throttling)": limit failed attempts *per
account*). An address that logged in to the account successfully before
(:mod:`inline.recognized_sources`, OWASP's device-cookie scheme with the address
as the device) keeps its per-address budget. The cost, measured with
``bench/quality.py`` (seed 1): the attack's answered attempts after the threshold
fell from 598 to 413 of 600, and people logging in to an attacked account for the
first time from a new address (an office NAT) got 7 answers 429 — the attackers
drain the account's budget. That is why it is off by default; a ``challenge``
separates them (people solve it, attack tools do not). The buckets live in each
gateway process: N gateways allow N times the limit.

When several decisions match, a ban wins over a challenge, a challenge over a
throttle. Allow-listed clients (:mod:`inline.lists`) are never blocked or throttled.

Allow entries (``gatewatch allowlist``): messages keyed ``allow:scope:value``
with action ``allow`` (scopes ``ip``, ``prefix``, ``principal``, ``asn``,
``country``), signed like decisions, kept in a second store
(:attr:`Enforcement.allowed`) with the same expiry and tombstones. A request
matching one is marked allow-listed (:func:`inline.flowtags.mark_allow_listed`)
exactly like the static allow-list: no decision blocks or throttles it, and
rate limiting and the username stage skip it (DESIGN.md: "Allow-lists always
win over decisions"); authentication still applies, and the static deny-list
(:mod:`inline.lists`, which runs first) still answers 403: it is the
operator's configuration, not a decision. A ``principal`` entry matches only an
authenticated principal (authentication leaves it empty for a bad credential).
The check costs one lookup per scope, and nothing while there are no entries.

Geo hook (``gatewatch_geo_lookup = "module:function"``): a function of the
client address text returning ``(asn, country)`` (either may be None) or
None; it is called only while asn/country decisions or allow entries exist. A hook that
raises is counted (``geo_errors``) and treated as "no data".

Fail-open vs fail-closed (``gatewatch_decisions_fail_open``, default open):
until the topic has been read up to its high watermark once, requests
either pass (open) or get 503 (closed). After that the last known
decisions keep being enforced while the broker is away.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from mitmproxy import ctx, exceptions, http

from gatewatch import decision_follow
from gatewatch.decision_store import Active, DecisionStore, GeoInfo
from gatewatch.events import ALLOW_KEY_PREFIX, MalformedRecord
from gatewatch.settings import load_settings
from gatewatch.signing import DecisionVerifier, Headers
from inline import brokers, flowtags
from inline.challenge import MITIGATED_HEADER, SOLUTION_HEADER, ChallengeGate, ChallengeSpec
from inline.challenge_ledger import RedisSolutionLedger, ledger_spec
from inline.flowstate import FlowFacts, answered, get_facts, json_answer
from inline.histogram import LatencyHistogram
from inline.ratelimit import GcraLimiter, format_rate_limit, parse_rate_limit, retry_after_header
from inline.recognized_sources import RecognizedSources

logger = logging.getLogger(__name__)
_ALLOW_KEY = ALLOW_KEY_PREFIX.encode()

#: Seconds between drains of the expiry heap.
EXPIRE_EVERY_S = 1.0
#: Longest wait for the consumer to close in ``done()``, seconds.
STOP_TIMEOUT_S = 3.0

#: The geo-IP hook: ``(asn, country)`` of a client address text, or None.
GeoLookup = Callable[[str], GeoInfo | None]


def blocked_body(active: Active) -> dict[str, str]:
    """JSON body of a 403 for ``active``."""
    return {"error": "blocked", "decision_id": active.id, "scope": active.scope,
            "expires_at": active.expires_at.isoformat()}


def load_geo_lookup(spec: str) -> GeoLookup | None:
    """The geo hook named ``"module:function"`` (None for ``""``).
    Raises ``ValueError`` if it cannot be imported or is not callable."""
    spec = spec.strip()
    if not spec:
        return None
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"geo lookup {spec!r} is not 'module:function'")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"geo lookup {spec!r}: {exc}") from None
    if not callable(fn):
        raise ValueError(f"geo lookup {spec!r} is not callable")
    return fn


@dataclass(frozen=True)
class FeedSpec:
    """Parsed options of the decisions feed."""

    bootstrap_servers: str
    topic: str
    fetch_max_wait_ms: int
    fail_open: bool


@dataclass
class EnforcementStats:
    """Counters for metrics: messages applied, deletions, malformed messages
    skipped, messages ignored for lack of a valid signature (``unsigned``: none;
    ``bad_signature``: one that does not verify), broker (re)connection
    failures, requests blocked (403), throttled (429), answered a challenge (``challenged``)
    and let through by a solved one (``challenges_passed``; ``challenges_passed_unshared``
    while the shared ledger was away, not counted in the former), geo-hook failures, requests
    let through by an allow entry (``allow_listed``); ``delivery``: seconds from a decision
    message's publication (its Kafka timestamp) to its application here, for the messages
    applied after the start-up read of the topic."""

    applied: int = 0
    deleted: int = 0
    malformed: int = 0
    unsigned: int = 0
    bad_signature: int = 0
    reconnects: int = 0
    blocked: int = 0
    throttled: int = 0
    challenged: int = 0
    challenges_passed: int = 0
    challenges_passed_unshared: int = 0
    geo_errors: int = 0
    allow_listed: int = 0
    delivery: LatencyHistogram = field(default_factory=LatencyHistogram)


class Enforcement:
    """Addon: follows the decisions topic in the background and enforces bans (403) and
    throttles (429) on requests (503 before the first load when fail-closed).

    Options: ``gatewatch_bootstrap_servers``, ``gatewatch_topic_decisions``,
    ``gatewatch_fetch_max_wait_ms``, ``gatewatch_decisions_fail_open``,
    ``gatewatch_decision_prefix_v4``/``_v6``, ``gatewatch_throttle_rate_limit``,
    ``gatewatch_username_throttle_rate_limit``,
    ``gatewatch_challenge_hmac_key``/``_cost``/``_ttl_s``, ``gatewatch_challenge_redis_url``
    (used solutions shared by the gateways, :mod:`inline.challenge_ledger`), ``gatewatch_geo_lookup``,
    ``gatewatch_decision_signing_key``/``_kid``,
    ``gatewatch_decision_verify_keys`` (JSON ``{kid: secret}``),
    ``gatewatch_decision_signing_required``. Runs before authentication refuses (the
    principal is identified in ``requestheaders``), so banned clients learn
    nothing about their keys. :attr:`after_login` is a second addon, to be
    placed after :class:`inline.login.Login`, that enforces ``username``
    decisions.
    """

    def __init__(self) -> None:
        self.store = DecisionStore()
        self.allowed = DecisionStore(allow=True)
        self.stats = EnforcementStats()
        self.spec: FeedSpec | None = None
        self.loaded = False
        self._newest: dict[int, int] = {}   # decisions partition -> newest offset read
        s = load_settings()
        self.throttle: GcraLimiter | None = None
        self.username_throttle: GcraLimiter | None = None
        self.recognized = RecognizedSources()
        self.challenges = ChallengeGate(ChallengeSpec(s.challenge_hmac_key, s.challenge_cost, s.challenge_ttl_s))
        self.ledger: RedisSolutionLedger | None = None
        self.geo_lookup: GeoLookup | None = None
        self.after_login = LoginStage(self)
        self.verifier = DecisionVerifier.from_settings(s)
        self._task: asyncio.Task | None = None

    def load(self, loader) -> None:
        s = load_settings()
        brokers.add_bootstrap_option(loader)
        loader.add_option("gatewatch_topic_decisions", str, s.topic_decisions,
                          "Topic the gateway reads decisions from.")
        loader.add_option("gatewatch_fetch_max_wait_ms", int, s.gateway_fetch_max_wait_ms,
                          "Longest wait of a decisions fetch, ms (Tansu does not wake waiting fetches).")
        loader.add_option("gatewatch_decisions_fail_open", bool, s.decisions_fail_open,
                          "Before decisions are loaded: pass requests (true) or answer 503 (false).")
        loader.add_option("gatewatch_decision_prefix_v4", int, s.decision_prefix_v4,
                          "Length of an IPv4 prefix decision given as a bare address.")
        loader.add_option("gatewatch_decision_prefix_v6", int, s.decision_prefix_v6,
                          "Length of an IPv6 prefix decision given as a bare address.")
        loader.add_option("gatewatch_throttle_rate_limit", str, format_rate_limit(s.throttle_rate_limit),
                          "Limit of a client under a throttle decision, 'RATE:BURST'.")
        loader.add_option("gatewatch_username_throttle_rate_limit", str,
                          format_rate_limit(s.username_throttle_rate_limit),
                          "Limit of the login attempts on an account under a username throttle from "
                          "all unrecognized sources together, 'RATE:BURST', or 'off' (per address).")
        loader.add_option("gatewatch_geo_lookup", str, s.geo_lookup,
                          "'module:function' giving (asn, country) of a client IP, for asn/country decisions.")
        loader.add_option("gatewatch_decision_signing_key", str, s.decision_signing_key,
                          "Secret key (HMAC-SHA256) decision messages must be signed with.")
        loader.add_option("gatewatch_decision_signing_kid", str, s.decision_signing_kid,
                          "Key id of gatewatch_decision_signing_key.")
        loader.add_option("gatewatch_challenge_hmac_key", str, s.challenge_hmac_key,
                          "Secret (HMAC) that signs the challenges of challenge decisions.")
        loader.add_option("gatewatch_challenge_cost", int, s.challenge_cost,
                          "Iterated-SHA-256 rounds per counter of a challenge (work ~256 x cost).")
        loader.add_option("gatewatch_challenge_ttl_s", int, s.challenge_ttl_s,
                          "Seconds a challenge stays solvable.")
        loader.add_option("gatewatch_challenge_redis_url", str, s.challenge_redis_url or "",
                          "redis:// URL where gateways share the challenge solutions they accepted "
                          "(each passes once in all); empty: each gateway remembers its own.")
        loader.add_option("gatewatch_decision_verify_keys", str, json.dumps(s.decision_verify_keys),
                          "Further accepted decision keys, JSON {kid: secret} (key rotation).")
        loader.add_option("gatewatch_decision_signing_required", bool, s.decision_signing_required,
                          "Ignore unsigned decision messages (false accepts them; bad signatures never).")

    def configure(self, updated: set[str]) -> None:
        o = ctx.options
        for name, attr in (("gatewatch_throttle_rate_limit", "throttle"),
                           ("gatewatch_username_throttle_rate_limit", "username_throttle")):
            if name in updated:
                try:
                    spec = parse_rate_limit(getattr(o, name))
                except ValueError as exc:
                    raise exceptions.OptionsError(f"{name}: {exc}") from exc
                if spec is None and attr == "throttle":
                    raise exceptions.OptionsError(f"{name} cannot be 'off'")
                setattr(self, attr, None if spec is None else GcraLimiter(spec))
        if "gatewatch_challenge_redis_url" in updated:
            self._configure_ledger(o.gatewatch_challenge_redis_url.strip())
        if updated & {"gatewatch_challenge_hmac_key", "gatewatch_challenge_cost", "gatewatch_challenge_ttl_s",
                      "gatewatch_challenge_redis_url"}:
            try:
                self.challenges = ChallengeGate(ChallengeSpec(
                    o.gatewatch_challenge_hmac_key, o.gatewatch_challenge_cost, o.gatewatch_challenge_ttl_s),
                    self.ledger)
            except ValueError as exc:
                raise exceptions.OptionsError(str(exc)) from exc
        if "gatewatch_geo_lookup" in updated:
            try:
                self.geo_lookup = load_geo_lookup(o.gatewatch_geo_lookup)
            except ValueError as exc:
                raise exceptions.OptionsError(str(exc)) from exc
        signing = {"gatewatch_decision_signing_key", "gatewatch_decision_signing_kid",
                   "gatewatch_decision_verify_keys", "gatewatch_decision_signing_required"}
        if updated & signing:
            try:
                extra = json.loads(o.gatewatch_decision_verify_keys or "{}")
                if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
                    raise ValueError("gatewatch_decision_verify_keys must be a JSON object of strings")
                self.verifier = DecisionVerifier.from_config(
                    o.gatewatch_decision_signing_kid, o.gatewatch_decision_signing_key, extra,
                    o.gatewatch_decision_signing_required)
            except ValueError as exc:
                raise exceptions.OptionsError(f"decision signing: {exc}") from exc
        if updated & {"gatewatch_decision_prefix_v4", "gatewatch_decision_prefix_v6"}:
            v4, v6 = o.gatewatch_decision_prefix_v4, o.gatewatch_decision_prefix_v6
            if not (0 <= v4 <= 32 and 0 <= v6 <= 128):
                raise exceptions.OptionsError("decision prefix lengths must be within 0..32 (v4), 0..128 (v6)")
            if (v4, v6) != (self.store.prefix_v4, self.store.prefix_v6):
                if len(self.store) or len(self.allowed):
                    raise exceptions.OptionsError("decision prefix lengths cannot change once decisions are loaded")
                self.store, self.allowed = DecisionStore(v4, v6), DecisionStore(v4, v6, allow=True)
        names = {"gatewatch_bootstrap_servers", "gatewatch_topic_decisions",
                 "gatewatch_fetch_max_wait_ms", "gatewatch_decisions_fail_open"}
        if not updated & names:
            return
        if not o.gatewatch_bootstrap_servers.strip():
            raise exceptions.OptionsError("gatewatch_bootstrap_servers must not be empty")
        if not o.gatewatch_topic_decisions.strip():
            raise exceptions.OptionsError("gatewatch_topic_decisions must not be empty")
        if not 0 <= o.gatewatch_fetch_max_wait_ms <= 60_000:
            raise exceptions.OptionsError("gatewatch_fetch_max_wait_ms must be within 0..60000")
        old = self.spec
        self.spec = FeedSpec(o.gatewatch_bootstrap_servers.strip(), o.gatewatch_topic_decisions.strip(),
                             o.gatewatch_fetch_max_wait_ms, o.gatewatch_decisions_fail_open)
        if self._task is not None and old is not None and (
                old.bootstrap_servers, old.topic) != (self.spec.bootstrap_servers, self.spec.topic):
            self._task.cancel()
            v4, v6 = self.store.prefix_v4, self.store.prefix_v6
            self.store, self.allowed = DecisionStore(v4, v6), DecisionStore(v4, v6, allow=True)
            self.loaded = False
            self._newest = {}
            self._task = asyncio.create_task(self._follow(self.spec), name="gatewatch decisions feed")

    def _configure_ledger(self, url: str) -> None:
        """Replace the shared ledger of used solutions by one on ``url`` (none if empty).
        Raises ``OptionsError`` for a URL that is not ``redis://``, ``rediss://`` or ``unix://``."""
        if url and not url.startswith(("redis://", "rediss://", "unix://")):
            raise exceptions.OptionsError(f"gatewatch_challenge_redis_url: {url!r} is not redis://, rediss:// or unix://")
        if (self.ledger.spec.url if self.ledger else "") == url:
            return
        old = self.ledger
        try:
            self.ledger = RedisSolutionLedger(ledger_spec(url)) if url else None
        except ValueError as exc:  # a URL redis-py cannot parse
            raise exceptions.OptionsError(f"gatewatch_challenge_redis_url: {exc}") from exc
        if old is not None:
            try:
                asyncio.get_running_loop().create_task(old.close())
            except RuntimeError:  # no loop yet (load time): it never connected
                pass

    def running(self) -> None:
        brokers.quiet_aiokafka_errors()
        if self._task is None and self.spec is not None:
            self._task = asyncio.create_task(self._follow(self.spec), name="gatewatch decisions feed")

    async def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await asyncio.wait_for(self._task, STOP_TIMEOUT_S)
            except (asyncio.CancelledError, asyncio.TimeoutError):
                pass
            self._task = None
        if self.ledger is not None:
            await self.ledger.close()

    def geo(self, facts: FlowFacts) -> GeoInfo | None:
        """``(asn, country)`` of the client — only while asn/country decisions exist.

        From the facts the geo addon (:mod:`inline.geo`) recorded, else from the
        geo hook; None without data, or when the hook raises (counted)."""
        if not (self.store.has_geo or self.allowed.has_geo):
            return None
        if facts.asn is not None or facts.country is not None:
            return facts.asn, facts.country
        if self.geo_lookup is None or not facts.client_ip:
            return None
        try:
            return self.geo_lookup(facts.client_ip)
        except Exception as exc:  # a broken hook must not break requests: no data (counted)
            self.stats.geo_errors += 1
            logger.warning("geo lookup failed for a client: %s: %s", type(exc).__name__, exc)
            return None

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Enforce the decision matching ``flow``, if any. Returns an awaitable (mitmproxy
        awaits a hook's awaitable) only when a solved challenge is checked with the
        shared ledger; every other request is judged synchronously."""
        facts = get_facts(flow)
        if facts is None or answered(flow) or flowtags.allow_listed(flow):
            return None
        if not self.loaded and self.spec is not None and not self.spec.fail_open:
            json_answer(flow, 503, {"error": "unavailable", "detail": "decisions not loaded yet"},
                        "decision", {"Retry-After": "1"})
            return
        if not len(self.store) and not len(self.allowed):
            return
        now = time.time()
        geo = self.geo(facts)
        if len(self.allowed) and next(self.allowed.candidates(
                now, client_ip=facts.client_ip, principal=facts.principal, geo=geo), None) is not None:
            self.stats.allow_listed += 1
            flowtags.mark_allow_listed(flow)   # so rate limiting and the login stage skip it too
            return
        active = self.store.match(now, client_ip=facts.client_ip, principal=facts.principal, geo=geo)
        return None if active is None else self.enforce(flow, facts, active, now)

    def enforce(self, flow: http.HTTPFlow, facts: FlowFacts, active: Active, now: float) -> Awaitable[None] | None:
        """Answer ``flow`` for decision ``active``: 403 for a ban; for a challenge, 403 with
        a challenge unless the request carries a solved one; for a throttle, 429 once the
        client exceeds the throttle limit (else the request passes). Returns what
        :meth:`challenge` returns, else None."""
        if active.action == "ban":
            self.stats.blocked += 1
            facts.decision_id = active.id
            flowtags.mark_blocked(flow, active.scope)
            retry = max(1, math.ceil(active.expires - now))
            json_answer(flow, 403, blocked_body(active), "decision", {"Retry-After": str(retry)})
            return
        recognized = active.scope == "username" and bool(facts.username_hash) and self.recognized.recognized(
            facts.username_hash, facts.client_ip, now)
        if active.action == "challenge":
            return None if recognized else self.challenge(flow, facts, active, now)
        if active.scope == "username" and self.username_throttle is not None and not recognized:
            limiter, bucket = self.username_throttle, active.key()   # the account, from any unrecognized source
        else:
            limiter, bucket = self.throttle, f"{active.key()}|{facts.client_ip}"
        if limiter is None:
            return
        facts.decision_id = active.id
        wait = limiter.hit(bucket, time.monotonic())
        if wait > 0:
            self.stats.throttled += 1
            flowtags.mark_blocked(flow, "throttle")
            header = retry_after_header(wait)
            json_answer(flow, 429, {"error": "rate_limited", "scope": "throttle", "decision_id": active.id,
                                    "retry_after_s": int(header)}, "rate_limit", {"Retry-After": header})

    def challenge(self, flow: http.HTTPFlow, facts: FlowFacts, active: Active, now: float) -> Awaitable[None] | None:
        """Let ``flow`` through if it carries a solved challenge (the header is removed before
        the upstream sees it), else answer 403 with a fresh challenge (:mod:`inline.challenge`).
        With a shared ledger, a solution is claimed in Redis first: the returned awaitable
        does that (None when there is nothing to claim)."""
        solution = flow.request.headers.pop(SOLUTION_HEADER, None)
        if solution and self.challenges.ledger is not None:
            return self._challenge_shared(flow, facts, active, now, solution)
        self._answer_challenge(flow, facts, active, now, self.challenges.check(solution, now))
        return None

    async def _challenge_shared(self, flow: http.HTTPFlow, facts: FlowFacts, active: Active, now: float,
                                solution: str) -> None:
        verdict = await self.challenges.check_shared(solution, now)
        if not answered(flow):   # the flow was not killed while Redis was asked
            self._answer_challenge(flow, facts, active, now, verdict)

    def _answer_challenge(self, flow: http.HTTPFlow, facts: FlowFacts, active: Active, now: float,
                          verdict: str) -> None:
        if verdict == "passed":
            self.stats.challenges_passed += 1
            return
        if verdict == "passed_unshared":
            self.stats.challenges_passed_unshared += 1
            return
        self.stats.challenged += 1
        facts.decision_id = active.id
        flowtags.mark_blocked(flow, "challenge")
        json_answer(flow, 403, {"error": "challenge_required", "decision_id": active.id, "scope": active.scope,
                                "solution": verdict, "solution_header": SOLUTION_HEADER,
                                "challenge": self.challenges.issue(now)},
                    "decision", {MITIGATED_HEADER: "challenge"})

    def apply(self, key: bytes | None, value: bytes | None, now: float, headers: Headers = None) -> bool:
        """Apply one decisions message with its record ``headers``, counting it; True if it
        was applied. One without a valid signature is counted (``unsigned`` /
        ``bad_signature``) and ignored; a malformed one is counted and skipped."""
        rejected = self.verifier.rejects(key, value, headers)
        if rejected is not None:
            if rejected == "unsigned":
                self.stats.unsigned += 1
                count = self.stats.unsigned
            else:
                self.stats.bad_signature += 1
                count = self.stats.bad_signature
            if count <= 10 or count % 1000 == 0:   # a flood of forged messages must not flood the log
                logger.warning("ignoring decision message with %s (key %r; %d so far)",
                               "no signature" if rejected == "unsigned" else "a bad signature", key, count)
            return False
        store = self.allowed if key is not None and key.startswith(_ALLOW_KEY) else self.store
        try:
            result = store.apply(key, value, now)
        except MalformedRecord as exc:
            self.stats.malformed += 1
            logger.warning("skipping malformed decision message (key %r): %s", key, exc)
            return False
        self.stats.applied += 1
        if result == "deleted":
            self.stats.deleted += 1
        return True

    async def _follow(self, spec: FeedSpec) -> None:
        """Read the decisions topic from the beginning, then follow it; reconnect forever.
        Once the start-up read is done, each applied message read for the first time (not
        re-read after a reconnection) has its delay since publication counted in
        ``stats.delivery`` (from the record's Kafka timestamp: the publisher's clock with the
        default CreateTime, so clock skew between hosts adds to it)."""
        last_expire = time.time()
        async for records, caught_up in decision_follow.follow(
                spec.bootstrap_servers, spec.topic, spec.fetch_max_wait_ms, "gatewatch-gateway-decisions",
                on_retry=self._feed_failed):
            now = time.time()
            for record in records:
                first_read = record.offset > self._newest.get(record.partition, -1)
                if first_read:
                    self._newest[record.partition] = record.offset
                applied = self.apply(record.key, record.value, now, record.headers)
                if applied and self.loaded and first_read and record.timestamp > 0:   # -1: no timestamp
                    self.stats.delivery.observe(max(0.0, now - record.timestamp / 1000.0))
            self.loaded = self.loaded or caught_up
            if now - last_expire >= EXPIRE_EVERY_S:
                self.store.expire(now)
                self.allowed.expire(now)
                last_expire = now

    def _feed_failed(self, exc: Exception) -> None:
        self.stats.reconnects += 1


class LoginStage:
    """Addon (second stage of :class:`Enforcement`): enforces ``username`` decisions.

    The username hash is known only once :class:`inline.login.Login` has read
    the login request's body in its ``request`` hook, after the first stage
    ran; so this stage goes right after ``Login`` in the addon list.
    """

    def __init__(self, enforcement: Enforcement) -> None:
        self.enforcement = enforcement

    def response(self, flow: http.HTTPFlow) -> None:
        """After :class:`inline.login.Login` read the outcome: a successful login makes its
        address a recognized source of the account (:mod:`inline.recognized_sources`)."""
        facts = get_facts(flow)
        if facts is not None and facts.login == "success" and facts.username_hash:
            self.enforcement.recognized.remember(facts.username_hash, facts.client_ip, time.time())

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Enforce the ``username`` decision matching ``flow``'s login attempt, if any (an
        awaitable as :meth:`Enforcement.request`)."""
        facts = get_facts(flow)
        if facts is None or not facts.username_hash or answered(flow) or flowtags.allow_listed(flow):
            return None
        store = self.enforcement.store
        if not store.count("username"):
            return None
        now = time.time()
        active = store.match(now, username_hash=facts.username_hash)
        return None if active is None else self.enforcement.enforce(flow, facts, active, now)
