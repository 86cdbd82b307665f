"""Decision signatures (gatewatch/signing.py): HMAC-SHA256 (RFC 2104) in a record header."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timedelta, timezone

import pytest

from gatewatch import signing
from gatewatch.events import Decision
from gatewatch.settings import load_settings
from gatewatch.signing import (SIG_HEADER, DecisionSigner, DecisionVerifier, canonical_input, check_decision,
                               sign_decision, signature_header, verify_decision)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
KEYS = {"k1": b"secret-one"}


def message(value: str = "192.0.2.1") -> tuple[bytes, bytes]:
    d = Decision(scope="ip", value=value, created_at=NOW, expires_at=NOW + timedelta(minutes=10))
    return d.key().encode(), d.to_json()


def header(kid: str, key: bytes, mkey: bytes | None, value: bytes | None) -> list[tuple[str, bytes]]:
    return [signature_header(kid, key, mkey, value)]


def test_round_trip_and_header_format():
    mkey, value = message()
    name, raw = signature_header("k1", KEYS["k1"], mkey, value)
    assert name == SIG_HEADER == "gatewatch-sig"
    expected = hmac.new(b"secret-one", canonical_input(mkey, value), hashlib.sha256).hexdigest()
    assert raw == f"v1;kid=k1;hmac-sha256={expected}".encode()
    assert sign_decision(b"secret-one", mkey, value).hex() == expected
    assert check_decision(KEYS, mkey, value, [(name, raw)]) == "valid"
    assert verify_decision(KEYS, mkey, value, ((name, raw),))           # aiokafka: a tuple of pairs
    assert verify_decision(KEYS, mkey, value, {name: raw})              # a Faust event: a dict
    assert verify_decision(KEYS, mkey, value, [("other", b"x"), (name, raw.decode())])


def test_canonical_input_is_unambiguous():
    # The key/value boundary cannot be moved, and a tombstone is not an empty value.
    assert canonical_input(b"ab", b"c") != canonical_input(b"a", b"bc")
    assert canonical_input(b"k", None) != canonical_input(b"k", b"")
    assert canonical_input(None, b"v") != canonical_input(b"", b"v")
    assert canonical_input(b"k", b"v").startswith(b"gatewatch.decision.v1\n")


@pytest.mark.parametrize("what", ["value", "key", "mac", "kid", "format", "truncated"])
def test_tampering_is_detected(what: str):
    mkey, value = message()
    name, raw = signature_header("k1", KEYS["k1"], mkey, value)
    if what == "value":
        value = value.replace(b"192.0.2.1", b"192.0.2.9")
    elif what == "key":
        mkey = b"ip:192.0.2.9"
    elif what == "mac":
        raw = raw[:-1] + (b"0" if raw[-1:] != b"0" else b"1")
    elif what == "kid":
        raw = raw.replace(b"kid=k1", b"kid=k2")
    elif what == "format":
        raw = raw.replace(b"v1;", b"v2;")
    else:
        raw = raw[:-2]
    assert check_decision(KEYS, mkey, value, [(name, raw)]) == "bad_signature"
    assert not verify_decision(KEYS, mkey, value, [(name, raw)])


def test_unsigned_and_odd_headers():
    mkey, value = message()
    for headers in (None, [], (), {}, [("other", b"x")]):
        assert check_decision(KEYS, mkey, value, headers) == "unsigned"
    for raw in (b"", b"\xff\xfe", b"v1;kid=k1;hmac-sha256=zz", b"v1;kid=;hmac-sha256=" + b"0" * 64):
        assert check_decision(KEYS, mkey, value, [(SIG_HEADER, raw)]) == "bad_signature"
    # A header name that only looks alike does not count as a signature.
    assert check_decision(KEYS, mkey, value, [("Gatewatch-Sig", b"x")]) == "unsigned"


def test_wrong_key_and_unknown_kid():
    mkey, value = message()
    assert check_decision(KEYS, mkey, value, header("k1", b"guessed", mkey, value)) == "bad_signature"
    assert check_decision(KEYS, mkey, value, header("k9", b"secret-one", mkey, value)) == "bad_signature"


def test_tombstone_cannot_be_forged():
    mkey, value = message()
    signed_ban = header("k1", KEYS["k1"], mkey, value)
    assert check_decision(KEYS, mkey, None, signed_ban) == "bad_signature"     # the ban's signature
    empty = header("k1", KEYS["k1"], mkey, b"")
    assert check_decision(KEYS, mkey, None, empty) == "bad_signature"          # an empty value's
    other = header("k1", KEYS["k1"], b"ip:192.0.2.9", None)
    assert check_decision(KEYS, mkey, None, other) == "bad_signature"          # another key's tombstone
    assert check_decision(KEYS, mkey, None, []) == "unsigned"
    assert check_decision(KEYS, mkey, None, header("k1", KEYS["k1"], mkey, None)) == "valid"


def test_key_rotation_with_two_keys():
    mkey, value = message()
    old, new = DecisionSigner("2025", b"old-secret"), DecisionSigner("2026", b"new-secret")
    both = DecisionVerifier.from_config("2026", "new-secret", {"2025": "old-secret"})
    only_new = DecisionVerifier.from_config("2026", "new-secret")
    assert both.check(mkey, value, old.headers(mkey, value)) == "valid"
    assert both.check(mkey, value, new.headers(mkey, value)) == "valid"
    assert only_new.check(mkey, value, old.headers(mkey, value)) == "bad_signature"   # old key retired
    # Two signature headers (a writer mid-rotation): one valid one is enough.
    assert only_new.check(mkey, value, old.headers(mkey, value) + new.headers(mkey, value)) == "valid"


def test_verifier_required_and_migration_mode():
    mkey, value = message()
    strict = DecisionVerifier(KEYS)
    lax = DecisionVerifier(KEYS, required=False)
    wrong = header("k1", b"guessed", mkey, value)
    assert strict.rejects(mkey, value, None) == "unsigned"
    assert lax.rejects(mkey, value, None) is None                     # accepted while migrating
    assert strict.rejects(mkey, value, wrong) == lax.rejects(mkey, value, wrong) == "bad_signature"
    good = header("k1", KEYS["k1"], mkey, value)
    assert strict.rejects(mkey, value, good) is None and lax.rejects(mkey, value, good) is None


def test_constant_time_compare_is_used(monkeypatch: pytest.MonkeyPatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)
    monkeypatch.setattr(signing.hmac, "compare_digest", spy)
    mkey, value = message()
    assert verify_decision(KEYS, mkey, value, header("k1", KEYS["k1"], mkey, value))
    assert not verify_decision(KEYS, mkey, value, header("k1", b"guessed", mkey, value))
    assert len(calls) == 2 and all(len(a) == len(b) == 32 for a, b in calls)


def test_from_settings_and_validation():
    s = load_settings(decision_signing_key="prod-secret", decision_signing_kid="p1",
                      decision_verify_keys={"p0": "older"})
    signer, verifier = DecisionSigner.from_settings(s), DecisionVerifier.from_settings(s)
    assert (signer.kid, signer.key) == ("p1", b"prod-secret")
    assert dict(verifier.keys) == {"p1": b"prod-secret", "p0": b"older"} and verifier.required
    assert "prod-secret" not in repr(s) and "prod-secret" not in repr(signer) + repr(verifier)
    defaults = load_settings()
    assert defaults.decision_signing_required and defaults.decision_signing_key  # a dev key by default
    mkey, value = message()
    assert verifier.check(mkey, value, signer.headers(mkey, value)) == "valid"
    with pytest.raises(ValueError):
        DecisionSigner("bad kid", b"x")
    with pytest.raises(ValueError):
        DecisionSigner("k", b"")
    with pytest.raises(ValueError):
        DecisionVerifier({})
    with pytest.raises(ValueError):
        sign_decision(b"", mkey, value)
    with pytest.raises(ValueError):
        load_settings(decision_signing_kid="no spaces")
    with pytest.raises(ValueError):
        load_settings(decision_signing_key="")
