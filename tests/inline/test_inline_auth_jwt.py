"""JWT bearer tokens (inline/jwt_auth.py): pure verification, the key-set cache,
and the verifier against the real authorization server process."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from auth_testkit import (
    AUDIENCE,
    auth_server,
    claims,
    compact,
    forge_hs256,
    jwks_document,
    make_keys,
    rsa_key,
    sign,
    unsigned,
)
from inline.jwt_auth import (
    JwksCache,
    JwksError,
    JwksUnavailable,
    JwtVerifier,
    TokenRejected,
    check_claims,
    is_jws,
    parse_jwks,
    parse_jwt_policy,
    peek_header,
    select_key,
    usable_key,
    verify_jwt,
)

ISSUER = "https://issuer.test"
ALGS = frozenset({"RS256", "PS256", "ES256", "EdDSA"})


@pytest.fixture(scope="module")
def keys():
    return make_keys()


def policy(**overrides):
    args = {"jwks_url": "https://issuer.test/jwks", "issuer": ISSUER, "audiences": [AUDIENCE],
            "algorithms": sorted(ALGS), "leeway_s": 30}
    args.update(overrides)
    return parse_jwt_policy(**args)


def verify_now(token: str, keyset, pol=None, now: float | None = None):
    """Pure path: header → key → signature and claims."""
    pol = pol or policy()
    header = peek_header(token, pol.algorithms)
    key = select_key(keyset, header.kid, header.alg)
    assert key is not None
    return verify_jwt(token, key, header.alg, pol, time.time() if now is None else now)


# --- options ----------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    ({"algorithms": ["none"]}, "none"),
    ({"algorithms": ["RS256", "HS256"]}, "HMAC"),
    ({"algorithms": ["hs512"]}, "HMAC"),
    ({"algorithms": ["XX1"]}, "unsupported"),
    ({"algorithms": []}, "at least one"),
    ({"issuer": " "}, "issuer"),
    ({"audiences": []}, "audience"),
    ({"jwks_url": "ftp://x/jwks"}, "jwks_url"),
    ({"jwks_url": "not a url"}, "jwks_url"),
    ({"leeway_s": -1}, "leeway_s"),
    ({"leeway_s": 301}, "leeway_s"),
    ({"jwks_ttl_s": 0}, "jwks_ttl_s"),
    ({"jwks_min_refetch_s": 0}, "jwks_min_refetch_s"),
    ({"jwks_ttl_s": 10, "jwks_min_refetch_s": 11}, "jwks_min_refetch_s"),
    ({"timeout_ms": 0}, "timeout_ms"),
    ({"principal_claim": ""}, "principal_claim"),
])
def test_policy_refuses_bad_options(overrides, message):
    with pytest.raises(ValueError, match=message):
        policy(**overrides)


def test_policy_normalizes():
    p = policy(audiences=[" a ", "", "b"], algorithms=["ES256", " RS256"], jwks_url=" http://127.0.0.1:1/jwks ",
               timeout_ms=1500)
    assert p.audiences == {"a", "b"} and p.algorithms == {"ES256", "RS256"}
    assert p.jwks_url == "http://127.0.0.1:1/jwks" and p.timeout_s == 1.5


# --- key sets ---------------------------------------------------------------------------


def test_parse_jwks_indexes_usable_keys(keys):
    ks = parse_jwks(jwks_document(*keys.values()), ALGS)
    rsa, ec_, ed = keys["rsa"], keys["ec"], keys["ed"]
    assert ks.knows(rsa.kid) and ks.knows("ec-1") and ks.knows("ed-1") and not ks.knows("nope")
    # An RSA JWK without "alg" serves every allowed RSA algorithm; a declared alg only itself.
    assert set(ks.by_kid[rsa.kid][0].verifiers) == {"RS256", "PS256"}
    assert set(ks.by_kid[ec_.kid][0].verifiers) == {"ES256"}
    assert set(ks.by_kid[ed.kid][0].verifiers) == {"EdDSA"}
    assert select_key(ks, rsa.kid, "ES256") is None          # key type must fit the algorithm
    assert select_key(ks, "ec-1", "ES256") is not None


@pytest.mark.parametrize("mutate", [
    lambda k: {**k, "use": "enc"},
    lambda k: {**k, "key_ops": ["encrypt"]},
    lambda k: {**k, "key_ops": "verify"},
    lambda k: {**k, "kty": "oct", "k": "c2VjcmV0"},
    lambda k: {**k, "kty": "XYZ"},
    lambda k: {**k, "kid": 7},
    lambda k: {**k, "kid": "k" * 300},
    lambda k: {**k, "alg": "HS256"},
    lambda k: {**k, "alg": "RS512"},                      # declared alg not on the allow-list
    lambda k: {**k, "n": "!!!"},
    lambda k: {key: v for key, v in k.items() if key != "n"},
    lambda k: ["not", "an", "object"],
])
def test_unusable_keys_are_skipped(keys, mutate):
    assert usable_key(mutate(keys["rsa"].public_jwk), ALGS) is None


def test_short_rsa_keys_and_private_members_are_not_used(keys):
    short = rsa_key("short", bits=1024)
    assert usable_key(short.public_jwk, ALGS) is None
    # Private members are ignored: only the public key is loaded.
    from jwt.algorithms import RSAAlgorithm
    private_jwk = {**RSAAlgorithm.to_jwk(keys["rsa"].private, as_dict=True), "kid": "priv"}
    assert usable_key(private_jwk, ALGS) is None           # its key_ops say "sign", not "verify"
    del private_jwk["key_ops"]
    entry = usable_key(private_jwk, ALGS)
    assert entry is not None
    assert not hasattr(entry.verifiers["RS256"].key, "private_numbers")


@pytest.mark.parametrize("document", [
    b"", b"not json", b"[]", b'{"keys": {}}', b'{"keys": []}', b'{"keys": [{"kty": "oct", "k": "AA"}]}',
    b"[" * 100_000, json.dumps({"keys": [{"kty": "RSA"}] * 101}).encode(), b" " * (1 << 20 + 1),
])
def test_bad_key_sets_raise(document):
    with pytest.raises(JwksError):
        parse_jwks(document, ALGS)


def test_select_key_without_kid(keys):
    only_rsa = parse_jwks(json.dumps({"keys": [{k: v for k, v in keys["rsa"].public_jwk.items() if k != "kid"}]})
                          .encode(), ALGS)
    assert select_key(only_rsa, None, "RS256") is not None
    both = parse_jwks(jwks_document(keys["rsa"], rsa_key("rsa-2")), ALGS)
    assert select_key(both, None, "RS256") is None     # ambiguous without a kid
    dup = parse_jwks(jwks_document(keys["rsa"], keys["rsa"]), ALGS)
    assert select_key(dup, keys["rsa"].kid, "RS256") is None


# --- tokens -----------------------------------------------------------------------------


@pytest.mark.parametrize("name, alg", [("rsa", "RS256"), ("rsa", "PS256"), ("ec", "ES256"), ("ed", "EdDSA")])
def test_valid_tokens_are_accepted(keys, name, alg):
    ks = parse_jwks(jwks_document(*keys.values()), ALGS)
    payload = claims(ISSUER, sub="user-42")
    verdict = verify_now(sign(keys[name], payload, alg), ks)
    assert (verdict.status, verdict.principal, verdict.expires_at) == ("ok", "user-42", payload["exp"])


def test_principal_claim_and_audience_list(keys):
    ks = parse_jwks(jwks_document(keys["rsa"]), ALGS)
    token = sign(keys["rsa"], claims(ISSUER, aud=["other", AUDIENCE], client_id="svc-7"))
    assert verify_now(token, ks, policy(principal_claim="client_id")).principal == "svc-7"
    assert verify_now(token, ks).principal == "user-alice"


def test_alg_none_and_hmac_confusion_are_refused(keys):
    rsa = keys["rsa"]
    ks = parse_jwks(jwks_document(rsa), ALGS)
    for token in (unsigned(rsa, claims(ISSUER)), unsigned(rsa, claims(ISSUER), alg="None"),
                  forge_hs256(rsa, claims(ISSUER))):
        with pytest.raises(TokenRejected) as exc:
            peek_header(token, ALGS)
        assert "not accepted" in str(exc.value)
        # Even if the header check were bypassed, no key would verify it.
        assert select_key(ks, rsa.kid, "HS256") is None and select_key(ks, rsa.kid, "none") is None
    # A signature made by a key of another type under a valid-looking header does not verify.
    ec_token = sign(keys["ec"], claims(ISSUER), "ES256", kid=rsa.kid)
    assert select_key(ks, rsa.kid, "ES256") is None
    # An RS256 token whose alg header was switched to PS256 fails the signature check.
    head, body, sig = sign(rsa, claims(ISSUER)).split(".")
    switched = ".".join([compact({"alg": "PS256", "kid": rsa.kid}, {}).split(".")[0], body, sig])
    assert verify_now(switched, ks).detail == "token signature does not verify"
    assert ec_token


@pytest.mark.parametrize("token, message", [
    ("abc", "not a signed JWT"),
    ("a.b.c.d.e", "JWE"),
    ("a.b.c", "malformed"),
    ("e30.e30.", "no algorithm"),                          # {} header
    (compact({"alg": "RS512"}, {}), "not allowed"),
    (compact({"alg": 5}, {}), "no algorithm"),
    (compact({"alg": "RS256", "crit": ["exp"]}, {}), "malformed|critical"),
    (compact({"alg": "RS256", "kid": 12}, {}), "malformed"),
    (compact({"alg": "RS256", "kid": "k" * 300}, {}), "key id"),
])
def test_peek_header_refusals(token, message):
    with pytest.raises(TokenRejected, match=message):
        peek_header(token, ALGS)


def test_peek_header_ignores_key_urls_in_the_token(keys):
    token = sign(keys["rsa"], claims(ISSUER), jku="http://evil.test/jwks", x5u="http://evil.test/x5u")
    assert peek_header(token, ALGS).kid == keys["rsa"].kid   # only the kid is used, never jku/x5u


@pytest.mark.parametrize("overrides, detail", [
    ({"exp": None}, "no valid expiry"),
    ({"exp": "soon"}, "no valid expiry"),
    ({"exp": True}, "no valid expiry"),
    ({"exp": 1_000 - 31}, "expired"),
    ({"nbf": 1_000 + 31}, "not valid yet"),
    ({"nbf": "x"}, "not valid yet"),
    ({"iat": 1_000 + 31}, "issue time"),
    ({"iss": "https://evil.test"}, "issuer"),
    ({"iss": None}, "issuer"),
    ({"aud": "other"}, "audience"),
    ({"aud": ["a", 3]}, "audience"),
    ({"aud": None}, "audience"),
    ({"sub": None}, "subject"),
    ({"sub": 42}, "subject"),
    ({"sub": ""}, "subject"),
    ({"sub": "x" * 257}, "subject"),
    ({"sub": "line\nbreak"}, "subject"),
])
def test_claims_refusals(overrides, detail):
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "exp": 1_000 + 60, "iat": 1_000, "nbf": 1_000}
    base.update(overrides)
    verdict = check_claims({k: v for k, v in base.items() if v is not None}, policy(), now=1_000)
    assert verdict.status == "invalid" and verdict.error == "invalid_token" and detail in verdict.detail


def test_leeway_is_applied_both_ways():
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u"}
    pol = policy(leeway_s=30)
    assert check_claims({**base, "exp": 1_000 - 29}, pol, now=1_000).status == "ok"
    assert check_claims({**base, "exp": 1_000 - 30}, pol, now=1_000).status == "invalid"
    assert check_claims({**base, "exp": 2_000, "nbf": 1_000 + 30}, pol, now=1_000).status == "ok"
    assert check_claims({**base, "exp": 2_000, "nbf": 1_000 + 31}, pol, now=1_000).status == "invalid"
    strict = policy(leeway_s=0)
    assert check_claims({**base, "exp": 1_000}, strict, now=1_000).status == "invalid"  # RFC 7519: before exp


def test_signature_of_another_key_is_refused(keys):
    rsa, other = keys["rsa"], rsa_key("rsa-other")
    ks = parse_jwks(jwks_document(rsa), ALGS)
    forged = sign(other, claims(ISSUER), kid=rsa.kid)   # right kid, wrong private key
    assert verify_now(forged, ks).detail == "token signature does not verify"
    head, body, sig = sign(rsa, claims(ISSUER)).split(".")
    tampered = ".".join([head, compact({}, claims(ISSUER, sub="admin")).split(".")[1], sig])
    assert verify_now(tampered, ks).status == "invalid"


def test_is_jws():
    assert is_jws(compact({"alg": "RS256"}, {}))
    assert not is_jws("opaque-token-without-dots")
    assert not is_jws("a.b.c") and not is_jws(compact({"typ": "JWT"}, {})) and not is_jws("....")


# --- the key-set cache ------------------------------------------------------------------


class FakeJwks:
    """An in-process key server for cache tests: counts fetches, can fail."""

    def __init__(self, document: bytes) -> None:
        self.document, self.fetches, self.fail = document, 0, False

    async def __call__(self) -> bytes:
        self.fetches += 1
        await asyncio.sleep(0)
        if self.fail:
            raise OSError("connection refused")
        return self.document


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_cache_refetches_unknown_kids_at_most_once_per_floor(keys):
    server, clock = FakeJwks(jwks_document(keys["rsa"])), Clock()
    cache = JwksCache(server, ALGS, ttl_s=300, min_refetch_s=10, clock=clock, warn=lambda *a: None)

    async def go():
        assert await cache.lookup(keys["rsa"].kid, "RS256") is not None
        assert server.fetches == 1
        for i in range(1000):                       # a flood of bogus kids within the floor
            assert await cache.lookup(f"bogus-{i}", "RS256") is None
        assert server.fetches == 1 and cache.stats.held == 1000
        clock.now += 10                             # floor passed: one refetch, then held again
        for i in range(100):
            await cache.lookup(f"bogus2-{i}", "RS256")
        assert server.fetches == 2
        # Rotation: a new kid appears on the server and is found after the floor.
        new = rsa_key("rsa-new")
        server.document = jwks_document(keys["rsa"], new)
        assert await cache.lookup("rsa-new", "RS256") is None      # still within the floor
        clock.now += 10
        assert await cache.lookup("rsa-new", "RS256") is not None
        assert server.fetches == 3
    asyncio.run(go())


def test_cache_ttl_and_stale_if_error(keys):
    server, clock = FakeJwks(jwks_document(keys["rsa"])), Clock()
    cache = JwksCache(server, ALGS, ttl_s=60, min_refetch_s=5, clock=clock, warn=lambda *a: None)

    async def go():
        await cache.lookup(keys["rsa"].kid, "RS256")
        clock.now += 59
        await cache.lookup(keys["rsa"].kid, "RS256")
        assert server.fetches == 1                   # within the TTL: no fetch
        clock.now += 1
        server.fail = True
        assert await cache.lookup(keys["rsa"].kid, "RS256") is not None   # stale keys kept on failure
        assert (server.fetches, cache.stats.failures) == (2, 1)
        await cache.lookup(keys["rsa"].kid, "RS256")
        assert server.fetches == 2                   # the floor also spaces retries
        clock.now += 5
        server.fail = False
        await cache.lookup(keys["rsa"].kid, "RS256")
        assert server.fetches == 3
    asyncio.run(go())


def test_cache_without_keys_is_unavailable_and_shares_fetches(keys):
    server, clock = FakeJwks(b"garbage"), Clock()
    cache = JwksCache(server, ALGS, ttl_s=60, min_refetch_s=5, clock=clock, warn=lambda *a: None)

    async def go():
        with pytest.raises(JwksUnavailable):
            await cache.lookup("k", "RS256")
        with pytest.raises(JwksUnavailable):
            await cache.lookup("k", "RS256")
        assert server.fetches == 1
        clock.now += 5
        server.document = jwks_document(keys["rsa"])
        # 50 concurrent lookups share one fetch in flight.
        found = await asyncio.gather(*(cache.lookup(keys["rsa"].kid, "RS256") for _ in range(50)))
        assert all(k is not None for k in found) and server.fetches == 2
    asyncio.run(go())


# --- the verifier against the real authorization server ---------------------------------


def test_verifier_against_the_auth_server(keys, tmp_path: Path):
    with auth_server(tmp_path / "as", keys["rsa"], keys["ec"]) as server:
        pol = parse_jwt_policy(jwks_url=f"{server.base}/jwks", issuer=server.issuer, audiences=[AUDIENCE],
                               algorithms=["RS256", "ES256"], jwks_min_refetch_s=1, jwks_ttl_s=60)
        verifier = JwtVerifier(pol)

        async def go():
            try:
                now = time.time()
                ok = await verifier.verify(sign(keys["rsa"], claims(server.issuer, sub="svc-a")), now)
                assert (ok.status, ok.principal) == ("ok", "svc-a")
                ok_ec = await verifier.verify(sign(keys["ec"], claims(server.issuer, sub="svc-b")), now)
                assert ok_ec.principal == "svc-b"
                assert server.stats()["jwks"] == 1     # one fetch served both
                wrong_iss = await verifier.verify(sign(keys["rsa"], claims("https://evil.test")), now)
                assert wrong_iss.detail == "token issuer is not accepted"
                # Rotation: a token signed by a new key is accepted once the server publishes it.
                new = rsa_key("rsa-rotated")
                server.publish(keys["rsa"], keys["ec"], new)
                await asyncio.sleep(1.05)              # past the refetch floor
                rotated = await verifier.verify(sign(new, claims(server.issuer, sub="svc-c")), time.time())
                assert (rotated.status, rotated.principal) == ("ok", "svc-c")
                assert server.stats()["jwks"] == 2
                # Bogus kids right after: held by the floor, no fetch.
                for i in range(30):
                    bogus = await verifier.verify(sign(new, claims(server.issuer), kid=f"bogus-{i}"), time.time())
                    assert bogus.detail == "no signing key matches the token"
                assert server.stats()["jwks"] <= 3
            finally:
                await verifier.close()
        asyncio.run(go())


def test_verifier_unavailable_when_the_key_server_fails(keys, tmp_path: Path):
    with auth_server(tmp_path / "as", keys["rsa"]) as server:
        server.faults(jwks_status=500)
        pol = parse_jwt_policy(jwks_url=f"{server.base}/jwks", issuer=server.issuer, audiences=[AUDIENCE],
                               algorithms=["RS256"], jwks_min_refetch_s=1)
        verifier = JwtVerifier(pol)

        async def go():
            try:
                token = sign(keys["rsa"], claims(server.issuer))
                verdict = await verifier.verify(token, time.time())
                assert verdict.status == "unavailable"
                server.faults(jwks_status=0)
                await asyncio.sleep(1.05)
                assert (await verifier.verify(token, time.time())).status == "ok"
                server.faults(jwks_status=500)         # an outage later: the cached keys keep working
                await asyncio.sleep(1.05)
                await verifier.warm()
                assert (await verifier.verify(token, time.time())).status == "ok"
            finally:
                await verifier.close()
        asyncio.run(go())
