"""API-key authentication (inline/authentication.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from gatewatch.keys import add_key, load_keys
from inline.authentication import Authentication, identify, parse_public_routes
from inline.flowstate import get_facts
from inline.routes import Routes
from inline_testkit import make_flow, run_flow


def test_public_routes_exact_and_prefix():
    public = parse_public_routes(["/health", "/login/", "/docs/*", "/static*"])
    assert public.matches("/health")
    assert public.matches("/login")          # exact paths are normalized
    assert public.matches("/docs/api")
    assert not public.matches("/docs")       # the prefix is "/docs/"
    assert public.matches("/static")
    assert public.matches("/static/app.js")
    assert not public.matches("/healthz")
    assert not public.matches("/admin")


@pytest.mark.parametrize("bad", ["health", "", "/a%zz"])
def test_public_routes_refuse_bad_patterns(bad):
    with pytest.raises(ValueError):
        parse_public_routes([bad])


@pytest.fixture
def keys_file(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "keys.toml"
    raw = add_key(path, "key_alice", "alice")
    add_key(path, "key_bob", "bob")
    return path, raw


def test_identify(keys_file):
    path, raw = keys_file
    keys = load_keys(path)
    assert identify([raw], keys, public=False).auth == "ok"
    assert identify([raw], keys, public=False).principal == "key_alice"
    assert identify([f"  {raw} "], keys, public=False).principal == "key_alice"
    assert identify([], keys, public=False).auth == "missing"
    assert identify([""], keys, public=False).auth == "missing"
    assert identify([], keys, public=True).auth == "public"
    assert identify(["gw_nope"], keys, public=True).auth == "invalid"
    assert identify([raw, raw], keys, public=False).auth == "invalid"
    assert identify(["\udcff\udcfe"], keys, public=False).auth == "invalid"  # non-UTF-8 header bytes
    assert identify(["gw_nope"], keys, public=False).principal == ""


@pytest.mark.parametrize("path, header, status, auth, principal", [
    ("/users/1", None, 401, "missing", ""),
    ("/users/1", "gw_wrong", 401, "invalid", ""),
    ("/users/1", "RAW", 200, "ok", "key_alice"),
    ("/health", None, 200, "public", ""),
    ("/health", "RAW", 200, "ok", "key_alice"),
    ("/health", "gw_wrong", 401, "invalid", ""),     # a bad key is refused on public routes too
    ("/health/../admin", None, 401, "missing", ""),  # normalized before matching
])
def test_addon(keys_file, path, header, status, auth, principal):
    keys_path, raw = keys_file

    async def go():
        routes, addon = Routes(), Authentication()
        with taddons.context(routes, addon) as tctx:
            tctx.configure(addon, gatewatch_keys_file=str(keys_path), gatewatch_public_routes=["/health"])
            headers = {} if header is None else {"X-API-Key": raw if header == "RAW" else header}
            flow = await run_flow(tctx, [routes, addon], make_flow(path, headers=headers))
        facts = get_facts(flow)
        assert flow.response.status_code == status
        assert (facts.auth, facts.principal) == (auth, principal)
        if status == 401:
            assert json.loads(flow.response.content)["error"] == "unauthorized"
            assert flow.response.headers["WWW-Authenticate"].startswith("ApiKey")
            assert facts.answered_by == "auth"
            assert raw not in flow.response.text
    asyncio.run(go())


def test_addon_custom_header(keys_file):
    keys_path, raw = keys_file

    async def go():
        routes, addon = Routes(), Authentication()
        with taddons.context(routes, addon) as tctx:
            tctx.configure(addon, gatewatch_keys_file=str(keys_path), gatewatch_api_key_header="Api-Token")
            ok = await run_flow(tctx, [routes, addon], make_flow(headers={"Api-Token": raw}))
            wrong_header = await run_flow(tctx, [routes, addon], make_flow(headers={"X-API-Key": raw}))
        assert ok.response.status_code == 200
        assert wrong_header.response.status_code == 401
    asyncio.run(go())


def test_bad_options_are_refused(tmp_path, keys_file):
    keys_path, _ = keys_file
    bad = tmp_path / "bad.toml"
    bad.write_text('[[keys]]\nid = "x"\nowner = "y"\nhash = "md5:abc"\n')
    addon = Authentication()
    with taddons.context(addon) as tctx:
        # Start from a good state: a refused update rolls back and reconfigures.
        tctx.configure(addon, gatewatch_keys_file=str(keys_path))
        with pytest.raises(exceptions.OptionsError, match="keys_file"):
            tctx.configure(addon, gatewatch_keys_file=str(bad))
        with pytest.raises(exceptions.OptionsError, match="keys_file"):
            tctx.configure(addon, gatewatch_keys_file=str(tmp_path / "missing.toml"))
        with pytest.raises(exceptions.OptionsError, match="public_routes"):
            tctx.configure(addon, gatewatch_public_routes=["nope"])
        with pytest.raises(exceptions.OptionsError, match="header"):
            tctx.configure(addon, gatewatch_api_key_header="bad header")
        assert addon.spec is not None and addon.spec.header == "X-API-Key"


def test_unconfigured_addon_fails_closed():
    async def go():
        routes, addon = Routes(), Authentication()
        with taddons.context(routes, addon) as tctx:
            flow = await run_flow(tctx, [routes, addon], make_flow("/users/1"))
        assert flow.response.status_code == 401
    asyncio.run(go())
