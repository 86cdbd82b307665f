"""No secret is ever written by the pipeline: an attack run with known secrets through the
whole stack (sample API, Tansu, worker with chDB, gateway, a real Alertmanager), then a
scan of everything the run wrote.

Secrets sent: a valid API key and invalid ones (``X-API-Key``), login passwords (JSON
and form bodies, failed — a credential-stuffing attack that ends in a ban and alerts —
and successful), the session token the sample API hands out, as a bearer token, a
JWT, HTTP Basic ``user:pass``, a session cookie, secret query parameters
(``api_key``, ``token``, ``password``, ``access_token`` …, in any case, URL-encoded
values) and credentials in path segments (a JWT, an API key). The stack's own
secrets (admin token, decision signing key, username hash key) are searched too.

Scanned after the run (:mod:`secret_scan`): every record of every topic on the broker
(to the high-watermark), every row of every ClickHouse table (chDB opened after the
stack stopped), every file of the run directory (logs of gateway, worker and broker,
the gateway's event spool, the store directory) except the sample API's log — the
protected upstream, which legitimately receives credentials — and every alert
Alertmanager holds. Each secret is searched raw, URL-encoded, JSON-escaped, as
base64 at every alignment and by its first characters.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from pathlib import Path
from urllib.parse import quote, urlencode

import httpx
import pytest

from gatewatch.keys import add_key
from gatewatch.launcher import Stack
from gatewatch.sample_api import password_for
from gatewatch.settings import AlertingSettings, load_settings
from secret_scan import Scanner, needles

ATTACKER_IP = "127.0.0.71"
USER_IP = "127.0.0.72"
PROBE_IP = "127.0.0.73"
#: Failed logins of the attack: above the credential-stuffing thresholds (10 failures, 5 usernames).
ATTACK_ATTEMPTS = 30


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def fake_jwt(subject: str) -> str:
    """A JWT-shaped bearer token (header.payload.signature, base64url) with random parts."""
    header = b64url(json.dumps({"kid": secrets.token_hex(8), "alg": "RS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"sub": subject, "jti": secrets.token_hex(16), "exp": 4102444800}).encode())
    return f"{header}.{payload}.{b64url(secrets.token_bytes(64))}"


def special_secret(tag: str) -> str:
    """A password-like secret with characters that URL- and form-encoding change."""
    return f"{tag}-{secrets.token_urlsafe(12)} +/&=%?é"


class AttackRun:
    """Sends the requests with secrets; ``secrets`` collects every secret sent."""

    def __init__(self, gateway_url: str, valid_key: str) -> None:
        self.url = gateway_url
        self.valid_key = valid_key
        self.secrets: set[str] = {valid_key}
        self.statuses: dict[str, list[int]] = {}

    def client(self, ip: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, transport=httpx.HTTPTransport(local_address=ip))

    def note(self, what: str, resp: httpx.Response) -> httpx.Response:
        self.statuses.setdefault(what, []).append(resp.status_code)
        return resp

    def secret(self, value: str) -> str:
        self.secrets.add(value)
        return value

    def credential_stuffing(self) -> None:
        with self.client(ATTACKER_IP) as c:
            for i in range(ATTACK_ATTEMPTS):
                password = self.secret(special_secret(f"stuffed{i}"))
                if i % 3 == 2:   # form-encoded: the sample API answers 400, the gateway still sees a password
                    self.note("login-form", c.post("/login", content=urlencode({"username": f"user{i}",
                                                                                 "password": password}),
                                                   headers={"Content-Type": "application/x-www-form-urlencoded"}))
                else:
                    self.note("login-json", c.post("/login", json={"username": f"user{i % 20 + 1}",
                                                                   "password": password}))
                time.sleep(0.02)

    def legitimate_user(self) -> None:
        with self.client(USER_IP) as c:
            password = self.secret(password_for("user1"))
            resp = self.note("login-ok", c.post("/login", json={"username": "user1", "password": password}))
            token = self.secret(resp.json()["token"])
            key = {"X-API-Key": self.valid_key}
            self.note("bearer-session", c.get("/users/1", headers={**key, "Authorization": f"Bearer {token}"}))
            self.note("cookie", c.get("/users/1/orders", headers={
                **key, "Authorization": f"Bearer {token}",
                "Cookie": f"session={self.secret(secrets.token_urlsafe(24))}; theme=dark"}))
            query = {"api_key": self.valid_key, "token": token, "password": self.secret(special_secret("qp")),
                     "access_token": self.secret(fake_jwt("user1")), "APIKEY": self.secret(secrets.token_hex(20)),
                     "Client_Secret": self.secret(secrets.token_urlsafe(20)), "id_token": self.secret(fake_jwt("u")),
                     "page": "2"}
            self.note("query", c.get("/users/1?" + urlencode(query), headers=key))
            self.note("query-quote", c.get("/users/1?" + urlencode(query, quote_via=quote), headers=key))

    def probes(self) -> None:
        with self.client(PROBE_IP) as c:
            for _ in range(2):
                self.note("bad-key", c.get("/users/2", headers={"X-API-Key": self.secret(
                    "gw_" + secrets.token_urlsafe(32))}))
            self.note("other-key", c.get("/orders/5", headers={"X-API-Key": self.secret(
                "sk_live_" + secrets.token_urlsafe(24))}))
            jwt = self.secret(fake_jwt("mallory"))
            self.secret(jwt.rsplit(".", 1)[1])
            self.note("jwt", c.get("/users/3", headers={"Authorization": f"Bearer {jwt}"}))
            self.note("opaque-bearer", c.get("/users/3", headers={
                "Authorization": f"Bearer {self.secret(secrets.token_urlsafe(30))}"}))
            basic = self.secret(f"user2:{special_secret('basic')}")
            self.note("basic", c.get("/users/2", headers={
                "Authorization": "Basic " + base64.b64encode(basic.encode()).decode()}))
            self.note("jwt-in-path", c.get(f"/users/1/verify/{self.secret(fake_jwt('reset'))}",
                                           headers={"X-API-Key": self.valid_key}))
            self.note("key-in-path", c.get(f"/keys/{self.secret('gw_' + secrets.token_urlsafe(32))}/revoke",
                                           headers={"X-API-Key": self.valid_key}))


def wait_for_alerts(alertmanager: str, timeout_s: float = 30.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        alerts = httpx.get(f"{alertmanager}/api/v2/alerts", timeout=5).json()
        if any(a["labels"].get("alertname") == "GatewatchDecision" for a in alerts) or time.monotonic() > deadline:
            return alerts
        time.sleep(0.5)


def test_scanner_finds_every_form_of_a_secret(tmp_path: Path) -> None:
    """The scan itself works: a canary holding a secret in each encoding is found in each."""
    secret = special_secret("canary")
    scanner = Scanner([secret])
    blobs = [secret.encode(), quote(secret, safe="").encode(), urlencode({"p": secret}).encode(),
             json.dumps({"p": secret}).encode(), secret[:16].encode() + b"...",
             base64.b64encode(b"xx" + secret.encode() + b"y"), base64.urlsafe_b64encode(b"z" + secret.encode())]
    for i, blob in enumerate(blobs):
        (tmp_path / f"canary-{i}.log").write_bytes(b"before " + blob + b" after")
    found = scanner.files(tmp_path)
    assert {f.where for f in found} == {f"canary-{i}.log" for i in range(len(blobs))}
    assert {n.form for n in needles(secret)} >= {"raw", "url", "url-plus", "json", "prefix", "base64"}


@pytest.mark.e2e
def test_no_secret_in_anything_the_pipeline_wrote(tmp_path: Path, alertmanager: str) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    valid_key = add_key(run_dir / "keys.toml", "key_user1", owner="user1")
    own = {"admin_token": secrets.token_hex(20), "decision_signing_key": secrets.token_urlsafe(32),
           "username_hash_key": secrets.token_urlsafe(32)}
    settings = load_settings(keys_file=run_dir / "keys.toml", listen_port=0,
                             alerting=AlertingSettings(alertmanager_url=alertmanager), **own)
    stack = Stack(settings, run_dir, sample_api=True)
    stack.start()
    try:
        run = AttackRun(stack.gateway_url, valid_key)
        run.legitimate_user()
        run.probes()
        run.credential_stuffing()
        alerts = wait_for_alerts(alertmanager)
        time.sleep(2.0)   # the sink's last batch (0.5 s) and the gateway's events are flushed on stop anyway
        bootstrap = stack.settings.bootstrap_servers
        chdb_settings = stack.settings
        scanner = Scanner(run.secrets | set(own.values()))
        in_topics = scanner.topics(bootstrap)
    finally:
        stack.stop()

    # The run did what it should, so that the scan is not of an empty pipeline.
    assert run.statuses["login-ok"] == [200] and set(run.statuses["bad-key"]) == {401}
    assert 403 in run.statuses["login-json"], "the credential-stuffing attacker was never banned"
    assert any(a["labels"].get("alertname") == "GatewatchDecision" for a in alerts), alerts

    from storage.client import get_client   # the worker has stopped: chDB is ours to open
    client = get_client(chdb_settings)
    try:
        in_tables = scanner.tables(client)
        stored = int(client.query("SELECT count() FROM requests").result_rows[0][0])
    finally:
        client.close()
    in_files = scanner.files(run_dir, skip=[run_dir / "sample-api.log"])
    in_alerts = scanner.scan("alerts", "alertmanager /api/v2/alerts", json.dumps(alerts).encode())

    sent = sum(len(v) for v in run.statuses.values())
    assert stored >= sent, f"{stored} requests stored of {sent} sent"
    assert scanner.scanned["topics"] >= 6 and scanner.scanned["records"] >= sent
    assert scanner.scanned["tables"] >= 3 and scanner.scanned["files"] >= 4
    leaks = [str(f) for f in in_topics + in_tables + in_files + in_alerts]
    assert not leaks, "secrets written by the pipeline:\n" + "\n".join(sorted(set(leaks)))
