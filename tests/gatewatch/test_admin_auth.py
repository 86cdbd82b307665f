"""The admin-token rules shared by the gateway's metrics and the worker's read API."""

from __future__ import annotations

import pytest

from gatewatch.admin_auth import (MIN_TOKEN_CHARS, AdminTokenRequired, auth_headers, authorized, challenge,
                                  is_loopback, require_token_if_exposed)

TOKEN = "t" * MIN_TOKEN_CHARS


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("LocalHost", True), ("0.0.0.0", False), ("", False), ("::", False), ("10.0.0.5", False),
    ("192.168.1.1", False), ("gateway.internal", False), ("localhost.evil.test", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_exposed_without_token_refused_with_the_reason() -> None:
    with pytest.raises(AdminTokenRequired, match=r"'0\.0\.0\.0', not a loopback address.*GATEWATCH_ADMIN_TOKEN"):
        require_token_if_exposed("0.0.0.0", None, "worker read API")
    with pytest.raises(AdminTokenRequired, match="at least 32 characters"):
        require_token_if_exposed("127.0.0.1", "short", "worker read API")


@pytest.mark.parametrize(("host", "token"), [("127.0.0.1", None), ("127.0.0.1", ""), ("0.0.0.0", TOKEN),
                                             ("::1", TOKEN)])
def test_allowed_configurations(host: str, token: str | None) -> None:
    require_token_if_exposed(host, token, "worker read API")


@pytest.mark.parametrize(("header", "ok"), [
    (f"Bearer {TOKEN}", True), (f"bearer {TOKEN}", True), (f"  Bearer   {TOKEN} ", True),
    (None, False), ("", False), (f"Basic {TOKEN}", False), (f"Bearer {TOKEN}x", False),
    (f"Bearer {TOKEN[:-1]}", False), (TOKEN, False), ("Bearer ", False),
])
def test_authorized(header: str | None, ok: bool) -> None:
    assert authorized(header, TOKEN) is ok


def test_no_token_configured_lets_everything_through() -> None:
    assert authorized(None, None) and authorized("Bearer whatever", "")


def test_client_and_challenge_headers() -> None:
    assert auth_headers(TOKEN) == {"Authorization": f"Bearer {TOKEN}"}
    assert auth_headers(None) == {}
    assert challenge()["WWW-Authenticate"].startswith("Bearer realm=")
