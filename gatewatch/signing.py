"""Authenticated decision messages: an HMAC-SHA256 signature in a Kafka record header.

Anyone who can write to ``gatewatch.decisions`` could otherwise ban any
client. Every producer of decisions (the worker, ``gatewatch decisions
add|delete``, benches, tests) therefore signs each message, and every
reader (the gateway, the CLI, the worker's sink and alerts, the demo)
ignores and counts a message whose signature is missing or wrong.

Signature: HMAC (RFC 2104) with SHA-256 over a canonical input that binds
the Kafka message key and the value, and marks a tombstone (null value)
differently from any value, so that neither a decision nor a deletion can
be forged or moved to another ``scope:value`` key::

    b"gatewatch.decision.v1\\n" || field(message_key) || field(value)
    field(None)  = 0x00
    field(bytes) = 0x01 || len(bytes) as 8 bytes big-endian || bytes

It travels in a record header (Kafka record headers, KIP-82, supported by
aiokafka, kafka-python and Faust) named :data:`SIG_HEADER`, whose value is
ASCII text::

    v1;kid=<key id>;hmac-sha256=<64 lower-case hex digits>

The key id (1–64 of ``A-Z a-z 0-9 . _ -``) names the key that signed, so
keys can rotate: readers accept every key of a ``{kid: secret}`` map (the
current signing key plus ``decision_verify_keys``). Rotation: add the new
key to every reader's ``decision_verify_keys``, then switch the writers'
``decision_signing_key``/``decision_signing_kid``; keep the old key accepted
as long as decisions it signed may still be live in the topic (the gateway
re-reads the whole topic at start-up), i.e. at least the longest decision
TTL after the switch.

Comparison uses :func:`hmac.compare_digest` (constant time).

What this does not stop: replaying a message that a legitimate writer
signed earlier. The signed value carries its own ``expires_at``, so a
replayed ban lasts no longer than it was first meant to, and only hits a
``scope:value`` that was banned before; a replayed signed tombstone (or
expired decision) can lift a current ban on that same key early.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

#: Name of the record header carrying the signature.
SIG_HEADER = "gatewatch-sig"
#: Version tag of the header value and of the canonical input.
VERSION = "v1"
_DOMAIN = b"gatewatch.decision.v1\n"
_KID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HEADER = re.compile(r"v1;kid=([A-Za-z0-9._-]{1,64});hmac-sha256=([0-9a-f]{64})")

#: Outcome of checking one message: a valid signature, none at all, or one that does not verify
#: (wrong or unknown key, tampered key/value, garbled header).
Verdict = Literal["valid", "unsigned", "bad_signature"]

#: Record headers as the Kafka clients give them: a sequence of ``(name, value)`` pairs
#: (aiokafka, kafka-python, a Faust message) or a mapping (a Faust event's ``headers``).
Headers = Iterable[tuple[str, Any]] | Mapping[str, Any] | None


def _field(data: bytes | None) -> bytes:
    if data is None:
        return b"\x00"
    return b"\x01" + len(data).to_bytes(8, "big") + bytes(data)


def canonical_input(message_key: bytes | None, value: bytes | None) -> bytes:
    """The bytes the MAC is computed over (see the module docstring)."""
    return _DOMAIN + _field(message_key) + _field(value)


def sign_decision(key: bytes, message_key: bytes | None, value: bytes | None) -> bytes:
    """HMAC-SHA256 (RFC 2104) with secret ``key`` of one decisions message: its Kafka
    ``message_key`` and ``value`` (None for a tombstone). Returns the 32-byte MAC."""
    if not key:
        raise ValueError("decision signing key must not be empty")
    return hmac.new(key, canonical_input(message_key, value), hashlib.sha256).digest()


def check_kid(kid: str) -> str:
    """``kid`` if it is a valid key id (1–64 of ``A-Z a-z 0-9 . _ -``), else ``ValueError``."""
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise ValueError(f"decision key id {kid!r} must be 1-64 of A-Z a-z 0-9 . _ -")
    return kid


def signature_header(kid: str, key: bytes, message_key: bytes | None,
                     value: bytes | None) -> tuple[str, bytes]:
    """The ``(SIG_HEADER, b"v1;kid=…;hmac-sha256=…")`` record header for one message."""
    mac = sign_decision(key, message_key, value).hex()
    return SIG_HEADER, f"{VERSION};kid={check_kid(kid)};hmac-sha256={mac}".encode("ascii")


def _signature_values(headers: Headers) -> list[bytes]:
    if not headers:
        return []
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    out = []
    for pair in pairs:
        try:
            name, raw = pair
        except (TypeError, ValueError):
            continue
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        if name != SIG_HEADER:
            continue
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "replace")
        out.append(bytes(raw) if isinstance(raw, (bytes, bytearray, memoryview)) else b"")
    return out


def check_decision(keys: Mapping[str, bytes], message_key: bytes | None, value: bytes | None,
                   headers: Headers) -> Verdict:
    """Whether a decisions message carries a valid signature by one of ``keys`` ({kid: secret}).

    ``"unsigned"``: no :data:`SIG_HEADER` header; ``"bad_signature"``: one or more, none
    valid (unknown kid, wrong key, tampered key or value, unparsable header); else
    ``"valid"``. Never raises on odd input."""
    found = _signature_values(headers)
    if not found:
        return "unsigned"
    for raw in found:
        try:
            match = _HEADER.fullmatch(raw.decode("ascii"))
        except UnicodeDecodeError:
            continue
        if match is None:
            continue
        secret = keys.get(match.group(1))
        if not secret:
            continue
        expected = sign_decision(secret, message_key, value)
        if hmac.compare_digest(expected, bytes.fromhex(match.group(2))):
            return "valid"
    return "bad_signature"


def verify_decision(keys: Mapping[str, bytes], message_key: bytes | None, value: bytes | None,
                    headers: Headers) -> bool:
    """True when the message has a valid signature by one of ``keys`` (see :func:`check_decision`)."""
    return check_decision(keys, message_key, value, headers) == "valid"


@dataclass(frozen=True)
class DecisionSigner:
    """Signs decisions messages with one key (``kid``, secret ``key``)."""

    kid: str
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        check_kid(self.kid)
        if not self.key:
            raise ValueError("decision signing key must not be empty")

    @classmethod
    def from_settings(cls, settings: Any) -> DecisionSigner:
        """The signer of ``settings`` (``decision_signing_kid``, ``decision_signing_key``)."""
        return cls(settings.decision_signing_kid, settings.decision_signing_key.encode("utf-8"))

    def headers(self, message_key: bytes | None, value: bytes | None) -> list[tuple[str, bytes]]:
        """Record headers to send with this message (a list, as kafka-python requires)."""
        return [signature_header(self.kid, self.key, message_key, value)]


@dataclass(frozen=True)
class DecisionVerifier:
    """Checks decisions messages against the accepted ``keys`` ({kid: secret}).

    ``required`` False (a migration aid) accepts unsigned messages; a signature
    that is present but does not verify is refused either way.
    """

    keys: Mapping[str, bytes] = field(repr=False)
    required: bool = True

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("at least one decision verification key is needed")
        for kid, secret in self.keys.items():
            check_kid(kid)
            if not secret:
                raise ValueError(f"decision verification key {kid!r} is empty")

    @classmethod
    def from_settings(cls, settings: Any) -> DecisionVerifier:
        """The verifier of ``settings``: the signing key and every ``decision_verify_keys`` entry."""
        return cls.from_config(settings.decision_signing_kid, settings.decision_signing_key,
                               settings.decision_verify_keys, settings.decision_signing_required)

    @classmethod
    def from_config(cls, kid: str, key: str, verify_keys: Mapping[str, str] | None = None,
                    required: bool = True) -> DecisionVerifier:
        """A verifier accepting ``kid``/``key`` and ``verify_keys`` ({kid: secret}, text)."""
        keys = {k: v.encode("utf-8") for k, v in (verify_keys or {}).items()}
        keys[kid] = key.encode("utf-8")
        return cls(keys, required)

    def check(self, message_key: bytes | None, value: bytes | None, headers: Headers) -> Verdict:
        """:func:`check_decision` with these keys."""
        return check_decision(self.keys, message_key, value, headers)

    def rejects(self, message_key: bytes | None, value: bytes | None, headers: Headers) -> str | None:
        """Why the message must be ignored (``"unsigned"`` or ``"bad_signature"``), or None
        when it is accepted (valid, or unsigned while signatures are not required)."""
        verdict = self.check(message_key, value, headers)
        if verdict == "valid" or (verdict == "unsigned" and not self.required):
            return None
        return verdict
