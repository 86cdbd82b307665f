"""The three records every part of gatewatch exchanges: request event, detection, decision.

This module is the single source of their shape. The gateway writes
:class:`RequestEvent`, the workers read it and write :class:`Detection` and
:class:`Decision`, the gateway reads decisions back, and the ClickHouse
columns in ``storage/migrations`` follow these fields one for one.

Wire format: UTF-8 JSON objects (``model_dump_json``), one per Kafka message.
Timestamps are ISO 8601 in UTC on the wire and timezone-aware ``datetime``
in Python. Every record carries ``v`` (schema version); readers accept
unknown extra fields so that a newer writer does not break an older reader.

Parsing untrusted bytes goes through :func:`parse_request_event`,
:func:`parse_detection` and :func:`parse_decision`, which raise
:class:`MalformedRecord` (a ``ValueError``) so that consumers can count and
skip a bad message instead of crashing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import TzInfo

SCHEMA_VERSION = 1

#: Who produced the final answer to a request.
#: ``upstream`` — the protected API answered; the others are gateway answers.
AnsweredBy = Literal["upstream", "auth", "rate_limit", "decision", "bad_request", "error"]

#: Outcome of authentication (API key, JWT bearer token or introspected token).
#: ``public`` — the route needs no credential and none was sent;
#: ``unavailable`` — a bearer token could not be checked (no signing keys
#: yet, introspection endpoint down): answered 503, not counted as a bad credential.
AuthResult = Literal["ok", "missing", "invalid", "public", "unavailable"]

#: Outcome of a login attempt, read from the response of a configured login route.
LoginOutcome = Literal["success", "failure"]

#: What a decision applies to (see the decision protocol in DESIGN.md).
Scope = Literal["ip", "prefix", "principal", "username", "asn", "country"]

#: What a detection is about: any decision scope, plus ``route`` (a ``"METHOD
#: /template"`` series, e.g. a latency regression) and ``global`` (the whole
#: stream, e.g. a spike of failed logins). Only decision scopes get decisions.
DetectionScope = Literal["ip", "prefix", "principal", "username", "asn", "country", "route", "global"]

#: What a decision does against the requests it matches (the only actions a detector's
#: decision policy issues).
BlockAction = Literal["ban", "throttle", "challenge"]

#: What the gateway does to a request matching a decision: a :data:`BlockAction`, or
#: ``allow`` — an allow entry (``gatewatch allowlist``): the request is allow-listed, so
#: no decision blocks or throttles it and no rate limit applies, and the workers issue
#: no decision against its value.
Action = Literal["ban", "throttle", "challenge", "allow"]

#: Scopes an allow entry may have: those the gateway knows before it rate-limits
#: (``username`` is known only after the login body is read, so it has no allow entries).
ALLOW_SCOPES: tuple[str, ...] = ("ip", "prefix", "principal", "asn", "country")

#: Start of the Kafka key of an allow entry: ``allow:scope:value``. A ban keeps
#: ``scope:value``, so a ban and an allow entry for the same value both exist.
ALLOW_KEY_PREFIX = "allow:"

Severity = Literal["low", "medium", "high", "critical"]


class MalformedRecord(ValueError):
    """A Kafka message that is not a valid gatewatch record (bad JSON or fields)."""


def new_id() -> str:
    """Return a fresh random id: 32 lowercase hex characters (UUID4)."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """Current time as a timezone-aware UTC ``datetime`` (for I/O layers only;
    detectors receive their clock as an argument)."""
    return datetime.now(timezone.utc)


_ZERO = timedelta(0)


def _utc(value: datetime) -> datetime:
    # Naive datetimes are taken as UTC so that every timestamp compares.
    tz = value.tzinfo
    if tz is None:
        return value.replace(tzinfo=timezone.utc)
    # A fixed UTC offset of zero becomes the one `timezone.utc` (same instant, same offset,
    # same wire form): pydantic gives every parsed "Z" timestamp its own TzInfo object, which
    # made each comparison of two event times call both offsets (~380 ns instead of ~30 ns),
    # ts.timestamp() ~2.7 times slower, and left one more object per event to the garbage
    # collector. Zone-based tzinfos (DST rules) are left as they are.
    if tz is not timezone.utc and isinstance(tz, (TzInfo, timezone)) and tz.utcoffset(value) == _ZERO:
        return value.astimezone(timezone.utc)  # ~0.36 µs; value.replace(tzinfo=...) ~0.75 µs
    return value


#: A timestamp field: a naive value is taken as UTC, a zero offset is ``timezone.utc``.
#: Attached to the datetime fields only — a validator on every field ("*") cost ~1.5 µs
#: of the ~5 µs a request event takes to parse (measured with bench/pipeline.py's traffic).
UtcDatetime = Annotated[datetime, AfterValidator(_utc)]


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    v: int = SCHEMA_VERSION

    def to_json(self) -> bytes:
        """Serialise to the wire format (UTF-8 JSON bytes)."""
        return self.model_dump_json().encode()


class RequestEvent(_Record):
    """One request seen by the gateway, written once the request is answered.

    Never carries a secret: no API key, password, bearer token or raw
    username; the principal is the key *id*, the username a keyed hash.
    """

    event_id: str = Field(description="Random id (32 hex); also sent to the client as X-Request-Id.")
    ts: UtcDatetime = Field(description="When the gateway received the request (UTC).")
    client_ip: str = Field(description="Client address as text, IPv4 or IPv6.")
    method: str
    host: str
    path: str = Field(description="Raw request target as received, query string included.")
    route: str = Field(description="Route template, e.g. /users/{id}.")
    status: int = Field(description="HTTP status sent to the client.")
    latency_ms: float = Field(0.0, description="Upstream latency in ms (0 when the gateway answered).")
    bytes_in: int = Field(0, description="Request body size in bytes.")
    bytes_out: int = Field(0, description="Response body size in bytes.")
    principal: str = Field("", description="Authenticated principal (API key id or token subject), '' if none.")
    auth: AuthResult = "public"
    answered_by: AnsweredBy = "upstream"
    user_agent: str = ""
    login: LoginOutcome | None = Field(None, description="Set on login routes only.")
    username_hash: str | None = Field(None, description="Keyed hash (HMAC-SHA256, hex) of the login username.")
    decision_id: str | None = Field(None, description="The decision that blocked or throttled this request.")
    asn: int | None = Field(None, description="Autonomous system number of client_ip, if known (geo lookup).")
    country: str | None = Field(None, description="ISO 3166-1 alpha-2 country of client_ip, if known (geo lookup).")

    @property
    def epoch_s(self) -> float:
        """``ts`` as seconds since the Unix epoch (float)."""
        return self.ts.timestamp()


@dataclass(frozen=True, slots=True)
class PrincipalRequest:
    """The part of a :class:`RequestEvent` the per-principal detectors read (BOLA, geo
    anomalies, behaviour outliers): what the worker re-keys by principal
    (:mod:`streams.rekey`), ~150 bytes on the wire instead of ~460 for the whole
    event. The attributes mean what they mean on :class:`RequestEvent`; every such
    request was answered by the upstream. A plain dataclass, not a model: the
    re-keyed rows are checked by their reader (:func:`streams.rekey.unpack_principal`)
    and built without pydantic (~1.8 µs a row instead of ~9 µs to validate the event).
    """

    event_id: str
    ts: datetime
    client_ip: str
    method: str
    host: str
    path: str
    route: str
    status: int
    principal: str
    country: str | None = None
    asn: int | None = None
    answered_by: AnsweredBy = "upstream"

    @property
    def epoch_s(self) -> float:
        """``ts`` as seconds since the Unix epoch (float)."""
        return self.ts.timestamp()

    @classmethod
    def of(cls, event: RequestEvent) -> PrincipalRequest:
        """The projection of ``event``."""
        return cls(event.event_id, event.ts, event.client_ip, event.method, event.host, event.path,
                   event.route, event.status, event.principal, event.country, event.asn,
                   event.answered_by)


#: What the per-principal detectors take: a whole request event, or its projection.
ObservedRequest = RequestEvent | PrincipalRequest


class Detection(_Record):
    """A detector's finding: something suspicious about one scope value.

    ``evidence`` holds what a person needs to understand it: the window,
    the counts, the thresholds crossed, and ``sample_event_ids``.
    """

    detection_id: str = Field(default_factory=new_id)
    ts: UtcDatetime = Field(description="Event time at which the detector fired (UTC).")
    detector: str = Field(description="Detector name, e.g. credential_stuffing.")
    scope: DetectionScope
    value: str
    severity: Severity = "high"
    score: float = 1.0
    summary: str = ""
    evidence: dict[str, Any] = Field(default_factory=dict)
    sample_event_ids: list[str] = Field(default_factory=list)


class Decision(_Record):
    """What the gateway must do to requests matching ``scope``/``value`` until ``expires_at``.

    Published to ``gatewatch.decisions`` keyed by :meth:`key` (``scope:value``;
    ``allow:scope:value`` for an allow entry, ``action="allow"``, whose scope
    must be one of :data:`ALLOW_SCOPES`); a later message with the same key
    replaces it, a tombstone (null value) or an ``expires_at`` in the past
    deletes it. Raises ``ValidationError`` for an allow entry of another scope.
    """

    id: str = Field(default_factory=new_id)
    scope: Scope
    value: str
    action: Action = "ban"
    reason: str = ""
    detector: str = Field("", description="Detector name, or 'manual' for the CLI.")
    evidence: dict[str, Any] = Field(default_factory=dict)
    created_at: UtcDatetime
    expires_at: UtcDatetime
    origin: Literal["detector", "cli"] = "detector"
    detection_id: str | None = None

    @model_validator(mode="after")
    def _allow_scope(self) -> Decision:
        if self.action == "allow" and self.scope not in ALLOW_SCOPES:
            raise ValueError(f"an allow entry's scope must be one of {', '.join(ALLOW_SCOPES)}, not {self.scope}")
        return self

    def key(self) -> str:
        """The Kafka message key: ``scope:value``, or ``allow:scope:value`` for an allow entry."""
        if self.action == "allow":
            return allow_key(self.scope, self.value)
        return decision_key(self.scope, self.value)

    def active_at(self, now: datetime) -> bool:
        """True while ``now < expires_at``. ``created_at`` is not checked, so a
        decision stamped by a slightly fast clock applies at once."""
        return now < self.expires_at

    @property
    def ttl_s(self) -> float:
        """Lifetime in seconds (``expires_at - created_at``)."""
        return (self.expires_at - self.created_at).total_seconds()


def request_key(event: RequestEvent) -> bytes:
    """Kafka key of a request event (UTF-8 bytes): ``principal:<id>`` for an authenticated
    request that is not a login attempt, the client address (``client_ip``) otherwise.

    The key picks the partition (murmur2, Kafka's default partitioner), and each worker
    keeps the state of the keys of its partitions: every request of one principal lands
    on one partition, so BOLA is judged where the request is read, with no re-keying hop
    on its decision path (``streams/detect_requests.py``); every login attempt and every
    anonymous request of one address lands on one partition, so the per-IP
    credential-stuffing windows are whole. A login attempt keeps its address's key even
    when the client sent an API key (a mobile app's key on ``/login``): the login rules
    judge addresses, usernames and networks, not the app."""
    return caller_key(event.principal if event.login is None else "", event.client_ip)


def caller_key(principal: str, client_ip: str) -> bytes:
    """Kafka key of a caller's requests outside login attempts (UTF-8 bytes):
    ``principal:<id>`` when ``principal`` is set, else ``client_ip`` (an anonymous caller);
    see :func:`request_key`."""
    return f"principal:{principal}".encode() if principal else client_ip.encode()


def decision_key(scope: str, value: str) -> str:
    """Kafka key of the decision for ``scope``/``value``: ``"scope:value"``."""
    return f"{scope}:{value}"


def allow_key(scope: str, value: str) -> str:
    """Kafka key of the allow entry for ``scope``/``value``: ``"allow:scope:value"``."""
    return f"{ALLOW_KEY_PREFIX}{scope}:{value}"


def _parse(model: type[_Record], raw: bytes | str | dict[str, Any]) -> Any:
    try:
        if isinstance(raw, dict):
            return model.model_validate(raw)
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise MalformedRecord(f"malformed {model.__name__}: {exc.error_count()} error(s): "
                              f"{exc.errors()[0]['loc']} {exc.errors()[0]['msg']}") from exc


def parse_request_event(raw: bytes | str | dict[str, Any]) -> RequestEvent:
    """Parse one request event. Raises :class:`MalformedRecord` on bad input."""
    return _parse(RequestEvent, raw)


def parse_detection(raw: bytes | str | dict[str, Any]) -> Detection:
    """Parse one detection. Raises :class:`MalformedRecord` on bad input."""
    return _parse(Detection, raw)


def parse_decision(raw: bytes | str | dict[str, Any]) -> Decision:
    """Parse one decision. Raises :class:`MalformedRecord` on bad input."""
    return _parse(Decision, raw)
