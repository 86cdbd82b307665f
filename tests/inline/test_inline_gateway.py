"""The gateway as it runs: a real mitmdump process with inline/gateway.py, a real
Tansu broker, a real upstream HTTP server and real HTTP clients.

mitmdump is started with :func:`gatewatch.commands.gateway_command` and the
settings as ``GATEWATCH_*`` environment variables, as the launcher does.
Client addresses are varied by binding clients to 127.0.0.x.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import altcha
import httpx
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from gatewatch.events import Decision, RequestEvent, parse_request_event
from gatewatch.keys import add_key
from gatewatch.netutil import free_port
from gatewatch.settings import GatewatchSettings, RateLimit, load_settings
from gatewatch.signing import DecisionSigner
from inline.challenge import SOLUTION_HEADER
from inline.login import username_hash
from inline_testkit import mitmdump, upstream_server
from redis_testkit import RedisServer, redis_server  # noqa: F401  (fixture)

POLL_S = 10.0   # upper bound of every "wait until" loop; tests never assert on timing


@dataclass
class Gateway:
    """A running gateway: its base URL, settings, raw keys of alice and bob, log file."""

    base: str
    settings: GatewatchSettings
    alice: str
    bob: str
    log: Path

    def client(self, ip: str = "127.0.0.1") -> httpx.Client:
        """An HTTP client whose connections come from ``ip`` (a loopback address)."""
        return httpx.Client(base_url=self.base, timeout=5.0,
                            transport=httpx.HTTPTransport(local_address=ip))


def gateway_settings(settings: GatewatchSettings, upstream: str, **overrides) -> GatewatchSettings:
    """``settings`` for a gateway on a free port in front of ``upstream``; rate limits
    high enough that polling loops never meet them, unless overridden."""
    port = free_port()
    return settings.model_copy(update={
        "listen_port": port,
        "upstream": upstream,
        "spool_dir": settings.chdb_path.parent / f"spool-{port}",   # one spool per gateway process
        "admin_port": 0,                                          # metrics off unless a test wants them
        "ip_rate_limit": RateLimit(rate_per_s=1000.0, burst=1000),
        "principal_rate_limit": RateLimit(rate_per_s=1000.0, burst=1000),
        **overrides,
    })


@pytest.fixture
def start_gateway(settings: GatewatchSettings, tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """Starts the gateway (once per test) with settings overrides; stops it
    afterwards and checks that no hook raised (``--quiet`` still logs errors)."""
    alice = add_key(settings.keys_file, "key_alice", "alice")
    bob = add_key(settings.keys_file, "key_bob", "bob")
    log = tmp_path / "mitmdump.log"
    with ExitStack() as stack:
        def start(**overrides) -> Gateway:
            upstream = stack.enter_context(upstream_server())
            s = gateway_settings(settings, upstream, **overrides)
            stack.enter_context(mitmdump(s, log))
            return Gateway(f"http://{s.listen_host}:{s.listen_port}", s, alice, bob, log)
        yield start
    if log.exists():   # mitmproxy logs (and survives) exceptions in hooks: there must be none
        text = log.read_text()
        assert "Addon error" not in text and "Traceback" not in text, text


@pytest.fixture
def gateway(start_gateway: Callable[..., Gateway]) -> Gateway:
    return start_gateway()


def read_topic(settings: GatewatchSettings, topic: str, done: Callable[[list[bytes]], bool]) -> list[bytes]:
    """Message values of ``topic`` from the beginning, read until ``done(values)`` or POLL_S.

    Assign + seek_to_beginning: no group, and never "latest" (Tansu quirk)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                             enable_auto_commit=False)
    values: list[bytes] = []
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + POLL_S
        while not done(values) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                values.extend(r.value for r in records)
    finally:
        consumer.close()
    return values


def request_events(settings: GatewatchSettings, ids: set[str]) -> tuple[dict[str, RequestEvent], list[bytes]]:
    """The request events with ``ids`` (waiting for them), and every raw message read."""
    def have_all(values: list[bytes]) -> bool:
        return ids <= {parse_request_event(v).event_id for v in values}
    raw = read_topic(settings, settings.topic_requests, have_all)
    events = {e.event_id: e for e in map(parse_request_event, raw)}
    return events, raw


def publish(settings: GatewatchSettings, key: bytes | None, value: bytes | None) -> None:
    """Produce one decisions message signed with the settings' key, as gatewatch's writers do."""
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    try:
        producer.send(settings.topic_decisions, key=key, value=value,
                      headers=DecisionSigner.from_settings(settings).headers(key, value)).get(timeout=10)
    finally:
        producer.close()


def wait_for_status(send: Callable[[], httpx.Response], status: int) -> httpx.Response:
    """Repeat ``send`` (every 0.1 s, at most POLL_S) until it answers ``status``."""
    deadline = time.monotonic() + POLL_S
    while True:
        response = send()
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def raw_http(gw: Gateway, request: bytes) -> tuple[int, bytes]:
    """Send raw bytes to the gateway; return the status code and the body."""
    with socket.create_connection((gw.settings.listen_host, gw.settings.listen_port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def decision(scope: str, value: str, ttl_s: float = 600.0, action: str = "ban") -> Decision:
    now = datetime.now(timezone.utc)
    return Decision(scope=scope, value=value, action=action, reason="test", detector="manual",
                    created_at=now, expires_at=now + timedelta(seconds=ttl_s), origin="cli")


def test_authentication_and_request_id(gateway: Gateway):
    with gateway.client("127.0.0.11") as client:
        missing = client.get("/users/1")
        assert missing.status_code == 401
        assert missing.json()["error"] == "unauthorized" and missing.json()["detail"]
        assert missing.headers["WWW-Authenticate"].startswith("ApiKey")
        assert missing.headers["X-Request-Id"]

        wrong = client.get("/users/1", headers={"X-API-Key": "gw_not-a-key"})
        assert wrong.status_code == 401

        ok = client.get("/users/1?expand=1", headers={"X-API-Key": gateway.alice})
        assert ok.status_code == 200
        request_id = ok.headers["X-Request-Id"]
        assert len(request_id) == 32
        assert ok.json() == {"ok": True, "path": "/users/1?expand=1", "request_id": request_id}

        assert client.get("/health").status_code == 200   # public route
        assert client.get("/health", headers={"X-API-Key": "gw_bad"}).status_code == 401
        assert client.get("/health/../admin").status_code == 401   # normalized before matching


def test_malformed_input_gets_4xx(gateway: Gateway):
    host = f"Host: {gateway.settings.listen_host}\r\n".encode()
    status, body = raw_http(gateway, b"GET /files/%zz HTTP/1.1\r\n" + host + b"Connection: close\r\n\r\n")
    assert status == 400 and json.loads(body)["error"] == "bad_request"
    status, _ = raw_http(gateway, b"GET /a%2F..%2Fadmin HTTP/1.1\r\n" + host + b"Connection: close\r\n\r\n")
    assert status == 400
    # API-key bytes that are not UTF-8: refused, not a crash.
    status, _ = raw_http(gateway, b"GET /users/1 HTTP/1.1\r\n" + host
                         + b"X-API-Key: \xff\xfe\r\nConnection: close\r\n\r\n")
    assert status == 401
    # Not HTTP at all: mitmproxy's own 400.
    status, _ = raw_http(gateway, b"NONSENSE\r\n\r\n")
    assert status == 400
    # Broken JSON on the login route is the upstream's business (it says 400); the gateway keeps going.
    with gateway.client("127.0.0.12") as client:
        assert client.post("/login", content=b'{"username": ', headers={"Content-Type": "application/json"}
                           ).status_code == 400
        assert client.get("/users/1", headers={"X-API-Key": gateway.alice}).status_code == 200


def test_rate_limit_per_ip(start_gateway: Callable[..., Gateway]):
    # 5 at once, then one per 10 s: the 6th quick request is refused.
    gateway = start_gateway(ip_rate_limit=RateLimit(rate_per_s=0.1, burst=5))
    with gateway.client("127.0.0.23") as client:
        statuses = [client.get("/users/1", headers={"X-API-Key": gateway.alice}) for _ in range(8)]
        assert [r.status_code for r in statuses[:5]] == [200] * 5
        refused = statuses[5]
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["Retry-After"]) <= 10
        assert refused.json()["error"] == "rate_limited" and refused.json()["scope"] == "ip"
        assert client.get("/health").status_code == 429   # per address, whatever the route or key
    with gateway.client("127.0.0.24") as other:   # another address has its own budget
        assert other.get("/users/1", headers={"X-API-Key": gateway.alice}).status_code == 200
    events, _ = request_events(gateway.settings, {refused.headers["X-Request-Id"]})
    event = events[refused.headers["X-Request-Id"]]
    assert (event.status, event.answered_by, event.latency_ms) == (429, "rate_limit", 0.0)


def test_rate_limit_per_principal(start_gateway: Callable[..., Gateway]):
    gateway = start_gateway(principal_rate_limit=RateLimit(rate_per_s=0.1, burst=3))
    statuses = []
    for i in range(5):   # one key from five addresses
        with gateway.client(f"127.0.0.{50 + i}") as client:
            statuses.append(client.get("/users/1", headers={"X-API-Key": gateway.alice}).status_code)
    assert statuses == [200, 200, 200, 429, 429]
    with gateway.client("127.0.0.60") as client:
        assert client.get("/users/1", headers={"X-API-Key": gateway.bob}).status_code == 200


def test_request_events_reach_the_topic_without_secrets(gateway: Gateway):
    key_hash = load_settings().username_hash_key.encode()
    ids = {}
    with gateway.client("127.0.0.31") as client:
        ids["ok"] = client.get("/orders/12345?page=2", headers={"X-API-Key": gateway.alice,
                                                               "User-Agent": "tests/1"}).headers["X-Request-Id"]
        ids["denied"] = client.get("/orders/1").headers["X-Request-Id"]
        ids["fail"] = client.post("/login", json={"username": "Carol", "password": "s3cret-pw"}
                                  ).headers["X-Request-Id"]
        ids["success"] = client.post("/login", json={"username": "Carol", "password": "right"}
                                     ).headers["X-Request-Id"]
    events, raw = request_events(gateway.settings, set(ids.values()))
    ok, denied, fail, success = (events[ids[k]] for k in ("ok", "denied", "fail", "success"))

    assert (ok.client_ip, ok.method, ok.path, ok.route) == ("127.0.0.31", "GET", "/orders/12345?page=2",
                                                            "/orders/{id}")
    assert (ok.status, ok.auth, ok.principal, ok.answered_by) == (200, "ok", "key_alice", "upstream")
    assert ok.user_agent == "tests/1" and ok.bytes_out > 0 and ok.latency_ms > 0
    assert ok.host == "127.0.0.1"
    assert abs(ok.ts.timestamp() - time.time()) < 120 and ok.ts.utcoffset() == timedelta(0)
    assert (denied.status, denied.auth, denied.answered_by, denied.latency_ms) == (401, "missing", "auth", 0.0)
    carol = hmac.new(key_hash, b"carol", hashlib.sha256).hexdigest()
    assert (fail.status, fail.login, fail.username_hash, fail.auth) == (401, "failure", carol, "public")
    assert (success.status, success.login, success.username_hash) == (200, "success", carol)
    assert fail.bytes_in > 0

    for value in raw:   # nothing secret in any message
        for secret in (gateway.alice.encode(), gateway.bob.encode(), b"s3cret-pw", b"Carol", b"carol"):
            assert secret not in value


def test_decisions_ban_lift_and_survive_malformed_messages(start_gateway: Callable[..., Gateway]):
    gateway = start_gateway()
    s = gateway.settings
    with gateway.client("127.0.0.41") as banned, gateway.client("127.0.0.42") as bystander:
        def get_banned() -> httpx.Response:
            return banned.get("/users/1", headers={"X-API-Key": gateway.alice})
        assert get_banned().status_code == 200

        # Malformed messages first: they must be skipped. (Were one to break the feed,
        # it would reconnect, re-read from the beginning and never reach the ban.)
        publish(s, b"ip:127.0.0.41", b"{not json")
        publish(s, b"ip:127.0.0.41", b'{"scope": "ip"}')
        publish(s, None, b"[]")
        publish(s, b"no-scope", None)   # a tombstone whose key is not scope:value
        ban = decision("ip", "127.0.0.41")
        publish(s, ban.key().encode(), ban.to_json())

        blocked = wait_for_status(get_banned, 403)
        assert blocked.status_code == 403
        assert blocked.json() == {"error": "blocked", "decision_id": ban.id, "scope": "ip",
                                  "expires_at": ban.expires_at.isoformat()}
        assert bystander.get("/users/1", headers={"X-API-Key": gateway.alice}).status_code == 200
        # A banned client gets 403 whatever key it sends (no key-validity oracle).
        assert banned.get("/users/1", headers={"X-API-Key": "gw_guess"}).status_code == 403

        publish(s, ban.key().encode(), None)   # tombstone lifts it
        assert wait_for_status(get_banned, 200).status_code == 200

        # Principal scope: bob is banned from any address, alice is not.
        bob_ban = decision("principal", "key_bob")
        publish(s, bob_ban.key().encode(), bob_ban.to_json())
        as_bob = wait_for_status(lambda: bystander.get("/users/1", headers={"X-API-Key": gateway.bob}), 403)
        assert as_bob.status_code == 403 and as_bob.json()["decision_id"] == bob_ban.id
        assert bystander.get("/users/1", headers={"X-API-Key": gateway.alice}).status_code == 200

        # An already expired decision deletes instead of banning.
        expired = decision("principal", "key_bob", ttl_s=-1)
        publish(s, expired.key().encode(), expired.to_json())
        assert wait_for_status(lambda: bystander.get("/users/1", headers={"X-API-Key": gateway.bob}),
                               200).status_code == 200

    events, _ = request_events(s, {blocked.headers["X-Request-Id"], as_bob.headers["X-Request-Id"]})
    ip_event, bob_event = events[blocked.headers["X-Request-Id"]], events[as_bob.headers["X-Request-Id"]]
    assert (ip_event.status, ip_event.answered_by, ip_event.decision_id) == (403, "decision", ban.id)
    assert (bob_event.principal, bob_event.decision_id) == ("key_bob", bob_ban.id)


def test_challenge_decisions_let_each_solved_request_through_once(start_gateway: Callable[..., Gateway]):
    """A ``challenge`` decision (inline/challenge.py): 403 with a challenge; the same request
    with the challenge solved (altcha's own solver, as a client SDK would) reaches the
    upstream once; a replayed or forged solution gets a new challenge. On the login route a
    ``username`` challenge applies to the account whatever the address."""
    gateway = start_gateway()
    s = gateway.settings
    with gateway.client("127.0.0.51") as challenged, gateway.client("127.0.0.52") as bystander:
        def get(**headers: str) -> httpx.Response:
            return challenged.get("/users/1", headers={"X-API-Key": gateway.alice, **headers})

        ip_challenge = decision("ip", "127.0.0.51", action="challenge")
        publish(s, ip_challenge.key().encode(), ip_challenge.to_json())
        first = wait_for_status(get, 403)
        body = first.json()
        assert first.status_code == 403 and first.headers["Gatewatch-Mitigated"] == "challenge"
        assert (body["error"], body["decision_id"], body["solution"]) == ("challenge_required", ip_challenge.id,
                                                                          "missing")
        assert body["solution_header"] == SOLUTION_HEADER

        def solve(answer: httpx.Response) -> str:
            challenge = altcha.Challenge.from_dict(answer.json()["challenge"])
            return altcha.Payload(challenge, altcha.solve_challenge(challenge)).to_base64()

        solution = solve(first)
        passed = get(**{SOLUTION_HEADER: solution})
        assert passed.status_code == 200 and passed.json()["path"] == "/users/1"
        replayed = get(**{SOLUTION_HEADER: solution})
        assert replayed.status_code == 403 and replayed.json()["solution"] == "replayed"
        payload = altcha.Payload.from_base64(solve(replayed))
        payload.solution.counter += 1   # a wrong counter under a genuine signature
        forged = get(**{SOLUTION_HEADER: payload.to_base64()})
        assert forged.status_code == 403 and forged.json()["solution"] == "invalid"
        assert bystander.get("/users/1", headers={"X-API-Key": gateway.alice}).status_code == 200

        carol = username_hash(s.username_hash_key, "carol")
        account = decision("username", carol, action="challenge")
        publish(s, account.key().encode(), account.to_json())

        def login(**headers: str) -> httpx.Response:
            return bystander.post("/login", json={"username": "Carol", "password": "guess"}, headers=headers)
        login_challenged = wait_for_status(login, 403)
        assert login_challenged.json()["decision_id"] == account.id
        assert login(**{SOLUTION_HEADER: solve(login_challenged)}).status_code == 401   # the upstream's answer
        assert bystander.post("/login", json={"username": "dave", "password": "guess"}).status_code == 401

    ids = {r.headers["X-Request-Id"] for r in (first, passed, login_challenged)}
    events, _ = request_events(s, ids)
    assert (events[first.headers["X-Request-Id"]].answered_by,
            events[first.headers["X-Request-Id"]].decision_id) == ("decision", ip_challenge.id)
    assert events[passed.headers["X-Request-Id"]].answered_by == "upstream"
    assert events[login_challenged.headers["X-Request-Id"]].decision_id == account.id


def test_upstream_down_gives_502_and_an_event(settings: GatewatchSettings, tmp_path: Path):
    raw_key = add_key(settings.keys_file, "key_alice", "alice")
    s = gateway_settings(settings, f"http://127.0.0.1:{free_port()}")   # nothing listens there
    with mitmdump(s, tmp_path / "mitmdump.log"):
        with httpx.Client(base_url=f"http://127.0.0.1:{s.listen_port}", timeout=5) as client:
            response = client.get("/users/7", headers={"X-API-Key": raw_key})
            before = client.get("/users/7").status_code   # and auth still answers first
    assert response.status_code == 502 and before == 401

    def has_502(values: list[bytes]) -> bool:
        return any(parse_request_event(v).status == 502 for v in values)
    events = [parse_request_event(v) for v in read_topic(s, s.topic_requests, has_502)]
    failed = [e for e in events if e.status == 502]
    assert len(failed) == 1
    assert (failed[0].answered_by, failed[0].principal, failed[0].route) == ("error", "key_alice", "/users/{id}")


def test_gateway_serves_while_the_broker_is_unreachable(tmp_path: Path):
    """No broker at all: mitmdump must start (aiokafka's connection errors are
    not error-level logs, which would stop it), serve, and keep retrying."""
    keys = tmp_path / "keys.toml"
    raw_key = add_key(keys, "key_alice", "alice")
    with upstream_server() as upstream:
        s = load_settings(bootstrap_servers=f"127.0.0.1:{free_port()}", keys_file=keys,
                          spool_dir=tmp_path / "spool", admin_port=0,
                          listen_port=free_port(), upstream=upstream)
        with mitmdump(s, tmp_path / "mitmdump.log") as proc:
            with httpx.Client(base_url=f"http://127.0.0.1:{s.listen_port}", timeout=5) as client:
                for _ in range(10):   # ~2 s of retries by the feed and the producer
                    assert client.get("/users/1", headers={"X-API-Key": raw_key}).status_code == 200
                    assert client.get("/users/1").status_code == 401
                    time.sleep(0.2)
            assert proc.poll() is None


def test_decisions_published_before_start_are_enforced(settings: GatewatchSettings,
                                                       start_gateway: Callable[..., Gateway]):
    """The gateway reads the decisions topic from the beginning (never "latest": Tansu quirk)."""
    old = decision("ip", "127.0.0.71")
    publish(settings, old.key().encode(), old.to_json())
    lifted = decision("ip", "127.0.0.72")
    publish(settings, lifted.key().encode(), lifted.to_json())
    publish(settings, lifted.key().encode(), None)
    gateway = start_gateway()
    with gateway.client("127.0.0.71") as banned, gateway.client("127.0.0.72") as free:
        response = wait_for_status(lambda: banned.get("/health"), 403)
        assert response.status_code == 403 and response.json()["decision_id"] == old.id
        assert free.get("/health").status_code == 200


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The real mitmdump's /metrics as {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_client_identity_lists_and_metrics(start_gateway: Callable[..., Gateway]):
    """Trusted proxies, allow/deny lists, decisions and rate limits in a real mitmdump,
    seen through its Prometheus admin port.

    127.0.0.2 is the trusted proxy: its X-Forwarded-For names the client. The same
    header from an untrusted peer (127.0.0.3) changes nothing. 127.0.0.4 is
    allow-listed: a ban on it and a tight rate limit do not apply."""
    admin = free_port()
    gateway = start_gateway(trusted_proxies=["127.0.0.2/32"], deny_list=["203.0.113.0/24"],
                            allow_list=["127.0.0.4"], admin_port=admin,
                            ip_rate_limit=RateLimit(rate_per_s=0.1, burst=3))
    s, key = gateway.settings, {"X-API-Key": gateway.alice}
    ban = decision("ip", "127.0.0.4")
    publish(s, ban.key().encode(), ban.to_json())
    ban_other = decision("ip", "198.51.100.20")
    publish(s, ban_other.key().encode(), ban_other.to_json())

    with gateway.client("127.0.0.2") as proxy, gateway.client("127.0.0.3") as spoofer, \
            gateway.client("127.0.0.4") as friend:
        denied = proxy.get("/users/1", headers={**key, "X-Forwarded-For": "6.6.6.6, 203.0.113.5"})
        assert denied.status_code == 403 and denied.json()["scope"] == "deny_list"
        banned = wait_for_status(lambda: proxy.get("/users/2", headers={**key, "X-Forwarded-For": "198.51.100.20"}),
                                 403)
        assert banned.json()["decision_id"] == ban_other.id            # ban on the forwarded client
        via_proxy = proxy.get("/users/3", headers={**key, "X-Forwarded-For": "198.51.100.21"})
        assert via_proxy.status_code == 200
        spoofed = spoofer.get("/users/4", headers={**key, "X-Forwarded-For": "203.0.113.5"})
        assert spoofed.status_code == 200                             # untrusted peer: header ignored
        assert [friend.get("/users/5", headers=key).status_code for _ in range(6)] == [200] * 6
        assert spoofer.get("/users/6").status_code == 401
        limited = [spoofer.get("/users/7", headers=key).status_code for _ in range(4)]
        assert limited[-1] == 429

    ids = {r.headers["X-Request-Id"]: r for r in (via_proxy, spoofed, denied)}
    events, _ = request_events(s, set(ids))
    assert events[via_proxy.headers["X-Request-Id"]].client_ip == "198.51.100.21"
    assert events[spoofed.headers["X-Request-Id"]].client_ip == "127.0.0.3"
    assert events[denied.headers["X-Request-Id"]].client_ip == "203.0.113.5"

    def value(name: str, **labels: str) -> float:
        return metrics.get((name, tuple(sorted(labels.items()))), 0.0)
    deadline = time.monotonic() + POLL_S
    while True:   # events are acknowledged asynchronously
        metrics = scrape(admin)
        if value("gatewatch_events_sent_total") >= 15 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert value("gatewatch_requests_total", route="/users/{id}", status="200") >= 9
    assert value("gatewatch_requests_total", route="/users/{id}", status="403") == 2
    assert value("gatewatch_requests_total", route="/users/{id}", status="401") == 1
    assert value("gatewatch_auth_failures_total", reason="missing") == 1
    assert value("gatewatch_rate_limited_total", scope="ip") >= 1
    assert value("gatewatch_blocked_total", scope="deny_list") == 1
    assert value("gatewatch_blocked_total", scope="ip") == 1
    assert value("gatewatch_decisions_active") == 2
    assert value("gatewatch_events_sent_total") >= 15
    assert value("gatewatch_broker_send_latency_seconds_count") == value("gatewatch_events_sent_total")
    assert value("gatewatch_event_queue_depth") == 0 and value("gatewatch_events_dropped_total") == 0
    assert ("gatewatch_spool_bytes", ()) in metrics


def test_two_gateways_sharing_redis_let_a_solved_challenge_through_once(
        start_gateway: Callable[..., Gateway], redis_server: RedisServer):  # noqa: F811
    """With ``challenge_redis_url`` (inline/challenge_ledger.py) a solution accepted by one
    gateway process is refused as replayed by another; with Redis gone, each gateway falls
    back to its own memory (fail open: passes once per gateway, as without Redis)."""
    first = start_gateway(challenge_redis_url=redis_server.url)
    second = start_gateway(challenge_redis_url=redis_server.url)
    s = first.settings
    ip_challenge = decision("ip", "127.0.0.61", action="challenge")
    publish(s, ip_challenge.key().encode(), ip_challenge.to_json())
    with first.client("127.0.0.61") as via_first, second.client("127.0.0.61") as via_second:
        def get(client: httpx.Client, **headers: str) -> httpx.Response:
            return client.get("/users/1", headers={"X-API-Key": first.alice, **headers})

        def solve(answer: httpx.Response) -> str:
            challenge = altcha.Challenge.from_dict(answer.json()["challenge"])
            return altcha.Payload(challenge, altcha.solve_challenge(challenge)).to_base64()

        asked = wait_for_status(lambda: get(via_first), 403)
        assert wait_for_status(lambda: get(via_second), 403).status_code == 403
        solution = solve(asked)
        assert get(via_first, **{SOLUTION_HEADER: solution}).status_code == 200
        replayed = get(via_second, **{SOLUTION_HEADER: solution})
        assert replayed.status_code == 403 and replayed.json()["solution"] == "replayed"
        assert get(via_second, **{SOLUTION_HEADER: solve(replayed)}).status_code == 200   # a fresh one passes

        redis_server.kill()
        unshared = solve(get(via_first))
        assert get(via_first, **{SOLUTION_HEADER: unshared}).status_code == 200
        again = get(via_first, **{SOLUTION_HEADER: unshared})
        assert again.status_code == 403 and again.json()["solution"] == "replayed"   # this gateway remembers
        assert get(via_second, **{SOLUTION_HEADER: unshared}).status_code == 200    # the other cannot know
