"""Secrets in request targets never reach an event: query values by name, JWTs and API keys anywhere."""

from __future__ import annotations

import pytest

from gatewatch.keys import generate_key
from inline.redaction import redact_credentials, redact_target

JWT = ("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSJ9."
       "c2lnbmF0dXJlLWJ5dGVzLWhlcmUtMDEyMzQ1Njc4OWFiY2RlZg")
JWE = "eyJhbGciOiJSU0EtT0FFUCJ9.a2V5.aXY.Y2lwaGVydGV4dA.dGFn"
KEY = generate_key()


@pytest.mark.parametrize(("target", "expected"), [
    (f"/verify/{JWT}", "/verify/REDACTED"),
    (f"/verify/{JWT}/confirm?x=1", "/verify/REDACTED/confirm?x=1"),
    (f"/cb?state={JWT}&page=2", "/cb?state=REDACTED&page=2"),
    (f"/d/{JWE}", "/d/REDACTED"),
    (f"/keys/{KEY}/revoke", "/keys/REDACTED/revoke"),
    (f"/x?k2={KEY}", "/x?k2=REDACTED"),
    (f"/x?API_KEY={KEY}&token=abc", "/x?API_KEY=REDACTED&token=REDACTED"),
])
def test_credentials_redacted(target: str, expected: str) -> None:
    assert redact_target(target) == expected


@pytest.mark.parametrize("target", [
    "/users/42/orders", "/documents/3f2b9c1e-8d4a-4c1b-9e2f-0a1b2c3d4e5f", "/files/report.v2.final",
    "/eyJ", "/gw_short", "/search?q=eyJ&page=2", "/gateway/gw_docs"])
def test_ordinary_targets_kept(target: str) -> None:
    assert redact_credentials(target) == target
