"""The shared records, settings and keys file."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gatewatch.events import (Decision, MalformedRecord, RequestEvent, parse_decision,
                              parse_request_event, request_key)
from gatewatch.keys import KeysFileError, add_key, hash_key, load_keys
from gatewatch.settings import load_settings

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


def test_request_event_round_trip_and_defaults() -> None:
    ev = RequestEvent(event_id="e1", ts=T0, client_ip="10.0.0.1", method="POST", host="api",
                      path="/login?x=1", route="/login", status=401, login="failure")
    back = parse_request_event(ev.to_json())
    assert back == ev and back.v == 1 and back.epoch_s == T0.timestamp()


def test_naive_timestamps_are_utc_and_unknown_fields_ignored() -> None:
    ev = parse_request_event({"event_id": "e", "ts": "2026-11-01T12:00:00", "client_ip": "::1",
                              "method": "GET", "host": "h", "path": "/", "route": "/", "status": 200,
                              "from_a_newer_writer": True})
    assert ev.ts == T0


@pytest.mark.parametrize("raw", [b"not json", b"{}", b'{"scope": "galaxy", "value": "x"}', b"[]"])
def test_malformed_decision_raises_clear_error(raw: bytes) -> None:
    with pytest.raises(MalformedRecord, match="malformed Decision"):
        parse_decision(raw)


def test_request_key_is_the_principal_except_for_logins_and_anonymous_callers() -> None:
    def event(**kw) -> RequestEvent:
        return RequestEvent(**{"event_id": "e", "ts": T0, "client_ip": "2001:db8::7", "method": "GET",
                               "host": "api", "path": "/orders/7", "route": "/orders/{id}", "status": 200, **kw})
    assert request_key(event(principal="key_a", auth="ok")) == b"principal:key_a"
    assert request_key(event()) == b"2001:db8::7"
    # A login attempt stays with its address, API key or not (the per-IP login windows).
    login = {"method": "POST", "path": "/login", "route": "/login", "status": 401, "login": "failure"}
    assert request_key(event(principal="app-key", auth="ok", **login)) == b"2001:db8::7"
    assert request_key(event(**login)) == b"2001:db8::7"


def test_decision_key_expiry_and_ttl() -> None:
    d = Decision(scope="ip", value="203.0.113.9", created_at=T0, expires_at=T0 + timedelta(minutes=10))
    assert d.key() == "ip:203.0.113.9" and d.ttl_s == 600
    assert d.active_at(T0 + timedelta(minutes=9)) and not d.active_at(T0 + timedelta(minutes=10))


def test_keys_file_holds_hashes_only(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    raw = add_key(path, "key_a", owner="alice", tier="gold")
    assert raw not in path.read_text()
    keys = load_keys(path)
    assert keys[hash_key(raw)].id == "key_a" and keys[hash_key(raw)].tier == "gold"
    with pytest.raises(KeysFileError, match="already exists"):
        add_key(path, "key_a", owner="alice")


def test_keys_file_rejects_bad_entries(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text('[[keys]]\nid = "k"\nowner = "o"\nhash = "md5:abc"\n')
    with pytest.raises(KeysFileError, match="sha256"):
        load_keys(path)
    with pytest.raises(KeysFileError, match="cannot read"):
        load_keys(tmp_path / "missing.toml")


def test_settings_round_trip_through_env(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings(listen_port=9999, credential_stuffing={"min_failures": 3})
    for k, v in s.to_env().items():
        monkeypatch.setenv(k, v)
    assert load_settings() == s


def test_settings_from_toml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "gatewatch.toml"
    cfg.write_text('listen_port = 7070\n[credential_stuffing]\nmin_failures = 4\n')
    monkeypatch.setenv("GATEWATCH_CONFIG", str(cfg))
    s = load_settings()
    assert s.listen_port == 7070 and s.credential_stuffing.min_failures == 4
