"""Generate the labelled detector cases in ``cases/`` from a fixed seed.

Run ``python tests/detectors/make_cases.py`` after changing a scenario and
commit the files it writes; ``test_generated_cases_are_reproducible`` checks
that the committed files are exactly what this script produces. Hand-written
cases (the other folders in ``cases/``) are left alone.

The expectations come from each scenario's labels (who attacks, which
accounts are targeted) and the documented thresholds — never from running
the detectors.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from behaviour_history import FLOODER, benign_history, flooder, scraper  # noqa: E402
from gatewatch.events import RequestEvent  # noqa: E402

SEED = 20250301
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
CASES_DIR = Path(__file__).parent / "cases"
HOST = "api.example"


def uhash(username: str) -> str:
    """Stand-in for the gateway's keyed username hash."""
    return hashlib.sha256(f"case-key|{username}".encode()).hexdigest()


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=round(seconds, 3))


def event(eid: str, t: float, ip: str, **kw: Any) -> RequestEvent:
    fields: dict[str, Any] = dict(event_id=eid, ts=at(t), client_ip=ip, method="GET", host=HOST,
                                  path="/", route="/", status=200, latency_ms=5.0,
                                  user_agent="case/2")
    return RequestEvent(**(fields | kw))


def login(eid: str, t: float, ip: str, user: str, ok: bool, **kw: Any) -> RequestEvent:
    return event(eid, t, ip, method="POST", path="/login", route="/login", status=200 if ok else 401,
                 login="success" if ok else "failure", username_hash=uhash(user), **kw)


def blocked(eid: str, t: float, ip: str, path: str, route: str, method: str = "GET",
            principal: str = "") -> RequestEvent:
    """A request the gateway answered with a decision's 403 (after the ban)."""
    return event(eid, t, ip, method=method, path=path, route=route, status=403, latency_ms=0.0,
                 answered_by="decision", decision_id="d" * 32, principal=principal,
                 auth="ok" if principal else "public")


def api_call(eid: str, t: float, ip: str, principal: str, path: str, route: str, status: int,
             latency_ms: float = 8.0, method: str = "GET") -> RequestEvent:
    return event(eid, t, ip, method=method, path=path, route=route, status=status,
                 latency_ms=latency_ms, principal=principal, auth="ok" if principal else "public")


# -- credential stuffing ------------------------------------------------------------------


def benign_logins(rng: random.Random, prefix: str, users: list[tuple[str, str]], start: float,
                  end: float, typo_rate: float, every_s: float | None = None) -> list[RequestEvent]:
    """Each (user, ip) logs in at random times in [start, end) (once, or every ~every_s),
    sometimes after one or two typos a few seconds earlier."""
    out: list[RequestEvent] = []
    n = 0
    for user, ip in users:
        times = [rng.uniform(start, end)]
        if every_s:
            t = start + rng.uniform(0, every_s)
            times = []
            while t < end:
                times.append(t)
                t += rng.uniform(0.5 * every_s, 1.5 * every_s)
        for t in times:
            if rng.random() < typo_rate:
                for k in range(rng.choice([1, 1, 2])):
                    out.append(login(f"{prefix}-{n:04d}", max(start, t - 3 - 4 * k), ip, user, False))
                    n += 1
            out.append(login(f"{prefix}-{n:04d}", t, ip, user, True))
            n += 1
    return out


def cs_fast_stuffing_one_ip(rng: random.Random) -> tuple[list[RequestEvent], dict[str, Any]]:
    users = [(f"staff{i}", f"198.51.100.{10 + i}") for i in range(30)]
    events = benign_logins(rng, "fast-ok", users, 0, 120, typo_rate=0.2)
    attacker = "203.0.113.50"
    combos = rng.sample([f"user{k}" for k in range(1, 201)] + [f"person{k}@mail.test" for k in range(200)], 300)
    in_flight = 2  # attempts answered by the upstream after the 10th, before the ban is enforced
    for i, user in enumerate(combos):
        t = 30 + i / 150  # 150 attempts per second
        if i < 10 + in_flight:
            events.append(login(f"fast-atk-{i:04d}", t, attacker, user, False))
        else:
            events.append(blocked(f"fast-atk-{i:04d}", t, attacker, "/login", "/login", "POST"))
    return events, {
        "description": ("One IP stuffing 300 leaked credentials at 150 attempts/s among 30 benign users "
                        "(20 % typos) of the same /24. The ip rule fires on the 10th failure; the gateway "
                        "answers the rest. Nothing else fires: the benign typos are single failures."),
        "detector": "credential_stuffing",
        "detections": [{"scope": "ip", "value": attacker, "trigger_event_id": "fast-atk-0009",
                        "evidence": {"rule": "ip", "failures": 10, "distinct_usernames": 10,
                                     "successes": 0}}],
        "decisions": [{"scope": "ip", "value": attacker, "action": "ban"}],
    }


def low_and_slow_attack(rng: random.Random, prefix: str, targets: list[str]) -> list[RequestEvent]:
    """200 IPs in 200 different /24s, 3 failed logins each at random times in [600, 1200) s,
    on 3 distinct ``targets`` each; every target tried 5 times (120 targets), from >= 2 IPs."""
    nets = rng.sample([(a, b) for a in (18, 19) for b in range(256)], 200)
    ips = [f"198.{a}.{b}.{rng.randint(1, 254)}" for a, b in nets]
    while True:  # 5 attempts per target, 3 per IP, each IP on 3 distinct targets, each target from >= 2 IPs
        slots = [t for t in targets for _ in range(5)]
        rng.shuffle(slots)
        per_ip = [slots[3 * i:3 * i + 3] for i in range(200)]
        ips_of: dict[str, set[str]] = {}
        for ip, users in zip(ips, per_ip):
            for user in users:
                ips_of.setdefault(user, set()).add(ip)
        if all(len(set(u)) == 3 for u in per_ip) and all(len(s) >= 2 for s in ips_of.values()):
            break
    events, n = [], 0
    for ip, users in zip(ips, per_ip):
        for user in users:
            events.append(login(f"{prefix}-{n:04d}", rng.uniform(600, 1200), ip, user, False))
            n += 1
    return events


def spike_expectations(targets: list[str], spared: list[str]) -> dict[str, Any]:
    """A low-and-slow attack's findings: the spike and every target's username challenged; no
    IP, prefix or ASN rule, and none of the ``spared`` usernames."""
    return {
        "detector": "credential_stuffing",
        "must_detect": [{"scope": "global", "value": "login_failures"}]
        + [{"scope": "username", "value": uhash(u)} for u in targets],
        "must_not_detect": [{"scope": "ip"}, {"scope": "prefix"}, {"scope": "asn"}]
        + [{"scope": "username", "value": uhash(u)} for u in spared],
        "decisions": [{"scope": "username", "value": uhash(u), "action": "challenge"} for u in targets],
    }


def cs_low_and_slow_200_ips(rng: random.Random) -> tuple[list[RequestEvent], dict[str, Any]]:
    staff = [(f"staff{i}", f"198.51.100.{10 + i}" if i % 3 else f"2001:db8:100::{i:x}") for i in range(40)]
    events = benign_logins(rng, "ls-ok", staff, 0, 1500, typo_rate=0.1, every_s=180)
    targets = [f"victim{k}@mail.test" for k in range(120)]
    events += low_and_slow_attack(rng, "ls-atk", targets)
    staff_names = [u for u, _ in staff]
    return events, {
        "description": ("Low-and-slow stuffing: 200 IPs in 200 different /24s, 3 attempts each over 10 "
                        "minutes, 120 accounts tried 5 times each from several IPs, among 40 staff "
                        "logging in every ~3 minutes (10 % typos). No IP or prefix crosses a threshold; "
                        "the global failed-login rate spikes (60/min against a baseline near 1), and "
                        "every targeted account gets a username challenge. No staff account does."),
        **spike_expectations(targets, staff_names),
    }


def cs_spike_owners_typo_on_two_networks(rng: random.Random) -> tuple[list[RequestEvent], dict[str, Any]]:
    targets = [f"victim{k}@mail.test" for k in range(120)]
    events = low_and_slow_attack(rng, "ow-atk", targets)
    travellers = [f"traveller{i}" for i in range(8)]
    for i, user in enumerate(travellers):  # home, then a VPN exit (or another network) and back
        home, away = f"203.0.113.{10 + i}", f"192.0.2.{10 + i}"
        t_home = rng.uniform(300, 900)
        t_away = t_home + rng.uniform(60, 240)
        for k, (t, ip) in enumerate(((t_home, home), (t_away, away))):
            events.append(login(f"ow-{user}-{k}-typo", t, ip, user, False))
            events.append(login(f"ow-{user}-{k}-ok", t + 2.0, ip, user, True))
        if i % 2:  # a second typo on the way back home
            events.append(login(f"ow-{user}-2-typo", t_away + 120, home, user, False))
            events.append(login(f"ow-{user}-2-ok", t_away + 122, home, user, True))
    owners = targets[:4]  # attacked accounts whose owners log in (after a typo) during the attack
    for i, user in enumerate(owners):
        ip, t = f"203.0.113.{100 + i}", rng.uniform(700, 1100)
        events.append(login(f"ow-owner{i}-typo", t, ip, user, False))
        events.append(login(f"ow-owner{i}-ok", t + 2.0, ip, user, True))
    return events, {
        "description": ("The low-and-slow attack of cs_low_and_slow_200_ips (the failed-login spike, 120 "
                        "accounts tried from >= 2 IPs each) while 8 people mistype at home, log in, move "
                        "to another network (a VPN exit) within 1-4 minutes, mistype and log in again; half "
                        "of them mistype once more back home. Each makes 2-3 failures from 2 addresses, "
                        "some during the spike, but every failure comes from an address that logged in to the "
                        "account (the owner rule): none is challenged. Four attacked accounts' owners "
                        "mistype and log in during the attack: their accounts are still challenged (the "
                        "attackers' addresses never logged in to them)."),
        **spike_expectations(targets, travellers),
    }


def cs_corporate_nat(rng: random.Random) -> tuple[list[RequestEvent], dict[str, Any]]:
    nat = "192.0.2.200"
    users = [(f"employee{i}", nat) for i in range(300)]
    events = benign_logins(rng, "nat", users, 0, 300, typo_rate=0.2)  # the 9 o'clock rush
    for k in range(2):  # two people who forgot their password, six tries each
        for j in range(6):
            events.append(login(f"nat-forgot-{k}-{j}", 60 + 100 * k + 15 * j, nat, f"forgetful{k}", False))
    failures = sorted(e.ts for e in events if e.login == "failure")
    worst = max(sum(1 for t in failures if s <= t < s + timedelta(seconds=60)) for s in failures)
    assert worst >= 10, "the NAT case must cross the per-IP failure count"
    return events, {
        "description": (f"300 employees behind one NAT address log in within 5 minutes; 20 % mistype "
                        f"first, two forgot their password (6 failures each). Up to {worst} failures over as "
                        "many usernames fall in one 60 s window — past min_failures=10 — but about 80 % of "
                        "the address's logins succeed (failure share < min_failure_share=0.5): no ban, no "
                        "throttle, no spike."),
        "detector": "credential_stuffing",
        "detections": [],
        "must_not_detect": [{"scope": "ip"}, {"scope": "prefix"}, {"scope": "username"}],
        "decisions": [],
    }


def cs_benign_typo_users(rng: random.Random) -> tuple[list[RequestEvent], dict[str, Any]]:
    users = [(f"user{i}", f"203.0.113.{i + 1}" if i % 2 else f"2001:db8:7::{i + 1:x}") for i in range(60)]
    events = benign_logins(rng, "typo", users, 0, 1800, typo_rate=0.3, every_s=600)
    for k in range(3):  # forgot the password: four failures, a reset, then a success
        ip = f"203.0.113.{200 + k}"
        for j in range(4):
            events.append(login(f"typo-forgot-{k}-{j}", 100 + 300 * k + 10 * j, ip, f"forgetful{k}", False))
        events.append(login(f"typo-forgot-{k}-ok", 400 + 300 * k, ip, f"forgetful{k}", True))
    return events, {
        "description": ("60 users on their own IPv4/IPv6 addresses over 30 minutes, 30 % with one or two "
                        "typos, three who forget their password (4 failures, reset, success). Nothing fires."),
        "detector": "credential_stuffing",
        "detections": [],
        "decisions": [],
    }


# -- BOLA -----------------------------------------------------------------------------------


def benign_owners(rng: random.Random, prefix: str, n: int, duration_s: float,
                  foreign_rate: float = 0.05) -> tuple[list[RequestEvent], list[str]]:
    """``n`` principals reading their own orders every ~3 s, sometimes a foreign/missing one."""
    out: list[RequestEvent] = []
    principals = []
    k = 0
    for i in range(n):
        principal, ip = f"key-u{i}", f"198.51.100.{20 + i}"
        principals.append(principal)
        own = rng.sample(range(1000, 9999), 5)
        t = rng.uniform(0, 3)
        while t < duration_s:
            if rng.random() < foreign_rate:
                oid, status = rng.randint(90_000, 99_999), rng.choice([403, 404])
            else:
                oid, status = rng.choice(own), 200
            out.append(api_call(f"{prefix}-{k:05d}", t, ip, principal, f"/orders/{oid}", "/orders/{id}", status))
            k += 1
            t += rng.uniform(1.5, 4.5)
    return out, principals


def bola_sequential_ids(rng: random.Random) -> tuple[list[RequestEvent], dict[str, Any]]:
    events, benign = benign_owners(rng, "seq-ok", 8, 300)
    attacker, ip, own = "key-attacker", "203.0.113.66", {5003, 5010}
    for i, oid in enumerate(range(5000, 5120)):
        t = 60 + i / 150
        if i < 22:  # the 20th distinct id fires; two more are in flight before the ban holds
            status = 200 if oid in own else (403 if rng.random() < 0.7 else 404)
            events.append(api_call(f"seq-atk-{i:04d}", t, ip, attacker, f"/orders/{oid}", "/orders/{id}", status))
        else:
            events.append(blocked(f"seq-atk-{i:04d}", t, ip, f"/orders/{oid}", "/orders/{id}", principal=attacker))
    return events, {
        "description": ("A principal walks /orders/{id} from 5000 upwards at 150 req/s: its own two orders "
                        "answer 200, the others 403 (someone else's) or 404 (missing). At the 20th distinct "
                        "id, 18 were refused (share 0.9): ban. Eight benign principals read their own "
                        "orders, with a foreign or missing id now and then (few distinct ids)."),
        "detector": "bola",
        "detections": [{"scope": "principal", "value": attacker, "trigger_event_id": "seq-atk-0019",
                        "evidence": {"rule": "denied_share", "distinct_ids": 20, "denied_ids": 18,
                                     "route": "/orders/{id}"}}],
        "must_not_detect": [{"scope": "principal", "value": p} for p in benign] + [{"scope": "ip"}],
        "decisions": [{"scope": "principal", "value": attacker, "action": "ban"}],
    }


def bola_sequential_ids_vulnerable_api(rng: random.Random) -> tuple[list[RequestEvent], dict[str, Any]]:
    events, benign = benign_owners(rng, "vuln-ok", 4, 300)
    attacker, ip = "key-scraper", "203.0.113.67"
    gaps = set(rng.sample(range(7000, 7060), 12))  # deleted/missing ids: 404; the rest leak with 200
    distinct = denied = 0
    trigger = None
    for i, oid in enumerate(range(7000, 7060)):
        status = 404 if oid in gaps else 200
        distinct += 1
        denied += status == 404
        # documented rule: >= 20 distinct, >= 5 refused, run >= 10 with refused share >= 0.1
        if trigger is None and distinct >= 20 and denied >= 5 and denied / distinct >= 0.1:
            trigger = f"vuln-atk-{i:04d}"
        events.append(api_call(f"vuln-atk-{i:04d}", 30 + i / 20, ip, attacker, f"/orders/{oid}",
                               "/orders/{id}", status))
    assert trigger is not None
    return events, {
        "description": ("Enumeration of a vulnerable API: ids 7000-7059 in order, 200 for every existing "
                        "order (leaked), 404 for the 12 gaps. The refused share stays under 0.5, but a "
                        "sequential run with >= 10 % refused ids fires the sequential rule."),
        "detector": "bola",
        "detections": [{"scope": "principal", "value": attacker, "trigger_event_id": trigger,
                        "evidence": {"rule": "sequential_ids"}}],
        "must_not_detect": [{"scope": "principal", "value": p} for p in benign],
        "decisions": [{"scope": "principal", "value": attacker, "action": "ban"}],
    }


def bola_uuids(rng: random.Random) -> tuple[list[RequestEvent], dict[str, Any]]:
    events: list[RequestEvent] = []
    reader, reader_ip = "key-reader", "198.51.100.40"
    docs = [str(_uuid(rng)) for _ in range(10)]
    for i in range(150):
        t = i * 2.0
        doc, status = (rng.choice(docs), 200) if rng.random() > 0.02 else (str(_uuid(rng)), 404)
        events.append(api_call(f"uuid-ok-{i:04d}", t, reader_ip, reader, f"/documents/{doc}",
                               "/documents/{doc_id}", status))
    attacker, ip = "key-leaker", "203.0.113.68"
    for i in range(40):
        t = 100 + i / 20
        status = 403 if rng.random() < 0.6 else 404  # leaked ids of others' documents, or guesses
        events.append(api_call(f"uuid-atk-{i:04d}", t, ip, attacker, f"/documents/{_uuid(rng)}",
                               "/documents/{doc_id}", status))
    return events, {
        "description": ("A principal requests 40 document UUIDs it was never given (leaked ids answered "
                        "403, guesses 404) at 20 req/s: ban at the 20th distinct id. A reader fetching its "
                        "own 10 documents (2 % 404) is left alone."),
        "detector": "bola",
        "detections": [{"scope": "principal", "value": attacker, "trigger_event_id": "uuid-atk-0019",
                        "evidence": {"rule": "denied_share", "distinct_ids": 20, "denied_ids": 20,
                                     "sequential_run": 0}}],
        "decisions": [{"scope": "principal", "value": attacker, "action": "ban"}],
    }


def _uuid(rng: random.Random) -> str:
    return "%08x-%04x-4%03x-%04x-%012x" % (rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(12),
                                            0x8000 | rng.getrandbits(14), rng.getrandbits(48))


def bola_bulk_sync_own_objects(rng: random.Random) -> tuple[list[RequestEvent], dict[str, Any]]:
    events: list[RequestEvent] = []
    n = 0
    sync, ip = "key-sync", "198.51.100.50"
    own = list(range(20000, 20500))
    deleted = set(rng.sample(own, 6))
    for run, start in enumerate((0.0, 1800.0)):  # a nightly sync, twice
        for i, oid in enumerate(own):
            status = 404 if oid in deleted else 200  # its own deleted objects: 404
            events.append(api_call(f"sync-{n:05d}", start + i / 150, ip, sync, f"/orders/{oid}",
                                   "/orders/{id}", status))
            n += 1
    mirror, mip = "key-mirror", "2001:db8:50::5"
    docs = [_uuid(rng) for _ in range(300)]
    titles = [f"Book-{rng.randint(0, 10**6)}" for _ in range(200)]
    for i, doc in enumerate(docs):
        events.append(api_call(f"mirror-{n:05d}", 60 + i / 100, mip, mirror, f"/documents/{doc}",
                               "/documents/{doc_id}", 200))
        n += 1
    for i, title in enumerate(titles):
        events.append(api_call(f"mirror-{n:05d}", 70 + i / 100, mip, mirror, f"/books/{title}",
                               "/books/{title}", 200))
        n += 1
    return events, {
        "description": ("Bulk sync of own objects: 500 consecutive order ids at 150 req/s (6 of them its "
                        "own deleted objects: 404), twice; a mirror reading 300 of its document UUIDs and "
                        "200 book titles, all 200. Distinct-path volume and sequential ids alone never fire."),
        "detector": "bola",
        "detections": [],
        "must_not_detect": [{"scope": "principal"}, {"scope": "ip"}],
        "decisions": [],
    }


def bola_name_ids_anonymous(rng: random.Random) -> tuple[list[RequestEvent], dict[str, Any]]:
    events: list[RequestEvent] = []
    titles = [f"title-{w}" for w in ("dune", "emma", "ulysses", "beloved", "walden", "hamlet")]
    n = 0
    for r in range(10):  # anonymous readers browse a few books, one missing title each
        ip = f"198.51.100.{100 + r}"
        for j in range(8):
            title, status = (rng.choice(titles), 200) if j else (f"title-missing-{r}", 404)
            events.append(api_call(f"books-ok-{n:04d}", rng.uniform(0, 600), ip, "", f"/books/{title}",
                                   "/books/{title}", status))
            n += 1
    scraper = "198.51.100.77"
    words = [f"guess-{k}" for k in range(60)]
    for i, word in enumerate(words):
        status = 200 if i % 4 == 0 else 404
        events.append(api_call(f"books-atk-{i:04d}", 200 + i / 10, scraper, "", f"/books/{word}",
                               "/books/{title}", status))
    return events, {
        "description": ("An anonymous client tries 60 book titles from a word list (3 of 4 missing: 404); "
                        "name-like ids work like numbers: the IP is banned. Ten anonymous readers with one "
                        "missing title each are not."),
        "detector": "bola",
        "must_detect": [{"scope": "ip", "value": scraper}],
        "must_not_detect": [{"scope": "ip", "value": f"198.51.100.{100 + r}"} for r in range(10)]
        + [{"scope": "principal"}],
        "decisions": [{"scope": "ip", "value": scraper, "action": "ban"}],
    }


# -- latency --------------------------------------------------------------------------------


def _traffic(rng: random.Random, prefix: str, series: list[tuple[str, str, str]], minutes: int,
             per_min: int, latency: Any) -> list[RequestEvent]:
    """``per_min`` requests a minute for each (method, path, route), latency(minute, route) in ms."""
    out = []
    n = 0
    for minute in range(minutes):
        for method, path, route in series:
            for _ in range(per_min):
                t = minute * 60 + rng.uniform(0, 60)
                ms = latency(rng, minute, route)
                out.append(api_call(f"{prefix}-{n:05d}", t, f"198.51.100.{rng.randint(1, 250)}",
                                    f"key-{rng.randint(1, 30)}", path, route, 200, round(ms, 3), method))
                n += 1
    return out


def latency_regression_and_recovery(rng: random.Random) -> tuple[list[RequestEvent], dict[str, Any]]:
    def latency(rng: random.Random, minute: int, route: str) -> float:
        if route == "/orders/{id}" and 10 <= minute < 15:
            return rng.lognormvariate(math.log(150), 0.3)  # the regression: ~150 ms for 5 minutes
        return rng.lognormvariate(math.log(20 if route == "/orders/{id}" else 12), 0.35)

    events = _traffic(rng, "lat", [("GET", "/orders/1", "/orders/{id}"), ("GET", "/users/7", "/users/{id}")],
                      22, 40, latency)
    thin = _traffic(rng, "lat-thin", [("POST", "/orders", "/orders")], 22, 5,
                    lambda r, m, route: r.lognormvariate(math.log(40 if 10 <= m < 15 else 10), 0.3))
    return events + thin, {
        "description": ("GET /orders/{id} at 40 req/min: ~20 ms for 10 minutes, ~150 ms for minutes 10-14, "
                        "then ~20 ms again. Regression once the third slow minute closes; recovery after two "
                        "good minutes. GET /users/{id} stays fast; POST /orders slows too but has 5 requests "
                        "a minute (< min_samples=30). Alert only: no decision."),
        "detector": "latency_regression",
        "detections": [
            {"scope": "route", "value": "GET /orders/{id}",
             "evidence": {"state": "regression", "bad_windows": [{"start": at(600).isoformat()},
                                                                 {"start": at(660).isoformat()},
                                                                 {"start": at(720).isoformat()}]}},
            {"scope": "route", "value": "GET /orders/{id}",
             "evidence": {"state": "recovered"}},
        ],
        "must_not_detect": [{"scope": "route", "value": "GET /users/{id}"},
                            {"scope": "route", "value": "POST /orders"}],
        "decisions": [],
    }


def latency_short_blip_and_heavy_tail(rng: random.Random) -> tuple[list[RequestEvent], dict[str, Any]]:
    def latency(rng: random.Random, minute: int, route: str) -> float:
        if route == "/search":  # 90 % fast, 10 % slow: a heavy tail, stable
            return rng.lognormvariate(math.log(300 if rng.random() < 0.1 else 30), 0.3)
        if 12 <= minute < 14:  # two slow minutes only
            return rng.lognormvariate(math.log(200), 0.3)
        return rng.lognormvariate(math.log(15), 0.3)

    events = _traffic(rng, "blip", [("GET", "/search?q=x", "/search"), ("GET", "/items/3", "/items/{id}")],
                      24, 40, latency)
    return events, {
        "description": ("A heavy-tailed but stable route (10 % of requests ~300 ms) and a route slow for two "
                        "minutes only (< bad_windows=3): no detection."),
        "detector": "latency_regression",
        "detections": [],
        "decisions": [],
    }


# -- behaviour outliers ----------------------------------------------------------------------
# The model of these cases (behaviour_history.trained_model) is trained on a day of the same
# twelve principals; each case is half an hour of another day, closed by a last request.

BEHAVIOUR_DAY = T0 + timedelta(days=2)


def _behaviour_day(rng: random.Random, extra: list[RequestEvent]) -> list[RequestEvent]:
    events = benign_history(seed=7, hours=0.5, start=BEHAVIOUR_DAY, traffic_seed=rng.randrange(10**6))
    tick = events[0].model_copy(update={"event_id": "tick", "ts": BEHAVIOUR_DAY + timedelta(seconds=1900)})
    return events + extra + [tick]


def behaviour_stolen_key_scraper(rng: random.Random) -> tuple[list[RequestEvent], dict[str, Any]]:
    start = BEHAVIOUR_DAY + timedelta(seconds=600)
    stolen = [e.model_copy(update={"principal": "key-b03"}) for e in scraper(start, rate_per_s=3.0, country="KP")]
    return _behaviour_day(rng, stolen), {
        "description": ("Twelve principals as on the training day; from minute 10 the key of key-b03 (always "
                        "in the US) walks foreign order ids at 3 req/s from KP, mostly refused. Its window "
                        "is an outlier (rate, distinct ids, error share, new country); in shadow: no decision."),
        "detector": "behaviour",
        "detections": [{"scope": "principal", "value": "key-b03",
                        "evidence": {"window_start": start.isoformat(),
                                     "features": {"new_country": {"value": 1.0}}}}],
        "decisions": [],
    }


def behaviour_error_flood(rng: random.Random) -> tuple[list[RequestEvent], dict[str, Any]]:
    return _behaviour_day(rng, flooder(BEHAVIOUR_DAY + timedelta(seconds=900))), {
        "description": ("A principal never seen before posts malformed orders at 4 req/s for five minutes "
                        "(every answer 400/422) beside the twelve usual principals."),
        "detector": "behaviour",
        "detections": [{"scope": "principal", "value": FLOODER,
                        "evidence": {"window_start": (BEHAVIOUR_DAY + timedelta(seconds=900)).isoformat(),
                                     "features": {"error_share": {"value": 1.0}}}}],
    }


def behaviour_benign_half_hour(rng: random.Random) -> tuple[list[RequestEvent], dict[str, Any]]:
    return _behaviour_day(rng, []), {
        "description": "Half an hour of the twelve principals of the training day, on another day: no outlier.",
        "detector": "behaviour",
        "must_not_detect": [{"scope": "principal"}],
    }


SCENARIOS = [cs_fast_stuffing_one_ip, cs_low_and_slow_200_ips, cs_corporate_nat, cs_benign_typo_users,
             bola_sequential_ids, bola_sequential_ids_vulnerable_api, bola_uuids, bola_bulk_sync_own_objects,
             bola_name_ids_anonymous, latency_regression_and_recovery, latency_short_blip_and_heavy_tail,
             behaviour_stolen_key_scraper, behaviour_error_flood, behaviour_benign_half_hour,
             cs_spike_owners_typo_on_two_networks]


def write_cases(root: Path = CASES_DIR) -> list[str]:
    """Write every generated case under ``root``; return their names."""
    names = []
    for index, scenario in enumerate(SCENARIOS):
        rng = random.Random(SEED + index)
        events, expected = scenario(rng)
        events.sort(key=lambda e: e.ts)  # arrival order (stable for equal times)
        folder = root / scenario.__name__
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "events.jsonl").write_text("".join(e.model_dump_json() + "\n" for e in events))
        (folder / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
        names.append(scenario.__name__)
    return names


if __name__ == "__main__":
    for name in write_cases():
        print(name)
