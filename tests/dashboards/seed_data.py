"""A real chDB store with the real schema (storage migrations) and seeded traffic.

The seed is four hours of realistic, deterministic traffic (08:00–12:00 UTC on
2025-03-01) written through ``storage.writer``: benign API clients in eight
countries over IPv4 and IPv6 on four routes, a scanner without credentials, a
client with a wrong key, an authorization-server outage, a rate-limited
burst, a slow route after 11:30, and a credential-stuffing attack from
203.0.113.0/24 (RU, AS64500) and 2001:db8:bad::/64 (CN, AS64501) from 10:50,
blocked by decisions from 11:00. Detections of four detectors and decisions
of five scopes go with it, one of them deleted at 11:40 (its deletion record,
as `gatewatch decisions delete` publishes it); one batch of requests and one
detection are written twice (the sink is at-least-once) to prove the queries
deduplicate (and the request rollups count that batch twice, as documented).

Dashboards look at 10:00–12:00 (:data:`RANGE_FROM`, :data:`RANGE_TO`).

chDB allows one data path per process at a time: the store is module-scoped
and closed before the next module opens another.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from gatewatch.decision_feed import lift
from gatewatch.events import Decision, Detection, RequestEvent
from gatewatch.settings import load_settings
from storage.client import get_client
from storage.migrations import migrate
from storage.writer import write_decisions, write_detections, write_requests

DAY = datetime(2025, 3, 1, tzinfo=timezone.utc)
SEED_FROM = DAY.replace(hour=8)
RANGE_FROM = DAY.replace(hour=10)
RANGE_TO = DAY.replace(hour=12)
ATTACK_FROM = DAY.replace(hour=10, minute=50)
BLOCK_FROM = DAY.replace(hour=11)
SLOW_FROM = DAY.replace(hour=11, minute=30)
#: Requests written a second time (the last ones: attack traffic inside the range).
REDELIVERED = 300
#: When `gatewatch decisions delete` lifted decision dec-deleted-1 (its deletion record).
DELETED_AT = DAY.replace(hour=11, minute=40)

#: (ip, country, asn, principal) of the benign clients.
BENIGN = [
    ("198.51.100.10", "US", 7018, "key_01"), ("198.51.100.11", "US", 7018, "key_02"),
    ("198.51.100.20", "DE", 3320, "key_03"), ("198.51.100.21", "DE", 3320, "key_04"),
    ("198.51.100.30", "FR", 3215, "key_05"), ("198.51.100.40", "GB", 2856, "key_06"),
    ("198.51.100.50", "JP", 2516, "key_07"), ("198.51.100.60", "BR", 28573, "key_08"),
    ("198.51.100.70", "IN", 9829, "key_09"), ("198.51.100.80", "CA", 577, "key_10"),
    ("2001:db8:1::10", "US", 7018, "key_11"), ("2001:db8:2::20", "DE", 3320, "key_12"),
]
ATTACKERS = ([(f"203.0.113.{i}", "RU", 64500) for i in range(10, 20)]
             + [(f"2001:db8:bad::{i}", "CN", 64501) for i in range(1, 4)])
SCANNER = ("192.0.2.50", "NL", 1136)
WRONG_KEY = ("192.0.2.51", "NL", 1136)
ROUTES = [("GET", "/users/{id}", "/users/{}"), ("GET", "/orders/{id}", "/orders/{}"),
          ("POST", "/login", "/login"), ("GET", "/health", "/health")]


@dataclass
class Seed:
    """What was written, for assertions: the events, detections and decisions."""

    events: list[RequestEvent] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)

    def event(self, ts: datetime, ip: str, country: str | None, asn: int | None, method: str,
              route: str, path: str, status: int, **kw) -> RequestEvent:
        """Append one request event (ids are sequential, so the seed is deterministic)."""
        event = RequestEvent(event_id=f"ev{len(self.events):06d}", ts=ts, client_ip=ip, method=method,
                             host="api.example", path=path, route=route, status=status,
                             country=country, asn=asn, user_agent="seed", **kw)
        self.events.append(event)
        return event


def _benign(seed: Seed, rng: random.Random) -> None:
    minute = SEED_FROM
    while minute < RANGE_TO:
        for ip, country, asn, key in BENIGN:
            method, route, template = rng.choice(ROUTES)
            ts = minute + timedelta(seconds=rng.uniform(0, 59.9))
            latency = rng.lognormvariate(3.3, 0.3)  # ~27 ms median
            if route == "/orders/{id}" and ts >= SLOW_FROM:
                latency *= 4  # the regression the latency panels show
            if route == "/login":
                seed.event(ts, ip, country, asn, method, route, template, 200, latency_ms=latency,
                           login="success", username_hash=f"user-{key}")
                continue
            status = 502 if rng.random() < 0.01 else 404 if rng.random() < 0.05 else 200
            auth = "public" if route == "/health" else "ok"
            seed.event(ts, ip, country, asn, method, route, template.format(rng.randint(1, 500)), status,
                       latency_ms=latency, principal="" if auth == "public" else key, auth=auth)
        minute += timedelta(minutes=1)


def _auth_trouble(seed: Seed, rng: random.Random) -> None:
    t = SEED_FROM
    while t < RANGE_TO:  # a scanner without credentials and a client with a revoked key
        seed.event(t, SCANNER[0], SCANNER[1], SCANNER[2], "GET", "/users/{id}", "/users/1", 401,
                   auth="missing", answered_by="auth")
        seed.event(t + timedelta(seconds=30), WRONG_KEY[0], WRONG_KEY[1], WRONG_KEY[2], "GET",
                   "/orders/{id}", "/orders/9", 401, auth="invalid", answered_by="auth")
        t += timedelta(minutes=3)
    t = SEED_FROM
    while t < RANGE_TO:  # an internal health checker: no country, no ASN
        seed.event(t, "10.0.0.5", None, None, "GET", "/health", "/health", 200, latency_ms=2.0)
        t += timedelta(minutes=5)
    outage = DAY.replace(hour=11, minute=5)  # the authorization server is down for a minute
    for i in range(20):
        ip, country, asn, key = BENIGN[i % len(BENIGN)]
        seed.event(outage + timedelta(seconds=3 * i), ip, country, asn, "GET", "/users/{id}", "/users/5",
                   503, auth="unavailable", answered_by="auth")
    burst = DAY.replace(hour=10, minute=30)  # key_03 exceeds its rate limit
    ip, country, asn, key = BENIGN[2]
    for i in range(40):
        seed.event(burst + timedelta(milliseconds=250 * i), ip, country, asn, "GET", "/users/{id}",
                   f"/users/{i}", 429, principal=key, auth="ok", answered_by="rate_limit")
    bola = DAY.replace(hour=10, minute=38)  # key_07 walks other users' orders
    ip, country, asn, key = BENIGN[6]
    for i in range(15):
        seed.event(bola + timedelta(seconds=5 * i), ip, country, asn, "GET", "/orders/{id}",
                   f"/orders/{1000 + i}", 403, principal=key, auth="ok", latency_ms=12.0)
    _ = rng


def _attack(seed: Seed, rng: random.Random) -> dict[str, list[str]]:
    samples: dict[str, list[str]] = {}
    t = ATTACK_FROM
    while t < RANGE_TO:
        ip, country, asn = ATTACKERS[rng.randrange(len(ATTACKERS))]
        if t < BLOCK_FROM:
            event = seed.event(t, ip, country, asn, "POST", "/login", "/login", 401, latency_ms=15.0,
                               login="failure", username_hash=f"victim-{rng.randrange(5000)}")
        else:
            event = seed.event(t, ip, country, asn, "POST", "/login", "/login", 403,
                               answered_by="decision", decision_id="dec-prefix-1")
        samples.setdefault(ip, []).append(event.event_id)
        t += timedelta(seconds=rng.uniform(0.5, 1.5))
    return samples


def _detections(seed: Seed, samples: dict[str, list[str]]) -> None:
    def det(minute: int, hour: int, detector: str, scope: str, value: str, ids: list[str], **kw) -> None:
        seed.detections.append(Detection(
            detection_id=f"det-{detector}-{scope}-{value}", ts=DAY.replace(hour=hour, minute=minute),
            detector=detector, scope=scope, value=value, sample_event_ids=ids[:10],
            summary=f"{detector} on {scope} {value}", **kw))

    v4 = [i for ip, ids in samples.items() if ip.startswith("203.") for i in ids]
    v6 = [i for ip, ids in samples.items() if ip.startswith("2001:") for i in ids]
    det(54, 10, "credential_stuffing", "ip", "203.0.113.10", samples["203.0.113.10"],
        evidence={"rule": "ip", "failures": 12})
    det(57, 10, "credential_stuffing", "global", "*", v4[:5] + v6[:5], severity="medium",
        evidence={"rule": "global_spike"})
    det(58, 10, "credential_stuffing", "prefix", "203.0.113.0/24", v4, evidence={"rule": "prefix"})
    det(59, 10, "credential_stuffing", "prefix", "2001:db8:bad::/64", v6, evidence={"rule": "prefix"})
    det(0, 11, "credential_stuffing", "asn", "64500", v4, evidence={"rule": "asn"})
    bola_ids = [e.event_id for e in seed.events if e.principal == "key_07" and e.status == 403]
    det(39, 10, "bola", "principal", "key_07", bola_ids, evidence={"distinct_objects": 15})
    slow = [e.event_id for e in seed.events if e.route == "/orders/{id}" and e.ts >= SLOW_FROM][:10]
    det(40, 11, "latency_regression", "route", "GET /orders/{id}", slow, severity="high", score=1.9,
        evidence={"state": "regression", "baseline_p95_ms": 41.0, "current_p95_ms": 160.0})
    jp = [e.event_id for e in seed.events if e.country == "JP" and e.ts >= RANGE_FROM][:3]
    det(20, 10, "geo", "principal", "key_07", jp, severity="medium",
        evidence={"kind": "new_country", "country": "JP"})


def _decisions(seed: Seed) -> None:
    def dec(id_: str, scope: str, value: str, created: datetime, ttl: timedelta, **kw) -> None:
        seed.decisions.append(Decision(id=id_, scope=scope, value=value, created_at=created,
                                       expires_at=created + ttl, reason=f"{scope} {value}", **kw))

    dec("dec-ip-1", "ip", "203.0.113.10", DAY.replace(hour=10, minute=54), timedelta(hours=2),
        detector="credential_stuffing")
    dec("dec-prefix-1", "prefix", "203.0.113.0/24", DAY.replace(hour=10, minute=58), timedelta(hours=1),
        detector="credential_stuffing")  # expired at 11:58 ...
    dec("dec-prefix-2", "prefix", "203.0.113.0/24", DAY.replace(hour=11, minute=30), timedelta(hours=2),
        detector="credential_stuffing")  # ... but replaced by an escalation at 11:30
    dec("dec-asn-1", "asn", "64500", DAY.replace(hour=11), timedelta(minutes=10), action="throttle",
        detector="credential_stuffing")  # expired at 11:10
    dec("dec-principal-1", "principal", "key_07", DAY.replace(hour=10, minute=40), timedelta(hours=4),
        detector="bola")
    dec("dec-username-1", "username", "victim-hash", DAY.replace(hour=11, minute=20), timedelta(hours=1),
        detector="manual", origin="cli")
    dec("dec-later-1", "ip", "192.0.2.99", DAY.replace(hour=12, minute=30), timedelta(hours=1),
        detector="manual", origin="cli")  # created after the range: not active at its end
    dec("dec-deleted-1", "ip", "203.0.113.12", DAY.replace(hour=11, minute=10), timedelta(hours=4),
        detector="credential_stuffing")  # in force until 15:10 ... but deleted at 11:40:
    seed.decisions.append(lift("ip", "203.0.113.12", seed.decisions[-1], now=DELETED_AT))


def build_seed() -> Seed:
    """The deterministic seed described in the module docstring."""
    rng = random.Random(20250301)
    seed = Seed()
    _benign(seed, rng)
    _auth_trouble(seed, rng)
    samples = _attack(seed, rng)
    _detections(seed, samples)
    _decisions(seed)
    return seed


@pytest.fixture(scope="module")
def seed() -> Seed:
    """The seeded records (the same for every module)."""
    return build_seed()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, seed: Seed) -> Iterator[Client]:
    """A migrated chDB store holding :func:`seed`, with the last :data:`REDELIVERED` requests (attack
    traffic, inside the dashboards' range) and one detection written twice; closed at the
    end of the module."""
    path: Path = tmp_path_factory.mktemp("dashboards") / "chdb"
    client = get_client(load_settings(chdb_path=path, clickhouse_url=None))
    try:
        migrate(client)
        for table_rows in (write_requests(client, seed.events),
                           write_requests(client, seed.events[-REDELIVERED:]),
                           write_detections(client, seed.detections),
                           write_detections(client, seed.detections[:1]),
                           write_decisions(client, seed.decisions)):
            assert not table_rows.rejected, table_rows.rejected
        yield client
    finally:
        client.close()
