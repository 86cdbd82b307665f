"""Hostile input through a real gateway process over raw sockets: random and malicious
paths, login payloads and bodies (hypothesis). The gateway answers every one without
a 5xx of its own, keeps running, and no login password reaches an event or a log line."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from kafka import KafkaConsumer, TopicPartition

from gatewatch.commands import serve_command
from gatewatch.keys import add_key
from gatewatch.netutil import free_port, wait_for_port
from gatewatch.settings import GatewatchSettings

#: Marks every password this test sends, so a leak is easy to find.
SECRET = "S3cr3t-pw-"

SEGMENTS = st.one_of(
    st.sampled_from(["users", "orders", "login", "..", ".", "", "%2e%2e", "%2F", "%5C", "%00", "%ff", "%",
                     "%zz", "users%2f1", "ä", "\u202e", "{id}", "*", "~", ";x=1", "a" * 300]),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters="/?# "),
            max_size=12),
    st.integers(min_value=0, max_value=10**12).map(str),
)
PATHS = st.lists(SEGMENTS, max_size=6).map(lambda parts: "/" + "/".join(parts))
QUERIES = st.one_of(st.just(""), st.text(alphabet="abc=&%20;+?", max_size=20).map(lambda q: "?" + q))
BODIES = st.one_of(
    st.binary(max_size=300),
    st.dictionaries(st.sampled_from(["username", "password", "user", "x"]),
                    st.one_of(st.text(max_size=20), st.integers(), st.none(), st.lists(st.integers(), max_size=3)),
                    max_size=4).map(lambda d: __import__("json").dumps(d).encode()),
    st.text(max_size=40).map(lambda u: f"username={u}&password={SECRET}form".encode("utf-8", "surrogatepass")),
)


def send_raw(host: str, port: int, request: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except socket.timeout:
                break
            if not data:
                break
            chunks.append(data)
            if b"\r\n\r\n" in b"".join(chunks) and len(b"".join(chunks)) > 12:
                break
        return b"".join(chunks)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    """One real gateway (minimal master) in front of the sample API, with a broker."""
    from gatewatch.broker import create_topics, start_tansu
    from gatewatch.settings import load_settings
    import sys

    tmp = tmp_path_factory.mktemp("hostile")
    bport, aport = free_port(), free_port()
    broker = start_tansu("127.0.0.1", bport, tmp / "tansu.log")
    api = subprocess.Popen([sys.executable, "-m", "gatewatch.sample_api", "--port", str(aport)])
    wait_for_port("127.0.0.1", bport)
    wait_for_port("127.0.0.1", aport)
    raw = add_key(tmp / "keys.toml", "key_hostile", owner="h")
    s = load_settings(bootstrap_servers=f"127.0.0.1:{bport}", upstream=f"http://127.0.0.1:{aport}",
                      listen_port=free_port(), keys_file=tmp / "keys.toml", admin_port=0, spool_dir=tmp / "spool",
                      ip_rate_limit={"rate_per_s": 100000, "burst": 100000},
                      principal_rate_limit={"rate_per_s": 100000, "burst": 100000})
    create_topics(s)
    log = tmp / "gateway.log"
    with open(log, "wb") as out:
        gw = subprocess.Popen(serve_command(s) + ["--verbose"], env=os.environ | s.to_env(), stdout=out,
                              stderr=subprocess.STDOUT)
    try:
        wait_for_port(s.listen_host, s.listen_port, timeout_s=20)
        yield s, raw, gw, log
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(timeout=20)
        api.terminate()
        broker.terminate()
        api.wait(timeout=10)
        broker.wait(timeout=10)


def status_of(response: bytes) -> int:
    m = re.match(rb"HTTP/1\.[01] (\d{3})", response)
    assert m, f"no HTTP status line in {response[:80]!r}"
    return int(m.group(1))


@hsettings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]), path=PATHS, query=QUERIES,
       body=BODIES, with_key=st.booleans())
def test_random_requests_never_get_a_gateway_5xx(gateway, method: str, path: str, query: str, body: bytes,
                                                  with_key: bool) -> None:
    s, raw, gw, _ = gateway
    target = (path + query).encode("utf-8", "surrogatepass")
    head = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: api.test", b"Connection: close",
            b"Content-Length: " + str(len(body)).encode()]
    if with_key:
        head.append(b"X-API-Key: " + raw.encode())
    response = send_raw(s.listen_host, s.listen_port, b"\r\n".join(head) + b"\r\n\r\n" + body)
    status = status_of(response)
    # 502 would mean the upstream failed; the gateway itself must never answer 500.
    assert status != 500 and (status < 500 or status in (502, 503)), response[:300]
    assert gw.poll() is None, "the gateway died"


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(username=st.text(max_size=30), suffix=st.text(alphabet="abcdef0123456789", min_size=1, max_size=8),
       as_form=st.booleans())
def test_login_payloads_never_leak_the_password(gateway, username: str, suffix: str, as_form: bool) -> None:
    s, _, gw, _ = gateway
    import json
    import urllib.parse

    password = SECRET + suffix
    if as_form:
        body = urllib.parse.urlencode({"username": username, "password": password}).encode()
        ctype = b"application/x-www-form-urlencoded"
    else:
        body = json.dumps({"username": username, "password": password}).encode()
        ctype = b"application/json"
    request = (b"POST /login HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\nContent-Type: " + ctype +
               b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert status_of(send_raw(s.listen_host, s.listen_port, request)) in (200, 400, 401, 413, 415)
    assert gw.poll() is None


def test_no_password_in_events_or_logs(gateway) -> None:
    """Runs after the two property tests (file order): scans everything the gateway wrote."""
    s, _, _, log = gateway
    consumer = KafkaConsumer(bootstrap_servers=s.bootstrap_servers, enable_auto_commit=False, fetch_max_wait_ms=20)
    tps = [TopicPartition(s.topic_requests, p) for p in sorted(consumer.partitions_for_topic(s.topic_requests))]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    events, deadline = [], time.monotonic() + 10
    while time.monotonic() < deadline:
        batch = consumer.poll(timeout_ms=300)
        if not batch and events:
            break
        for records in batch.values():
            events += [r.value for r in records]
    consumer.close()
    assert len(events) >= 100, "the property tests' requests reached the topic"
    assert not [e for e in events if SECRET.encode() in e]
    assert SECRET not in Path(log).read_text(errors="replace")
