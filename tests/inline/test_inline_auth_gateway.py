"""Bearer tokens through the gateway as it runs: a real mitmdump (inline/gateway.py),
the real authorization server process (authserver.py: JWKS + RFC 7662
introspection), a real Tansu broker and a real upstream, with real HTTP clients
and raw sockets.

One gateway serves the whole module (start-up is the slow part). It runs with
``termlog_verbosity=debug`` so that every log line is captured and checked:
no token may appear in a log line or in a request event.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, TopicPartition

from auth_testkit import (
    AuthServer,
    SigningKey,
    auth_server,
    claims,
    compact,
    forge_hs256,
    logging_mitmdump,
    make_keys,
    rsa_key,
    sign,
    unsigned,
)
from gatewatch import decision_feed
from gatewatch.broker import create_topics, start_tansu
from gatewatch.events import Decision, RequestEvent, parse_request_event
from gatewatch.keys import add_key
from gatewatch.netutil import free_port, wait_for_port
from gatewatch.settings import GatewatchSettings, RateLimit, load_settings
from inline.bearer import MAX_TOKEN_BYTES
from inline_testkit import upstream_server

POLL_S = 10.0          # upper bound of every "wait until" loop; tests never assert on timing
MIN_REFETCH_S = 2      # the gateway's JWKS refetch floor in this module


@dataclass
class Stack:
    """The running pieces: gateway URL and settings, auth server, keys, raw API key, logs."""

    base: str
    settings: GatewatchSettings
    server: AuthServer
    keys: dict[str, SigningKey]
    api_key: str
    log: Path
    proc: subprocess.Popen

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=5.0)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("authgw")
    keys = make_keys()
    with ExitStack() as es:
        port = free_port()
        tansu = start_tansu("127.0.0.1", port, log_path=tmp / "tansu.log")
        es.callback(lambda: (tansu.terminate(), tansu.wait(timeout=10)))
        wait_for_port("127.0.0.1", port, timeout_s=10)
        server = es.enter_context(auth_server(tmp / "as", keys["rsa"], keys["ec"]))
        upstream = es.enter_context(upstream_server())
        s = load_settings(
            bootstrap_servers=f"127.0.0.1:{port}", keys_file=tmp / "keys.toml", chdb_path=tmp / "chdb",
            listen_port=free_port(), upstream=upstream,
            ip_rate_limit=RateLimit(rate_per_s=5000.0, burst=5000),
            principal_rate_limit=RateLimit(rate_per_s=5000.0, burst=5000),
            jwt=server.jwt_settings(jwks_min_refetch_s=MIN_REFETCH_S, algorithms=["RS256", "ES256"]),
            introspection=server.introspection_settings(timeout_ms=1000))
        create_topics(s)
        api_key = add_key(s.keys_file, "key_alice", "alice")
        log = tmp / "mitmdump.log"
        proc = es.enter_context(logging_mitmdump(s, log))
        yield Stack(f"http://{s.listen_host}:{s.listen_port}", s, server, keys, api_key, log, proc)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "Addon error" not in text, text


def events_for(s: GatewatchSettings, ids: set[str]) -> tuple[dict[str, RequestEvent], list[bytes]]:
    """The request events with ``ids`` (read until all are there, at most POLL_S), and every raw message."""
    consumer = KafkaConsumer(bootstrap_servers=s.bootstrap_servers, group_id=None, enable_auto_commit=False)
    values: list[bytes] = []
    try:
        tps = [TopicPartition(s.topic_requests, p) for p in sorted(consumer.partitions_for_topic(s.topic_requests))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)   # never "latest" (Tansu quirk)
        deadline = time.monotonic() + POLL_S
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                values.extend(r.value for r in records)
            if ids <= {parse_request_event(v).event_id for v in values}:
                break
    finally:
        consumer.close()
    return {e.event_id: e for e in map(parse_request_event, values)}, values


def assert_never_seen(stack: Stack, secrets: list[str], ids: set[str]) -> dict[str, RequestEvent]:
    """Every event of ``ids`` arrived; no secret is in any event or any log line; mitmdump lives."""
    events, raw = events_for(stack.settings, ids)
    assert ids <= set(events), f"missing events: {ids - set(events)}"
    log = stack.log.read_bytes()
    for secret in secrets:
        needle = secret.encode("utf-8", "surrogateescape")
        assert not any(needle in value for value in raw), f"token leaked into an event: {secret[:40]}"
        assert needle not in log, f"token leaked into the log: {secret[:40]}"
    assert stack.proc.poll() is None
    return events


def raw_request(stack: Stack, header_lines: bytes, path: bytes = b"/users/1") -> tuple[int, dict[str, str], bytes]:
    """Send one raw HTTP/1.1 request with ``header_lines`` (each ending CRLF); return status, headers, body."""
    host = stack.settings.listen_host
    with socket.create_connection((host, stack.settings.listen_port), timeout=5) as sock:
        sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n" + header_lines
                     + b"Connection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
    return int(lines[0].split(" ", 2)[1]), headers, body


# --- tokens that work -------------------------------------------------------------------


def test_jwt_opaque_token_and_api_key_reach_the_upstream(stack: Stack):
    server, keys = stack.server, stack.keys
    rs = sign(keys["rsa"], claims(server.issuer, sub="user-rs"))
    es = sign(keys["ec"], claims(server.issuer, sub="user-es"))
    opaque = server.issue(sub="user-opaque")
    machine = server.issue()
    ids = {}
    with stack.client() as client:
        for name, headers in [("rs", {"Authorization": f"Bearer {rs}"}), ("es", {"Authorization": f"Bearer {es}"}),
                              ("opaque", {"Authorization": f"Bearer {opaque}"}),
                              ("machine", {"Authorization": f"Bearer {machine}"}),
                              ("key", {"X-API-Key": stack.api_key})]:
            response = client.get("/users/1", headers=headers)
            assert response.status_code == 200, (name, response.text)
            assert response.json()["ok"] is True
            ids[name] = response.headers["X-Request-Id"]
        # The introspected token is cached: a second use costs no call.
        before = server.stats()["introspect"]
        assert client.get("/users/2", headers={"Authorization": f"Bearer {opaque}"}).status_code == 200
        assert server.stats()["introspect"] == before
    events = assert_never_seen(stack, [rs, es, opaque, machine, stack.api_key], set(ids.values()))
    assert {name: (events[i].auth, events[i].principal) for name, i in ids.items()} == {
        "rs": ("ok", "user-rs"), "es": ("ok", "user-es"), "opaque": ("ok", "user-opaque"),
        "machine": ("ok", "app"), "key": ("ok", "key_alice")}


def test_refusals_are_rfc6750_and_problem_json(stack: Stack):
    server, keys = stack.server, stack.keys
    expired = sign(keys["rsa"], claims(server.issuer, exp=int(time.time()) - 3600))
    with stack.client() as client:
        refused = client.get("/users/1", headers={"Authorization": f"Bearer {expired}"})
        missing = client.get("/users/1")
    assert refused.status_code == 401 and refused.headers["Content-Type"] == "application/problem+json"
    assert refused.headers["WWW-Authenticate"] == (
        'Bearer realm="gatewatch", error="invalid_token", error_description="token has expired"')
    assert refused.json() == {"type": "about:blank", "title": "Unauthorized", "status": 401,
                              "detail": "token has expired", "error": "unauthorized", "auth_error": "invalid_token"}
    assert missing.status_code == 401
    assert missing.headers.get_list("WWW-Authenticate") == ['ApiKey realm="gatewatch", header="X-API-Key"',
                                                            'Bearer realm="gatewatch"']
    events = assert_never_seen(stack, [expired], {refused.headers["X-Request-Id"], missing.headers["X-Request-Id"]})
    event = events[refused.headers["X-Request-Id"]]
    assert (event.status, event.auth, event.principal, event.answered_by) == (401, "invalid", "", "auth")


# --- key rotation and unknown-kid floods ------------------------------------------------


def test_key_rotation_and_a_bogus_kid_flood(stack: Stack):
    server, keys = stack.server, stack.keys
    new = rsa_key(f"rotated-{uuid.uuid4().hex[:6]}")
    server.publish(keys["rsa"], keys["ec"], new)
    token = sign(new, claims(server.issuer, sub="user-rotated"))
    with stack.client() as client:
        deadline = time.monotonic() + POLL_S       # the new kid is fetched once the floor allows
        while (response := client.get("/users/1", headers={"Authorization": f"Bearer {token}"})).status_code != 200:
            assert response.status_code == 401 and time.monotonic() < deadline, response.text
            time.sleep(0.2)
        assert response.headers["X-Request-Id"]

        fetches_before, started = server.stats()["jwks"], time.monotonic()
        bogus = [sign(new, claims(server.issuer), kid=f"bogus-{i}-{uuid.uuid4().hex}") for i in range(60)]
        statuses = [client.get("/users/1", headers={"Authorization": f"Bearer {b}"}).status_code for b in bogus]
        elapsed = time.monotonic() - started
    assert statuses == [401] * len(bogus)
    fetches = server.stats()["jwks"] - fetches_before
    assert fetches <= 1 + elapsed // MIN_REFETCH_S, (fetches, elapsed)
    assert_never_seen(stack, [token, *bogus], {response.headers["X-Request-Id"]})


# --- hostile input ----------------------------------------------------------------------


def hostile_corpus(stack: Stack) -> list[tuple[str, bytes]]:
    """(name, Authorization header lines) of malicious and malformed bearer tokens."""
    server, keys = stack.server, stack.keys
    rsa = keys["rsa"]
    mark = uuid.uuid4().hex

    def c(**kw):
        return claims(server.issuer, jti=mark, **kw)
    now = int(time.time())
    tokens = {
        "alg none": unsigned(rsa, c()),
        "alg None": unsigned(rsa, c(), alg="None"),
        "HS256 with the RSA public key": forge_hs256(rsa, c()),
        "expired": sign(rsa, c(exp=now - 120)),
        "nbf in the future": sign(rsa, c(nbf=now + 3600)),
        "iat in the future": sign(rsa, c(iat=now + 3600)),
        "wrong audience": sign(rsa, c(aud="https://other.test")),
        "wrong issuer": sign(rsa, c(iss="https://evil.test")),
        "no exp": sign(rsa, {k: v for k, v in c().items() if k != "exp"}),
        "no subject": sign(rsa, c(sub=None)),
        "unknown kid": sign(rsa, c(), kid=f"nope-{mark}"),
        "signed by another key": sign(rsa_key("x"), c(), kid=rsa.kid),
        "PS256 not allowed here": sign(rsa, c(), "PS256"),
        "jku pointing elsewhere": sign(rsa_key("y"), c(), kid=rsa.kid, jku="http://127.0.0.1:1/jwks"),
        "crit header": compact({"alg": "RS256", "kid": rsa.kid, "crit": ["x"]}, c(), b"sig"),
        "JWE shaped": f"eyJhbGciOiJSU0EtT0FFUCJ9.{mark}.{mark}.{mark}.{mark}",
        "garbage base64": f"!!!{mark}.???.***",
        "garbage segments": f"eyJ{mark}.eyJ{mark}.{mark}",
        "unknown opaque": f"opaque-{mark}",
        "longest allowed": "A" * (MAX_TOKEN_BYTES - 32) + mark,
        "too large": "A" * MAX_TOKEN_BYTES + mark,
        # Far past the token limit but inside the gateway's head limit (max_header_bytes,
        # 32 KiB): a larger head is refused with 431 before authentication (test_inline_size_limits).
        "huge": "A" * 24_000 + mark,
    }
    lines = [(name, b"Authorization: Bearer " + t.encode() + b"\r\n") for name, t in tokens.items()]
    lines += [
        ("empty bearer", b"Authorization: Bearer\r\n"),
        ("two headers", f"Authorization: Bearer {mark}a\r\nAuthorization: Bearer {mark}b\r\n".encode()),
        ("bearer and API key", f"Authorization: Bearer {mark}\r\nX-API-Key: {stack.api_key}\r\n".encode()),
        ("space inside", f"Authorization: Bearer {mark} {mark}\r\n".encode()),
        ("non-UTF-8", b"Authorization: Bearer \xff\xfe" + mark.encode() + b"\r\n"),
        ("non-ASCII", "Authorization: Bearer tök".encode() + mark.encode() + b"\r\n"),
    ]
    return lines


def test_hostile_tokens_get_401_and_never_leak(stack: Stack):
    ids, secrets = set(), []
    for name, lines in hostile_corpus(stack):
        status, headers, body = raw_request(stack, lines)
        assert status == 401, (name, status, body[:300])
        assert headers["content-type"] == "application/problem+json", name
        problem = json.loads(body)
        assert problem["status"] == 401 and problem["error"] == "unauthorized", name
        assert headers["www-authenticate"].startswith(("Bearer realm=", "ApiKey realm=")), name
        ids.add(headers["x-request-id"])
        for line in lines.split(b"\r\n"):
            token = line.partition(b"Bearer")[2].strip()
            if len(token) >= 16:
                secrets.append(token.decode("utf-8", "surrogateescape"))
    events = assert_never_seen(stack, secrets, ids)
    assert {(events[i].status, events[i].auth, events[i].principal) for i in ids} == {(401, "invalid", "")}


FIELD_BYTES = [9, 32, *range(0x21, 0x7F), *range(0x80, 0x100)]   # RFC 9110 field-value: HTAB, SP, VCHAR, obs-text


def test_random_authorization_headers_get_401_and_leave_no_trace(stack: Stack):
    """Hypothesis drives raw requests: RFC 9110 field-value bytes around a unique
    marker, with and without a bearer scheme, on protected and public routes."""
    ids: set[str] = set()
    marks: list[str] = []

    @settings(max_examples=80, deadline=None, database=None)
    @given(scheme=st.sampled_from([b"Bearer ", b"bearer ", b"BEARER\t", b"Bearer  ", b""]),
           prefix=st.binary(max_size=64).map(lambda b: bytes(x for x in b if x in FIELD_BYTES)),
           suffix=st.lists(st.sampled_from(FIELD_BYTES), max_size=200).map(bytes),
           path=st.sampled_from([b"/users/1", b"/health", b"/orders/42?x=1"]))
    def one(scheme, prefix, suffix, path):
        mark = b"LEAK" + uuid.uuid4().hex.encode()
        value = (scheme + prefix + mark + suffix).strip(b" \t")
        status, headers, _ = raw_request(stack, b"Authorization: " + value + b"\r\n", path)
        # 401, unless it is no bearer header at all on the public route (then the upstream's 200).
        assert status == 401 or (status == 200 and path == b"/health"), (value, status)
        ids.add(headers["x-request-id"])
        marks.append(mark.decode())

    one()
    events = assert_never_seen(stack, marks, ids)
    assert all(events[i].principal == "" for i in ids)


# --- outages and decisions on token subjects ---------------------------------------------


def test_authorization_server_outage_is_503(stack: Stack):
    server = stack.server
    token = server.issue(sub="user-outage")
    server.faults(introspect_status=500)
    try:
        with stack.client() as client:
            response = client.get("/users/1", headers={"Authorization": f"Bearer {token}"})
    finally:
        server.faults(introspect_status=0)
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert response.json()["error"] == "unavailable"
    with stack.client() as client:   # the failure was not cached: the token works once the server is back
        assert client.get("/users/1", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    events = assert_never_seen(stack, [token], {response.headers["X-Request-Id"]})
    event = events[response.headers["X-Request-Id"]]
    assert (event.status, event.auth, event.answered_by) == (503, "unavailable", "auth")


def test_a_ban_on_the_token_subject_blocks_its_tokens(stack: Stack):
    server, keys = stack.server, stack.keys
    now = datetime.now(timezone.utc)
    ban = Decision(scope="principal", value="user-banned", action="ban", reason="test", detector="manual",
                   created_at=now, expires_at=now + timedelta(minutes=10), origin="cli")
    decision_feed.publish(stack.settings, ban)   # signed, as every decision writer does
    banned_jwt = sign(keys["rsa"], claims(server.issuer, sub="user-banned"))
    banned_opaque = server.issue(sub="user-banned")
    other = sign(keys["rsa"], claims(server.issuer, sub="user-free"))
    with stack.client() as client:
        deadline = time.monotonic() + POLL_S
        while (blocked := client.get("/users/1", headers={"Authorization": f"Bearer {banned_jwt}"})).status_code != 403:
            assert time.monotonic() < deadline, blocked.text
            time.sleep(0.1)
        assert blocked.json()["decision_id"] == ban.id
        assert client.get("/users/1", headers={"Authorization": f"Bearer {banned_opaque}"}).status_code == 403
        assert client.get("/users/1", headers={"Authorization": f"Bearer {other}"}).status_code == 200
    events = assert_never_seen(stack, [banned_jwt, banned_opaque, other], {blocked.headers["X-Request-Id"]})
    assert events[blocked.headers["X-Request-Id"]].principal == "user-banned"

