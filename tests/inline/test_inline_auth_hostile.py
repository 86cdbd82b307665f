"""Hostile input to the pure bearer-token functions, property-based (hypothesis).

Random and malicious ``Authorization`` headers, JWTs (alg none, HS256 signed
with the RSA public key, expired, not yet valid, wrong audience or issuer,
unknown kid floods, garbage base64, huge tokens), key sets and introspection
answers: the functions never raise anything but their documented errors,
never accept a bad token, and agree with an independent model of the rules.
The same inputs against a real mitmdump are in test_inline_auth_gateway.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from auth_testkit import AUDIENCE, b64url, compact, jwks_document, make_keys, sign
from inline.bearer import MAX_TOKEN_BYTES, parse_authorization
from inline.introspection import IntrospectionError, parse_introspection_policy, parse_introspection_response
from inline.jwt_auth import (
    JwksCache,
    is_jws,
    JwksError,
    TokenRejected,
    parse_jwks,
    parse_jwt_policy,
    peek_header,
    select_key,
    verify_jwt,
)

ISSUER = "https://issuer.test"
KEYS = make_keys()
KEYSET = parse_jwks(jwks_document(*KEYS.values()), frozenset({"RS256", "PS256", "ES256", "EdDSA"}))
POLICY = parse_jwt_policy(jwks_url="https://issuer.test/jwks", issuer=ISSUER, audiences=[AUDIENCE],
                          algorithms=["RS256", "PS256", "ES256", "EdDSA"], leeway_s=30)
NOW = float(int(time.time()))

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def verify(token: str):
    """The whole pure path of the gateway for one token; returns the verdict status and detail."""
    try:
        header = peek_header(token, POLICY.algorithms)
    except TokenRejected as exc:
        return "invalid", str(exc)
    key = select_key(KEYSET, header.kid, header.alg)
    if key is None:
        return "invalid", "no key"
    verdict = verify_jwt(token, key, header.alg, POLICY, NOW)
    return verdict.status, verdict.detail


B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


# --- the Authorization header -----------------------------------------------------------


@PROPERTY
@given(st.lists(st.text(max_size=300), max_size=3))
@example(["Bearer " + "A" * (MAX_TOKEN_BYTES + 1)])
@example(["Bearer \x00\x01"])
@example(["Bearer\u3000tok"])
def test_authorization_header_never_raises(values):
    cred = parse_authorization(values)
    if cred.token is not None:
        assert len(values) == 1 and cred.present and cred.error is None
        assert 0 < len(cred.token) <= MAX_TOKEN_BYTES and cred.token.isascii()
        assert not any(c.isspace() for c in cred.token)
    else:
        assert cred.present == bool(cred.error)


@PROPERTY
@given(st.integers(min_value=MAX_TOKEN_BYTES + 1, max_value=200_000))
def test_huge_tokens_are_refused_before_parsing(size):
    cred = parse_authorization(["Bearer " + "a" * size])
    assert (cred.token, cred.error) == (None, "invalid_token")


# --- garbage and forged JWTs ------------------------------------------------------------


@PROPERTY
@given(st.text(max_size=400))
@example("..")
@example("e30.e30.e30")
@example("eyJhbGciOiJSUzI1NiJ9.." + "A" * 5000)
def test_random_text_is_never_accepted(token):
    is_jws(token)   # the router between JWT and introspection must not raise either
    status, _ = verify(token)
    assert status == "invalid"


@PROPERTY
@given(st.lists(st.text(alphabet=B64URL + "=+/.", max_size=120), min_size=1, max_size=6))
def test_garbage_base64_segments_are_never_accepted(segments):
    assert verify(".".join(segments))[0] == "invalid"


@PROPERTY
@given(header=st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit", "jku", "b64", "x5u", "zip"]),
                              json_values, max_size=5),
       payload=st.dictionaries(st.sampled_from(["iss", "aud", "sub", "exp", "nbf", "iat"]), json_values,
                               max_size=6),
       signature=st.binary(max_size=300))
def test_forged_headers_and_payloads_are_never_accepted(header, payload, signature):
    assert verify(compact(header, payload, signature))[0] == "invalid"


@PROPERTY
@given(alg=st.sampled_from(["none", "None", "NONE", "nOnE", "HS256", "HS384", "HS512", "hs256"]),
       secret=st.sampled_from(["pem", "der", "jwk", "empty"]),
       kid=st.sampled_from([KEYS["rsa"].kid, "ec-1", "ed-1", None]))
def test_alg_none_and_hmac_with_public_key_material_are_refused(alg, secret, kid):
    rsa = KEYS["rsa"]
    material = {"pem": rsa.public_pem, "der": base64.b64decode(b"".join(rsa.public_pem.splitlines()[1:-1])),
                "jwk": json.dumps(rsa.public_jwk).encode(), "empty": b""}[secret]
    header = {"alg": alg, "typ": "JWT", **({"kid": kid} if kid else {})}
    head, body = b64url(json.dumps(header).encode()), b64url(json.dumps(_claims()).encode())
    mac = b"" if alg.lower() == "none" else hmac.new(material, f"{head}.{body}".encode(), hashlib.sha256).digest()
    status, detail = verify(f"{head}.{body}.{b64url(mac)}")
    assert status == "invalid" and "not accepted" in detail


def _claims(**overrides):
    data = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "iat": NOW - 10, "exp": NOW + 300}
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def model_accepts(c: dict) -> bool:
    """An independent statement of the claim rules (RFC 7519 §4.1, leeway 30 s)."""
    def num(v):   # a finite JSON number (an infinite exp would never expire)
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    aud = c.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    sub = c.get("sub")
    return (num(c.get("exp")) and NOW < c["exp"] + 30
            and ("nbf" not in c or (num(c["nbf"]) and c["nbf"] <= NOW + 30))
            and ("iat" not in c or (num(c["iat"]) and c["iat"] <= NOW + 30))
            and c.get("iss") == ISSUER and AUDIENCE in auds
            and isinstance(sub, str) and 0 < len(sub) <= 256 and sub.isprintable())


times = st.one_of(st.none(), st.integers(min_value=-400, max_value=400).map(lambda d: NOW + d),
                  st.sampled_from(["soon", True, 1e400, [NOW]]))


@PROPERTY
@given(key=st.sampled_from(["rsa", "ec", "ed"]),
       exp=times, nbf=times, iat=times,
       iss=st.sampled_from([ISSUER, ISSUER + "/", "https://evil.test", None, 5]),
       aud=st.sampled_from([AUDIENCE, [AUDIENCE, "x"], ["x"], "x", None, [], AUDIENCE.upper()]),
       sub=st.one_of(st.sampled_from(["user-1", "", None, 7, "a\nb", "x" * 257]), st.text(max_size=12)))
def test_signed_tokens_are_accepted_exactly_when_the_claims_are_valid(key, exp, nbf, iat, iss, aud, sub):
    payload = {k: v for k, v in {"exp": exp, "nbf": nbf, "iat": iat, "iss": iss, "aud": aud,
                                 "sub": sub}.items() if v is not None}
    payload = json.loads(json.dumps(payload))   # 1e400 → Infinity and back, as a token carries it
    status, _ = verify(sign(KEYS[key], payload))
    assert (status == "ok") == model_accepts(payload)


VALID = sign(KEYS["rsa"], _claims())


@PROPERTY
@given(position=st.integers(min_value=0, max_value=len(VALID) - 1),
       char=st.sampled_from(B64URL + "."))
def test_a_changed_character_never_yields_another_accepted_token(position, char):
    mutated = VALID[:position] + char + VALID[position + 1:]
    status, _ = verify(mutated)
    if status == "ok":   # only possible if the change did not change the decoded bytes (base64 slack bits)
        assert [_decode(s) for s in mutated.split(".")] == [_decode(s) for s in VALID.split(".")]


def _decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


@PROPERTY
@given(kid=st.one_of(st.text(max_size=300), st.integers(), st.none(), st.lists(st.text(), max_size=2)))
def test_wrong_or_odd_kids_are_refused(kid):
    token = sign(KEYS["rsa"], _claims()) if kid is None else compact({"alg": "RS256", "kid": kid}, _claims(), b"x")
    status, _ = verify(token)
    assert status == ("ok" if kid is None else "invalid")


# --- key sets and introspection answers -------------------------------------------------


@PROPERTY
@given(document=st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
                          st.lists(st.dictionaries(st.sampled_from(["kty", "kid", "use", "alg", "n", "e", "crv",
                                                                    "x", "y", "key_ops"]),
                                                   json_values, max_size=6), max_size=5)
                          .map(lambda keys: json.dumps({"keys": keys}).encode())))
def test_hostile_key_sets_raise_only_jwks_error(document):
    try:
        keyset = parse_jwks(document, POLICY.algorithms)
    except JwksError:
        return
    assert all(e.verifiers for e in keyset.entries)


INTROSPECTION = parse_introspection_policy(url="https://as.test/introspect", client_id="gw", client_secret="s")


@PROPERTY
@given(body=st.one_of(st.binary(max_size=100), json_values.map(lambda v: json.dumps(v).encode()),
                      st.dictionaries(st.sampled_from(["active", "sub", "exp", "nbf", "client_id", "username"]),
                                      json_values, max_size=6).map(lambda d: json.dumps(d).encode())))
def test_hostile_introspection_answers(body):
    try:
        verdict = parse_introspection_response(body, INTROSPECTION, NOW)
    except IntrospectionError:
        return
    if verdict.status == "ok":
        assert json.loads(body)["active"] is True and verdict.principal


# --- unknown-kid floods -----------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(st.floats(min_value=0, max_value=3), st.text(min_size=1, max_size=10)),
                      min_size=1, max_size=300),
       floor=st.integers(min_value=1, max_value=30))
def test_unknown_kid_floods_fetch_at_most_once_per_floor(steps, floor):
    now = [0.0]
    fetches = [0]

    async def fetch() -> bytes:
        fetches[0] += 1
        return jwks_document(KEYS["rsa"])

    cache = JwksCache(fetch, POLICY.algorithms, ttl_s=3600, min_refetch_s=floor, clock=lambda: now[0],
                      warn=lambda *a: None)

    async def go():
        for advance, kid in steps:
            now[0] += advance
            await cache.lookup(f"bogus-{kid}", "RS256")
    asyncio.run(go())
    assert fetches[0] <= 1 + now[0] // floor


@pytest.mark.parametrize("size", [MAX_TOKEN_BYTES, 64 * 1024])
def test_big_but_wellformed_tokens_cost_no_key_fetch(size):
    token = compact({"alg": "RS256", "kid": "bogus"}, {"pad": "A" * size})
    assert verify(token) == ("invalid", "no key")
