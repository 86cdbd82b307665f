"""Settings shared by every gatewatch process, with embedded defaults.

Sources, highest priority first: keyword arguments, environment variables
prefixed ``GATEWATCH_`` (nested fields with ``__``, lists and objects as
JSON), then a TOML file named by ``GATEWATCH_CONFIG``, then the defaults
below. ``gatewatch up`` passes the same environment to every child process,
so the gateway, the worker and the CLI agree on ports, topics and paths.

Example::

    GATEWATCH_BOOTSTRAP_SERVERS=127.0.0.1:19092 \\
    GATEWATCH_CREDENTIAL_STUFFING__MIN_FAILURES=20 gatewatch up --upstream http://127.0.0.1:8000
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from gatewatch.events import BlockAction


class LoginRoute(BaseModel):
    """A login endpoint and how to read its outcome from the response.

    A response is a *failure* when its status is in ``failure_status`` or its
    body matches ``failure_body_regex`` (many APIs answer a failed login with
    200 and an error in the body); otherwise it is a *success* when its status
    is in ``success_status``; anything else (e.g. 400, 5xx) has no outcome.
    """

    method: str = "POST"
    path: str = Field(description="Path (no query string) of the login route, e.g. /login.")
    username_field: str = Field("username", description="JSON or form field holding the username.")
    success_status: list[int] = Field(default_factory=lambda: [200])
    failure_status: list[int] = Field(default_factory=lambda: [401, 403])
    failure_body_regex: str | None = Field(
        None, description="Regex searched in the response body; a match means failure.")


class JwtSettings(BaseModel):
    """JWT bearer tokens (RFC 7519) verified against a JWKS URL (see inline/jwt_auth.py).

    Only asymmetric algorithms may be allowed (``none`` and ``HS*`` are
    refused at start-up: the RS256/HS256 confusion). ``issuer`` and
    ``audience`` are required. Durations in seconds unless the name says ms.
    """

    jwks_url: str = Field(description="URL of the JWK Set (RFC 7517 §5); https outside tests.")
    issuer: str = Field(description="Expected 'iss' claim (exact match).")
    audience: list[str] = Field(description="Accepted 'aud' values; a token must name one.")
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "PS256", "ES256", "EdDSA"])
    leeway_s: int = Field(30, description="Clock skew allowed on exp, nbf and iat.")
    principal_claim: str = Field("sub", description="Claim that names the principal.")
    jwks_ttl_s: int = Field(300, description="How long a fetched key set is used before refetching.")
    jwks_min_refetch_s: int = Field(
        30, description="Floor between two key-set fetches (an unknown kid triggers one at most this often).")
    timeout_ms: int = Field(2000, description="Timeout of one key-set fetch.")


class IntrospectionSettings(BaseModel):
    """OAuth 2.0 token introspection (RFC 7662) for opaque bearer tokens (see inline/introspection.py)."""

    url: str = Field(description="Introspection endpoint; https outside tests.")
    client_id: str = Field(description="The gateway's client id at the authorization server.")
    client_secret: str = Field(repr=False, description="Its secret, sent with HTTP Basic (RFC 6749 §2.3.1).")
    principal_claims: list[str] = Field(
        default_factory=lambda: ["sub", "username", "client_id"],
        description="Response members tried in order for the principal.")
    audience: list[str] = Field(
        default_factory=list, description="If set, the response's 'aud' must name one of these.")
    cache_max_ttl_s: int = Field(
        300, description="Longest a positive answer is cached (never past the token's exp).")
    negative_ttl_s: int = Field(30, description="How long an inactive token's answer is cached.")
    cache_max_entries: int = Field(100_000, description="Bound of each cache (positive, negative).")
    max_in_flight: int = Field(32, description="Most introspection calls at once.")
    timeout_ms: int = Field(2000, description="Timeout of one introspection call.")


class RateLimit(BaseModel):
    """A GCRA / token-bucket limit: ``rate_per_s`` sustained, ``burst`` requests at once.

    Also written as the text ``"RATE:BURST"`` (``"5:10"``: 5 requests/s, bursts of 10).
    """

    rate_per_s: float = Field(gt=0, allow_inf_nan=False)
    burst: int = Field(ge=1)

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            rate, sep, burst = value.strip().partition(":")
            if not sep:
                raise ValueError(f"rate limit {value!r} is not 'RATE:BURST'")
            return {"rate_per_s": rate, "burst": burst}
        return value


class RateLimitPolicy(BaseModel):
    """One rate-limit policy of the gateway (see inline/ratelimit_policy.py).

    Every policy whose ``route`` and ``methods`` match a request applies to it
    (all of them must allow it). ``route``: ``"*"`` (every route), a route
    template (``"/login"``, ``"/users/{id}"``) or a prefix ending in ``*``
    (``"/admin/*"``). ``key``: what is counted — the client IP or the
    principal (requests without a principal are not counted by a principal
    policy). ``limit`` is the default limit; ``tiers`` maps an API key's tier
    to its own limit (``null`` = unlimited); a tier not listed gets
    ``limit`` or, without one, ``tiers["default"]``. ``per_route``: one
    counter per route template instead of one for all matched routes.
    ``name`` identifies the policy in the ``RateLimit-Policy``/``RateLimit``
    headers, 429 bodies and Redis keys: 1–32 of ``a-z 0-9 _ . -``.

    Example (JSON, as in ``GATEWATCH_RATE_LIMIT_POLICIES``)::

        [{"name": "login", "route": "/login", "methods": ["POST"], "key": "ip", "limit": "0.2:5"},
         {"name": "api", "route": "*", "key": "principal",
          "tiers": {"default": "100:200", "gold": "1000:2000"}}]
    """

    name: str
    route: str = "*"
    methods: list[str] = Field(default_factory=list, description="HTTP methods; empty = all.")
    key: Literal["ip", "principal"]
    limit: RateLimit | None = None
    tiers: dict[str, RateLimit | None] = Field(default_factory=dict)
    per_route: bool = False


class CircuitBreakerSettings(BaseModel):
    """Upstream circuit breaker per route template (see inline/circuit_breaker.py).

    Over the last ``window_s`` seconds, once at least ``min_calls`` upstream
    calls were made, the breaker opens when the share of failed calls (5xx,
    connection errors, or slower than ``slow_call_s``) reaches
    ``failure_rate``; after ``open_s`` seconds it lets ``half_open_probes``
    calls through and closes if they all succeed, else opens again.
    """

    enabled: bool = True
    window_s: float = 10.0
    min_calls: int = 20
    failure_rate: float = 0.5
    slow_call_s: float = 10.0
    open_s: float = 5.0
    half_open_probes: int = 3


class DetectorPolicySettings(BaseModel):
    """What the decision policy does with one detector's detections (detectors/decision_policy.py).

    ``shadow``: detections are recorded, no decision is issued. ``ban_ttl_s``: TTL in
    seconds of a first decision (ban or throttle); a repeat offender's TTL doubles up
    to ``max_ttl_s``, and one quiet for ``escalation_reset_s`` seconds starts over.
    ``actions`` maps a detection scope to the action taken; other scopes get no decision.
    """

    shadow: bool = False
    ban_ttl_s: float = Field(600.0, gt=0)
    max_ttl_s: float = Field(86_400.0, gt=0)
    escalation_reset_s: float = Field(86_400.0, ge=0)
    actions: dict[str, BlockAction] = Field(default_factory=dict)


class CredentialStuffingSettings(DetectorPolicySettings):
    """Thresholds of the credential-stuffing detector (see detectors/credential_stuffing.py):
    per IP (``window_s``), per prefix / ASN / username and the global failed-login
    spike (``aggregate_window_s``, ``spike_*``)."""

    window_s: float = 60.0
    min_failures: int = 10
    min_usernames: int = 5
    min_failure_share: float = 0.5
    aggregate_window_s: float = 600.0
    prefix_v4: int = 24
    prefix_v6: int = 64
    prefix_min_failures: int = 20
    prefix_min_usernames: int = 10
    prefix_min_ips: int = 5
    asn_min_failures: int = 50
    asn_min_usernames: int = 25
    asn_min_ips: int = 10
    username_min_failures: int = 10
    username_min_ips: int = 3
    spike_bucket_s: float = 60.0
    spike_min_failures: int = 30
    spike_factor: float = 3.0
    spike_ewma_lambda: float = 0.1
    spike_username_min_failures: int = 2
    spike_username_min_ips: int = 2
    # username: a challenge (inline/challenge.py) stops the tools of a distributed attack and
    # lets people through; "throttle" if the login's clients cannot solve challenges (a
    # per-address throttle left 598 of the harness's 600 distributed attempts answered).
    actions: dict[str, BlockAction] = Field(default_factory=lambda: {
        "ip": "ban", "prefix": "ban", "asn": "throttle", "username": "challenge"})


class BolaSettings(DetectorPolicySettings):
    """Thresholds of the BOLA enumeration detector (see detectors/bola.py)."""

    window_s: float = 300.0
    min_distinct_ids: int = 20
    min_denied_ids: int = 5
    min_denied_share: float = 0.5
    sequential_denied_share: float = 0.1
    min_sequential_run: int = 10
    sequential_max_step: int = 2
    known_ids_max: int = 10_000
    state_ttl_s: float = 3_600.0
    actions: dict[str, BlockAction] = Field(default_factory=lambda: {"principal": "ban", "ip": "ban"})


#: Autonomous systems of commercial VPN providers and hosting/VPS networks (VPN exits run on
#: them): an address there locates a server, not a person, so detectors/geo.py leaves its
#: requests out of impossible travel. Each entry is in X4BNet/lists_vpn
#: (https://github.com/X4BNet/lists_vpn), input/vpn/ASN.txt ("vpn") or
#: input/datacenter/ASN.txt ("datacenter"), with the list's note; the names are the AS
#: holders in the ASN data of ``gatewatch geo install`` (@ip-location-db/asn).
DEFAULT_ANONYMIZER_ASNS: tuple[int, ...] = (
    9009,    # M247 Europe SRL (vpn: "M247 (NordVPN)")
    60068,   # Datacamp Limited (datacenter: "CDN77 (Datacamp)")
    212238,  # Datacamp Limited (vpn: "Datacamp VPN")
    136787,  # PacketHub S.A. (vpn: "NordVPN")
    207137,  # PacketHub S.A. (vpn: "Packethub (NordVPN)")
    209854,  # Cyberzone S.A. (vpn: "Surfshark")
    60729,   # Stiftung Erneuerbare Freiheit (vpn: "Tor exit nodes")
    14061,   # DigitalOcean (datacenter)
    16276,   # OVH SAS (datacenter)
    24940,   # Hetzner Online GmbH (datacenter)
    63949,   # Akamai Technologies, formerly Linode (datacenter: "Linode")
    20473,   # The Constant Company, Vultr (datacenter: "Choopa")
)


class GeoAnomalySettings(DetectorPolicySettings):
    """Geo anomalies per principal (detectors/geo.py): impossible travel above
    ``max_speed_kmh`` over at least ``min_distance_km``, a new country after a
    ``learning_s`` learning period with ``min_learning_events`` located requests,
    and an optional per-principal country allow-list. Requests from
    ``anonymizer_asns`` (VPN and hosting networks, default
    :data:`DEFAULT_ANONYMIZER_ASNS`; ``[]`` judges every network) are left out
    of impossible travel. Alerts only by default (``actions`` empty): a VPN or a
    cloud network missing from that list still looks like travel."""

    enabled: bool = True
    max_speed_kmh: float = 900.0
    min_distance_km: float = 500.0
    learning_s: float = 7 * 86400.0
    min_learning_events: int = 20
    allowed_countries: dict[str, list[str]] = Field(default_factory=dict)
    state_ttl_s: float = 30 * 86400.0
    anonymizer_asns: list[int] = Field(
        default_factory=lambda: list(DEFAULT_ANONYMIZER_ASNS),
        description="ASNs of VPN and hosting networks whose requests are left out of impossible travel.")


class BehaviourSettings(DetectorPolicySettings):
    """The behaviour-outlier model (detectors/behaviour.py): the model file written by
    ``gatewatch train`` and read by the worker (none there: the agent does nothing),
    the score threshold (0..1, Isolation Forest score of Liu et al. 2008), how long
    after a 300 s window's end it closes (``allowed_lateness_s``) and how long an idle
    principal's history is kept (``state_ttl_s``). Shadow by default: detections are
    recorded, no decision is issued until a team turns ``shadow`` off."""

    shadow: bool = True
    model_path: Path = Path(".gatewatch/models/behaviour.skops")
    threshold: float = Field(0.7, gt=0, le=1)
    allowed_lateness_s: float = Field(5.0, ge=0)
    state_ttl_s: float = Field(7 * 86_400.0, gt=0)
    actions: dict[str, BlockAction] = Field(default_factory=lambda: {"principal": "throttle"})


class AlertingSettings(BaseModel):
    """Where detections and decisions are sent as alerts (streams/alertmanager.py):
    an Alertmanager (``alertmanager_url``, API v2) or a generic ``webhook_url``;
    neither set turns alerting off. A detection's alert resolves after
    ``detection_resolve_s``; only detections of ``min_severity`` or worse alert."""

    alertmanager_url: str | None = None
    webhook_url: str | None = None
    detection_resolve_s: float = 600.0
    min_severity: Literal["low", "medium", "high", "critical"] = "medium"


class LatencySettings(DetectorPolicySettings):
    """Thresholds of the latency-regression detector (see detectors/latency.py). Alert only:
    ``actions`` is empty, so it never produces a decision."""

    window_s: float = 60.0
    min_samples: int = 30
    baseline_windows: int = 5
    ewma_lambda: float = 0.2
    ratio: float = 1.5
    min_increase_ms: float = 20.0
    sigma_limit: float = 3.0
    bad_windows: int = 3
    good_windows: int = 2
    allowed_lateness_s: float = 5.0
    max_samples_per_window: int = 20_000
    seed: int = 0
    state_ttl_s: float = 86_400.0


class GeoSettings(BaseModel):
    """Where the geo-IP data lives (see gatewatch/geoip.py; ``gatewatch geo install`` fills ``dir``)."""

    dir: Path = Path("~/.cache/gatewatch/geo")
    gateway_enabled: bool = Field(True, description="Gateways record the client's country and ASN.")
    city_mmdb: Path | None = Field(
        None, description="A MaxMind GeoLite2/GeoIP2 City .mmdb to use instead of the DB-IP files.")


class GatewatchSettings(BaseSettings):
    """Every knob of the local stack. Field names are the env names without prefix."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWATCH_", env_nested_delimiter="__", extra="ignore")

    # Kafka
    bootstrap_servers: str = "127.0.0.1:9092"
    topic_requests: str = "gatewatch.requests"
    topic_detections: str = "gatewatch.detections"
    topic_decisions: str = "gatewatch.decisions"
    requests_partitions: int = 4
    # On the decision path every consumer waits at most this long for data
    # (Tansu quirk: it does not wake a waiting fetch when data arrives).
    fetch_max_wait_ms: int = 20
    # The gateway's decisions follower: the last hop of every decision loop. Its topic is
    # one small partition (a fetch is cheap for the broker); each gateway polls it every
    # 5 ms while idle, so a decision waits ~2.5 ms on average for the poll, not ~10.
    gateway_fetch_max_wait_ms: int = 5

    # Storage: chDB directory (embedded default) unless clickhouse_url is set.
    chdb_path: Path = Path(".gatewatch/data/chdb")
    clickhouse_url: str | None = None
    # Retention by ClickHouse TTL (storage/retention.py), applied at worker start-up.
    requests_ttl_days: int | None = Field(
        None, ge=1, description="Days a request row is kept (whole day partitions are dropped); "
                                "None keeps every row. Replay and explain read these rows.")
    rollups_ttl_days: int | None = Field(
        None, ge=1, description="Days the per-minute rollups are kept; None keeps them.")

    # Gateway
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    openapi_spec: Path | None = Field(
        None, description="OpenAPI 3 document (JSON/YAML) whose paths are the gateway's route templates.")
    route_patterns: list[str] = Field(
        default_factory=list, description="Route templates such as /books/{title} (after the OpenAPI paths).")
    idle_timeout_s: float = Field(
        60.0, gt=0, description="A client connection with no traffic either way for this long is closed "
                                "(idle keep-alive, or an upstream that stopped answering: 502, counted by "
                                "the circuit breaker). mitmproxy's own default is 600 s.")
    tls_cert: Path | None = Field(
        None, description="PEM with the private key and certificate chain the gateway presents to "
                          "clients (TLS termination; HTTP/2 by ALPN); None serves plain HTTP.")
    # Size limits (inline/size_limits.py). Sources of the defaults: nginx's
    # large_client_header_buffers (4 x 8 KiB), Apache's LimitRequestFields (100),
    # AWS API Gateway's payload quota (10 MB).
    max_header_bytes: int = Field(
        32 * 1024, ge=0, description="Longest HTTP/1 request head (request line and header fields), bytes: "
                                     "longer ones get 431 (414 if the request line alone is). 0: no limit.")
    max_header_fields: int = Field(
        100, ge=0, description="Most header fields in an HTTP/1 request; more get 431. 0: no limit.")
    max_body_bytes: int = Field(
        10 * 1024 * 1024, ge=0,
        description="Largest request or response body the gateway buffers, bytes (mitmproxy's "
                    "body_size_limit): a larger request gets 413 and never reaches the upstream, a "
                    "larger response becomes 502. 0: no limit.")
    upstream: str = "http://127.0.0.1:8000"
    keys_file: Path = Path(".gatewatch/keys.toml")
    api_key_header: str = "X-API-Key"
    public_routes: list[str] = Field(
        default_factory=lambda: ["/login", "/health"],
        description="Paths served without an API key (exact path or prefix ending in '*').")
    # Bearer tokens (Authorization: Bearer): off unless configured.
    jwt: JwtSettings | None = None
    introspection: IntrospectionSettings | None = None
    login_routes: list[LoginRoute] = Field(
        default_factory=lambda: [LoginRoute(path="/login")])
    username_hash_key: str = Field(
        "gatewatch-dev-username-key",
        description="Secret for the keyed username hash (HMAC-SHA256). Change it in production.")
    # Decision messages are signed (HMAC-SHA256 in a record header, see gatewatch/signing.py):
    # writers sign with decision_signing_key under decision_signing_kid; readers accept that
    # key and decision_verify_keys ({kid: secret}, e.g. the previous key while keys rotate).
    decision_signing_key: str = Field(
        "gatewatch-dev-decision-key", min_length=1, repr=False,
        description="Secret that signs and verifies decision messages. Change it in production.")
    decision_signing_kid: str = Field(
        "dev", pattern=r"^[A-Za-z0-9._-]{1,64}$", description="Key id sent with each signature.")
    decision_verify_keys: dict[str, str] = Field(
        default_factory=dict, repr=False,
        description="Further accepted verification keys by key id (key rotation).")
    decision_signing_required: bool = Field(
        True, description="Ignore unsigned decision messages (false: accept them, a migration aid; "
                          "a bad signature is refused either way).")
    # Rate limits (inline/ratelimit.py): the default policies "ip" (every request, per
    # client IP) and "principal" (per API key id / token subject; its limit follows the
    # key's tier through principal_rate_limit_tiers), then rate_limit_policies.
    ip_rate_limit: RateLimit = RateLimit(rate_per_s=50.0, burst=100)
    principal_rate_limit: RateLimit = RateLimit(rate_per_s=100.0, burst=200)
    principal_rate_limit_tiers: dict[str, RateLimit | None] = Field(
        default_factory=dict, description="Limit of the 'principal' policy per API-key tier (null: none).")
    rate_limit_policies: list[RateLimitPolicy] = Field(
        default_factory=list, description="Further policies per route × IP or principal, with tiers.")
    rate_limit_headers: bool = Field(
        True, description="Send RateLimit-Policy and RateLimit (draft-ietf-httpapi-ratelimit-headers).")
    rate_limit_redis_url: str | None = Field(
        None, description="redis:// URL of the shared limiter state; None: in-process state.")
    rate_limit_redis_timeout_ms: int = Field(
        5, ge=1, description="Longest wait for Redis per request before failing open/closed.")
    rate_limit_redis_prefix: str = "gatewatch:rl:"
    rate_limit_fail_open: bool = Field(
        True, description="Redis slow or down: let requests pass (true) or answer 503 (false).")
    event_queue_max: int = 100_000
    # Client identity: X-Forwarded-For / Forwarded are read only from these peers (CIDRs).
    trusted_proxies: list[str] = Field(default_factory=list)
    forwarded_header: str = Field(
        "x-forwarded-for", description="Header the trusted proxies write: x-forwarded-for or forwarded.")
    allow_list: list[str] = Field(default_factory=list, description="CIDRs never blocked or rate-limited.")
    deny_list: list[str] = Field(default_factory=list, description="CIDRs always answered 403.")
    # Decisions: prefix length of a prefix decision given as a bare address; throttle limit.
    decision_prefix_v4: int = 24
    decision_prefix_v6: int = 64
    throttle_rate_limit: RateLimit = RateLimit(rate_per_s=1.0, burst=5)   # per client address and decision
    # Username throttles per account (all unrecognized sources) instead of per address; None = off
    # (see inline/enforcement.py for the measured trade-off). E.g. "0.0333:3" (NIST SP 800-63B 5.2.2).
    username_throttle_rate_limit: RateLimit | None = None
    # Challenge decisions (inline/challenge.py): ALTCHA v2 proof-of-work puzzles.
    challenge_hmac_key: str = Field(
        "gatewatch-dev-challenge-key", min_length=1, repr=False,
        description="Secret that signs the gateway's challenges (HMAC). Change it in production.")
    challenge_cost: int = Field(
        500, ge=1, le=1_000_000,
        description="Iterated-SHA-256 rounds per counter a client tries (~256 x cost hashes to solve; "
                    "the gateway spends one derivation, ~0.5 ms at 500, to verify).")
    challenge_ttl_s: int = Field(300, ge=1, description="Seconds a challenge stays solvable.")
    challenge_redis_url: str | None = Field(
        None, description="redis:// URL where the gateways share the challenge solutions they accepted "
                          "(inline/challenge_ledger.py): each passes once in all of them. None: each "
                          "gateway process remembers its own.")
    decisions_fail_open: bool = True
    geo_lookup: str = Field("", description="'module:function' mapping a client IP to (asn, country) or None.")
    # Event spool: where events wait on disk while the broker is away.
    spool_dir: Path = Path(".gatewatch/spool")
    spool_max_bytes: int = 256 * 1024 * 1024
    spool_segment_bytes: int = 4 * 1024 * 1024
    events_fail_open: bool = True
    circuit_breaker: CircuitBreakerSettings = CircuitBreakerSettings()
    # Admin port: Prometheus metrics (0 = off).
    admin_host: str = "127.0.0.1"
    admin_port: int = 9464
    # The gateway's metrics and the worker's read API (gatewatch/admin_auth.py): bound to a
    # non-loopback address they refuse to start without this token; once set, every request
    # to them needs "Authorization: Bearer <admin_token>" (the CLI sends it).
    admin_token: str | None = Field(
        None, repr=False, description="Bearer token of the admin endpoints (at least 32 characters); "
                                      "required when admin_host or worker_web_host is not loopback.")

    # Geo-IP data (city .mmdb and ASN ranges), shared by gateway and worker
    geo: GeoSettings = GeoSettings()

    # Worker
    worker_web_host: str = "127.0.0.1"
    worker_web_port: int = 6066
    sink_batch_size: int = 5000   # chDB inserts cost ~16k rows/s in batches of 500, ~45k in 10k (measured)
    sink_batch_within_s: float = 0.5
    # Request events waiting for the store (in memory, after detection) before the
    # request consumer waits for the store to catch up (streams/sink.py RequestSink).
    sink_max_pending_events: int = 100_000
    # Batches ClickHouse refused wait here until it takes them (streams/store_spool.py);
    # None: next to the chDB directory (chdb_path/../store-spool). One worker per directory.
    store_spool_dir: Path | None = None
    store_spool_max_bytes: int = 1024 * 1024 * 1024
    # Request consumer (streams/requests_consumer.py): offsets and replay points are
    # committed this often (s), after the store and the producer have taken the batches.
    commit_interval_s: float = 1.0
    topic_checkpoints: str = "gatewatch.checkpoints"
    credential_stuffing: CredentialStuffingSettings = CredentialStuffingSettings()
    bola: BolaSettings = BolaSettings()
    latency: LatencySettings = LatencySettings()
    geo_anomaly: GeoAnomalySettings = GeoAnomalySettings()
    behaviour: BehaviourSettings = BehaviourSettings()
    alerting: AlertingSettings = AlertingSettings()
    # Detector agents: batch size and wait (s); short, since the decision path waits on it.
    detector_batch_size: int = 1000
    detector_batch_within_s: float = 0.005
    # Re-keyed streams (created with the others, see gatewatch/broker.py topic_partitions).
    topic_requests_by_principal: str = "gatewatch.requests.by_principal"
    topic_requests_by_route: str = "gatewatch.requests.by_route"
    topic_logins: str = "gatewatch.requests.logins"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config = os.environ.get("GATEWATCH_CONFIG")
        if config:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config)))
        return tuple(sources)

    def to_env(self) -> dict[str, str]:
        """These settings as ``GATEWATCH_*`` environment variables (for child processes)."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if value is not None:
                env[f"GATEWATCH_{name.upper()}"] = _env_text(value)
        return env


def _env_text(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def load_settings(**overrides: Any) -> GatewatchSettings:
    """Build settings from the environment (and ``GATEWATCH_CONFIG``), then ``overrides``."""
    return GatewatchSettings(**overrides)
