"""Bearer tokens in the authentication addon: the Authorization header (RFC 6750),
challenges, problem answers (RFC 9457), precedence with API keys, options —
driven with mitmproxy's test helpers against the real authorization server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from auth_testkit import auth_server, claims, make_keys, sign, unsigned
from gatewatch.keys import add_key
from inline.authentication import Authentication
from inline.bearer import MAX_TOKEN_BYTES, bearer_challenge, parse_authorization
from inline.flowstate import PROBLEM_JSON, get_facts, problem_body
from inline.routes import Routes
from inline_testkit import make_flow, run_flow


# --- the header -------------------------------------------------------------------------


@pytest.mark.parametrize("values, expected", [
    ([], (False, None, None)),
    (["Basic dXNlcjpwdw=="], (False, None, None)),
    (["Bearer abc.DEF-_~+/=="], (True, "abc.DEF-_~+/==", None)),
    (["bearer   tok  "], (True, "tok", None)),
    (["BEARER\ttok"], (True, "tok", None)),
    (["Bearer"], (True, None, "invalid_request")),
    (["Bearer    "], (True, None, "invalid_request")),
    (["Bearer a b"], (True, None, "invalid_request")),
    (["Bearer a=b"], (True, None, "invalid_request")),    # '=' only as trailing padding
    (["Bearer tök"], (True, None, "invalid_request")),
    (["Bearer \udcff\udcfe"], (True, None, "invalid_request")),
    (["Bearer a", "Bearer b"], (True, None, "invalid_request")),
    (["Basic x", "Bearer b"], (True, None, "invalid_request")),
    (["Bearer " + "a" * (MAX_TOKEN_BYTES + 1)], (True, None, "invalid_token")),
    (["Bearertoken"], (False, None, None)),               # another scheme name, not ours
])
def test_parse_authorization(values, expected):
    cred = parse_authorization(values)
    assert (cred.present, cred.token, cred.error) == expected
    assert bool(cred.detail) == bool(cred.error)


def test_bearer_challenge():
    assert bearer_challenge("gatewatch") == 'Bearer realm="gatewatch"'
    assert bearer_challenge("gatewatch", "invalid_token", 'bad "quote" \\ and\nnewline') == (
        'Bearer realm="gatewatch", error="invalid_token", error_description="bad quote  andnewline"')


def test_problem_body():
    body = problem_body(429, "slow down", "rate_limited", {"scope": "ip"})
    assert body == {"type": "about:blank", "title": "Too Many Requests", "status": 429, "detail": "slow down",
                    "error": "rate_limited", "scope": "ip"}
    with pytest.raises(ValueError):
        problem_body(403, "x", "blocked", {"status": 200})


# --- the addon --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys():
    return make_keys()


@pytest.fixture(scope="module")
def server(tmp_path_factory, keys):
    with auth_server(tmp_path_factory.mktemp("as"), keys["rsa"], keys["ec"]) as s:
        yield s


@pytest.fixture
def keys_file(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "keys.toml"
    return path, add_key(path, "key_alice", "alice")


def options(server, keys_path: Path, jwt: bool = True, introspection: bool = True, **extra) -> dict:
    opts = {"gatewatch_keys_file": str(keys_path), "gatewatch_public_routes": ["/health"]}
    if jwt:
        j = server.jwt_settings(jwks_min_refetch_s=1)
        opts.update(gatewatch_jwt_jwks_url=j.jwks_url, gatewatch_jwt_issuer=j.issuer,
                    gatewatch_jwt_audience=j.audience, gatewatch_jwt_jwks_min_refetch_s=1)
    if introspection:
        i = server.introspection_settings()
        opts.update(gatewatch_introspection_url=i.url, gatewatch_introspection_client_id=i.client_id,
                    gatewatch_introspection_client_secret=i.client_secret,
                    gatewatch_introspection_timeout_ms=500)
    opts.update(extra)
    return opts


def drive(opts: dict, *requests: tuple[str, dict]):
    """Run each (path, headers) request through Routes + Authentication; return the flows."""
    async def go():
        routes, addon = Routes(), Authentication()
        with taddons.context(routes, addon) as tctx:
            tctx.configure(addon, **opts)
            flows = [await run_flow(tctx, [routes, addon], make_flow(path, headers=headers))
                     for path, headers in requests]
            await addon.done()
            return flows, addon
    return asyncio.run(go())


def test_jwt_and_opaque_tokens_authenticate(server, keys, keys_file):
    keys_path, raw = keys_file
    jwt_token = sign(keys["rsa"], claims(server.issuer, sub="user-jwt"))
    opaque = server.issue(sub="user-opaque")
    machine = server.issue()
    (a, b, c, d), _ = drive(options(server, keys_path),
                            ("/users/1", {"Authorization": f"Bearer {jwt_token}"}),
                            ("/users/1", {"Authorization": f"Bearer {opaque}"}),
                            ("/users/1", {"Authorization": f"bearer {machine}"}),
                            ("/users/1", {"X-API-Key": raw, "Authorization": "Basic dXNlcjpwdw=="}))
    assert [f.response.status_code for f in (a, b, c, d)] == [200, 200, 200, 200]
    assert [(get_facts(f).auth, get_facts(f).principal) for f in (a, b, c, d)] == [
        ("ok", "user-jwt"), ("ok", "user-opaque"), ("ok", "app"), ("ok", "key_alice")]


def test_refusals_are_problem_json_with_rfc6750_challenges(server, keys, keys_file):
    keys_path, raw = keys_file
    expired = sign(keys["rsa"], claims(server.issuer, exp=1_000_000, iat=999_000, nbf=None))
    (bad, none, both, missing, wrong_key), addon = drive(
        options(server, keys_path),
        ("/users/1", {"Authorization": f"Bearer {expired}"}),
        ("/users/1", {"Authorization": f"Bearer {unsigned(keys['rsa'], claims(server.issuer))}"}),
        ("/users/1", {"Authorization": f"Bearer {expired}", "X-API-Key": raw}),
        ("/users/1", {}),
        ("/users/1", {"X-API-Key": "gw_wrong"}))
    for flow in (bad, none, both, missing, wrong_key):
        assert flow.response.status_code == 401
        assert flow.response.headers["Content-Type"] == PROBLEM_JSON
        body = json.loads(flow.response.content)
        assert body["type"] == "about:blank" and body["title"] == "Unauthorized" and body["status"] == 401
        assert body["error"] == "unauthorized" and body["detail"] == get_facts(flow).auth_detail
        assert get_facts(flow).answered_by == "auth" and get_facts(flow).principal == ""
        assert expired not in flow.response.text and raw not in flow.response.text
    assert bad.response.headers.get_all("WWW-Authenticate") == [
        'Bearer realm="gatewatch", error="invalid_token", error_description="token has expired"']
    assert json.loads(bad.response.content)["auth_error"] == "invalid_token"
    assert "alg none" in json.loads(none.response.content)["detail"]
    assert 'error="invalid_request"' in both.response.headers["WWW-Authenticate"]
    assert missing.response.headers.get_all("WWW-Authenticate") == [
        'ApiKey realm="gatewatch", header="X-API-Key"', 'Bearer realm="gatewatch"']
    assert "auth_error" not in json.loads(missing.response.content)   # RFC 6750 §3.1: no code without credentials
    assert wrong_key.response.headers.get_all("WWW-Authenticate") == ['ApiKey realm="gatewatch", header="X-API-Key"']
    assert addon.refused == 5 and addon.failures["token has expired"] == 1


def test_public_routes_and_other_schemes(server, keys, keys_file):
    keys_path, _ = keys_file
    (basic, bad_token), _ = drive(options(server, keys_path),
                                  ("/health", {"Authorization": "Basic dXNlcjpwdw=="}),
                                  ("/health", {"Authorization": "Bearer not-a-known-token"}))
    assert basic.response.status_code == 200 and get_facts(basic).auth == "public"
    assert bad_token.response.status_code == 401      # a credential sent to a public route is still checked


def test_routing_between_jwt_and_introspection(server, keys, keys_file):
    keys_path, _ = keys_file
    jwt_token = sign(keys["rsa"], claims(server.issuer, sub="user-jwt"))
    opaque = server.issue(sub="user-opaque")
    # Introspection only: a JWT is introspected too (this server does not know it: inactive).
    (j1, o1), _ = drive(options(server, keys_path, jwt=False),
                        ("/users/1", {"Authorization": f"Bearer {jwt_token}"}),
                        ("/users/1", {"Authorization": f"Bearer {opaque}"}))
    assert (j1.response.status_code, get_facts(j1).auth_detail) == (401, "token is not active")
    assert get_facts(o1).principal == "user-opaque"
    # JWT only: an opaque token is refused without any call.
    server.reset()
    (j2, o2), _ = drive(options(server, keys_path, introspection=False),
                        ("/users/1", {"Authorization": f"Bearer {jwt_token}"}),
                        ("/users/1", {"Authorization": f"Bearer {opaque}"}))
    assert get_facts(j2).principal == "user-jwt"
    assert (o2.response.status_code, get_facts(o2).auth_detail) == (401, "token is not a signed JWT")
    assert server.stats().get("introspect", 0) == 0


def test_bearer_off_leaves_authorization_alone(server, keys_file):
    keys_path, raw = keys_file
    (flow,), _ = drive(options(server, keys_path, jwt=False, introspection=False),
                       ("/users/1", {"X-API-Key": raw, "Authorization": "Bearer whatever for upstream"}))
    assert flow.response.status_code == 200 and get_facts(flow).principal == "key_alice"


def test_authorization_server_outage_is_503_not_401(server, keys_file):
    keys_path, _ = keys_file
    token = server.issue(sub="user-outage")
    server.faults(introspect_status=500)
    try:
        (flow,), addon = drive(options(server, keys_path), ("/users/1", {"Authorization": f"Bearer {token}"}))
    finally:
        server.reset()
    assert flow.response.status_code == 503
    assert flow.response.headers["Retry-After"] == "5"
    assert flow.response.headers["Content-Type"] == PROBLEM_JSON
    assert json.loads(flow.response.content)["error"] == "unavailable"
    assert get_facts(flow).auth == "unavailable" and addon.unavailable == 1 and addon.refused == 0


@pytest.mark.parametrize("extra, message", [
    ({"gatewatch_jwt_algorithms": ["RS256", "HS256"]}, "gatewatch_jwt_algorithms"),
    ({"gatewatch_jwt_algorithms": ["none"]}, "gatewatch_jwt_algorithms"),
    ({"gatewatch_jwt_issuer": ""}, "gatewatch_jwt_issuer"),
    ({"gatewatch_jwt_audience": []}, "gatewatch_jwt_audience"),
    ({"gatewatch_jwt_leeway_s": 1000}, "gatewatch_jwt_leeway_s"),
    ({"gatewatch_jwt_jwks_url": "nope"}, "gatewatch_jwt_jwks_url"),
    ({"gatewatch_introspection_client_secret": ""}, "gatewatch_introspection_client"),
    ({"gatewatch_introspection_max_in_flight": 0}, "gatewatch_introspection_max_in_flight"),
    ({"gatewatch_api_key_header": "Authorization"}, "gatewatch_api_key_header"),
])
def test_bad_bearer_options_are_refused(server, keys_file, extra, message):
    keys_path, _ = keys_file
    addon = Authentication()

    async def go():
        with taddons.context(addon) as tctx:
            tctx.configure(addon, **options(server, keys_path))
            good = addon.spec
            with pytest.raises(exceptions.OptionsError, match=message):
                tctx.configure(addon, **extra)
            assert addon.spec == good
            await addon.done()
    asyncio.run(go())


def test_reconfiguring_keeps_verifiers_of_unchanged_policies(server, keys_file):
    keys_path, _ = keys_file
    addon = Authentication()

    async def go():
        with taddons.context(addon) as tctx:
            tctx.configure(addon, **options(server, keys_path))
            jwt_verifier, introspector = addon.jwt, addon.introspector
            tctx.configure(addon, gatewatch_public_routes=["/health", "/docs/*"])
            assert addon.jwt is jwt_verifier and addon.introspector is introspector
            tctx.configure(addon, gatewatch_jwt_leeway_s=5)
            assert addon.jwt is not jwt_verifier and addon.introspector is introspector
            tctx.configure(addon, gatewatch_jwt_jwks_url="", gatewatch_introspection_url="")
            assert addon.jwt is None and addon.introspector is None and not addon.spec.bearer
            await addon.done()
    asyncio.run(go())


def test_unconfigured_addon_still_sends_a_challenge():
    async def go():
        routes, addon = Routes(), Authentication()
        with taddons.context(routes, addon) as tctx:
            flow = await run_flow(tctx, [routes, addon], make_flow("/users/1"))
        assert flow.response.status_code == 401 and flow.response.headers["WWW-Authenticate"]
        assert flow.response.headers["Content-Type"] == PROBLEM_JSON
    asyncio.run(go())
