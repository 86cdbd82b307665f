"""Throughput of the stream worker: request events through detectors and the ClickHouse sink.

What it measures, on a real Tansu broker (127.0.0.1 only), in each of ``--repeat``
rounds (a fresh broker, topics and worker each; the table shows medians):

1. **producing** — ``--events`` N pre-generated request events (seeded, see
   :class:`Traffic`) are sent to ``topic_requests`` keyed as the gateway keys them
   (:func:`gatewatch.events.request_key`; kafka-python, batched with linger; ``crc32c`` installed).
   That backlog is then read by:
2. **bare aiokafka** — a consume loop with no group (``assign`` every partition,
   ``seek_to_beginning``) counting the messages: once as is, and once parsing
   each with :func:`gatewatch.events.parse_request_event` (the fair baseline:
   the worker must parse too). The end is known from the count produced and
   checked against the high-watermarks returned with the fetched records
   (Tansu quirk: its "latest offset" answer is wrong, DESIGN.md).
3. **the real worker** — ``worker_command()`` as a subprocess with
   ``settings.to_env()`` (as the launcher starts it), started against the same
   backlog. Its ``/gatewatch/health/`` counters are polled every ``--poll`` s
   (0.1; the timeline in the results keeps one sample per 0.5 s):
   ``events_requests`` (request consumer) and ``stored_requests`` (ClickHouse sink).
   **Sustained events/s** = N / (time from the first counted event to the poll
   where both counters reach N) — detectors and sink together; worker start-up
   (~5 s, mostly the group join) is reported apart. Also: the 10 %→90 % rate;
   when the re-keyed agents (BOLA, geo, latency, login aggregates) have seen
   everything the request consumer sent them (expected counts from
   :func:`streams.rekey.sort_event`); lag (produced − stored) over time; RSS
   (``/proc/PID/status``); CPU of the worker per thread and of the broker
   (``/proc/PID/task/*/stat``).
4. **live** (last round; ``--live-rate`` events/s for ``--live-seconds``, 0 = off)
   — after the backlog, events are produced at a fixed pace while the worker
   runs: lag (produced − stored) and RSS under a steady offered load.
5. ``--profile S`` — one extra round (not in the medians) with ``py-spy record
   --nonblocking -f raw`` on the worker for S seconds of its backlog: CPU per
   thread and activity (agent × parse/detector/re-key/send, Faust dispatch,
   chDB), top inclusive project frames, top self frames.

It prints a table (events/s, ratio worker/bare, peak lag, RSS start/peak) and
writes ``bench/results/pipeline.json``. Fixed seeds (``--seed``) and a fixed
event-time origin make the traffic identical between commits, so the figures
compare; rounds vary by ±15 % here, hence the repeats. The health polls cost
the worker a little (~10 small HTTP requests/s).

Run: ``.venv/bin/python bench/pipeline.py [--events 50000] [--repeat 3]
[--live-rate 2000] [--live-seconds 10] [--profile 10]`` (about 2 min with these;
``--events 100000 --repeat 1`` for a longer single run). Needs the venv's
``py-spy`` only for ``--profile``.

Target (issue 4): ≥ 20,000 events/s per worker process on this machine (2 cores).
Sources: CrowdSec publishes ~250 events/s per vCPU for its HTTP log parsing
(docs.crowdsec.net, "Performance"); Faust's per-event overhead makes batching
(``stream.take``) necessary (faust-streaming docs, "Streams": ``take``); the
measured produce/consume rates of Tansu and the chDB insert rate are in
DESIGN.md (Known quirks); the issue's throughput benchmark section defines the
measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from gatewatch.broker import create_topics, start_tansu
from gatewatch.commands import worker_command
from gatewatch.events import RequestEvent, parse_request_event, request_key
from gatewatch.netutil import free_port, wait_for_port
from gatewatch.settings import GatewatchSettings, load_settings

RESULTS = Path(__file__).parent / "results" / "pipeline.json"
TARGET_EPS = 20_000
#: Event time of the first generated event: fixed, so that runs are identical.
EPOCH = datetime(2025, 6, 2, 9, 0, tzinfo=timezone.utc)
#: Timeline resolution (s) kept in the results.
TIMELINE_S = 0.5
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- traffic

#: Public /16s (IPv4) and /32s (IPv6) the synthetic clients come from: real allocations
#: in several countries, so that the gateway-side geo fields and the worker's city
#: lookups (geo anomalies) do real work. Only data: no packet goes to them.
V4_PREFIXES = ["81.2", "92.184", "24.5", "73.15", "86.13", "88.152", "151.40", "177.32", "49.206",
               "203.219", "95.90", "62.4", "190.15", "41.190", "110.33", "212.58"]
V6_PREFIXES = ["2a01:e0a", "2600:1700", "2a02:8109", "2001:1c00"]
USER_AGENTS = ["Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/125.0 Safari/537.36",
               "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
               "okhttp/4.12.0", "python-requests/2.32.3", "acme-sdk-go/1.8.2", "curl/8.5.0"]
ATTACK_UAS = ["python-requests/2.31.0", "Go-http-client/1.1", "Mozilla/5.0 (X11; Linux x86_64)"]
#: (method, route template, weight, median upstream latency ms) of the benign authenticated traffic.
ROUTES = [("GET", "/items/{id}", 30, 20), ("GET", "/orders/{id}", 15, 35), ("GET", "/users/me", 15, 12),
          ("GET", "/search", 10, 80), ("POST", "/orders", 5, 60), ("PUT", "/orders/{id}", 3, 55),
          ("GET", "/books/{title}", 5, 25), ("DELETE", "/orders/{id}", 1, 40), ("GET", "/health", 2, 2)]
BOOKS = ["dune", "emma", "ulysses", "beloved", "middlemarch", "persuasion", "solaris", "kindred",
         "neuromancer", "frankenstein", "dracula", "walden", "hamlet", "macbeth", "lolita", "rebecca"]
#: Share of each actor kind in the stream (normalised).
MIX = {"benign": 0.86, "benign_login": 0.04, "anonymous": 0.01, "rate_limited": 0.01,
       "stuffing_fast": 0.015, "stuffing_slow": 0.008, "bola": 0.007, "bad_key": 0.005,
       "blocked": 0.005}


class Traffic:
    """A seeded, realistic stream of gateway request events (as ``(key, value)`` bytes):

    * benign users (API keys ``key-NNNN``, Zipf-like activity, a home address,
      10 % on IPv6; the 150 least active behind one corporate NAT address)
      (30 % with a second address in the same /24 or /64: same ISP, no travel)
      across item/order/search/book routes with per-route log-normal latencies,
      mostly 200/201, some 304/404/400 and rare 5xx; logins with ~8 % failures;
      gateway answers: missing keys (401), rate limits (429);
    * attackers: fast credential stuffing from one address, low-and-slow
      stuffing from 200 addresses over many prefixes, a principal enumerating
      foreign order ids in sequence (BOLA, 403/404), clients with invalid keys,
      and a banned address answered 403 by a decision.

    Event time starts at :data:`EPOCH` and advances ``1/event_rate`` s per event.
    ``asn``/``country`` are filled as the gateway fills them (DB-IP country
    database and ASN ranges, when installed).
    """

    def __init__(self, seed: int, users: int = 800, event_rate: float = 2000.0,
                 username_key: bytes = b"gatewatch-dev-username-key") -> None:
        self.rng = random.Random(seed)
        self.event_rate = event_rate
        self.username_key = username_key
        self.index = 0
        rng = self.rng
        self.nat_ip = self._ip()
        self.users: list[tuple[str, list[str], str]] = []  # (principal, addresses, username)
        for u in range(users):
            ips = [self.nat_ip] if u >= users - 150 else self._home_ips()
            self.users.append((f"key-{u:04d}", ips, f"user{u:04d}@example.com"))
        self.user_weights = [1.0 / (r + 1) ** 0.8 for r in range(users)]
        self.route_weights = [w for _, _, w, _ in ROUTES]
        self.own_orders = {p: [rng.randint(1_000, 999_999) for _ in range(rng.randint(3, 40))]
                           for p, _, _ in self.users}
        self.kinds = list(MIX)
        self.kind_weights = [MIX[k] for k in self.kinds]
        self.stuffer_ip = self._ip()
        self.slow_ips = [self._ip() for _ in range(200)]
        self.targets = [f"victim{i:05d}@example.com" for i in range(5_000)]
        self.bola = ("key-enum", self._ip(), 700_000)
        self.bad_key_ips = [self._ip() for _ in range(5)]
        self.banned_ip, self.ban_id = self._ip(), "%032x" % rng.getrandbits(128)
        self.geo = _gateway_geo([self.nat_ip, self.stuffer_ip, self.bola[1], self.banned_ip, *self.slow_ips,
                                 *self.bad_key_ips, *(ip for _, ips, _ in self.users for ip in ips)])

    def _ip(self) -> str:
        rng = self.rng
        if rng.random() < 0.1:
            return f"{rng.choice(V6_PREFIXES)}:{rng.getrandbits(16):x}:{rng.getrandbits(16):x}::{rng.getrandbits(16):x}"
        return f"{rng.choice(V4_PREFIXES)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"

    def _home_ips(self) -> list[str]:
        """One address, or (30 %) two in the same /24 or /64 — the same ISP and city, so that
        benign users do not travel (the geo detector would rightly flag two countries)."""
        first = self._ip()
        if self.rng.random() >= 0.3:
            return [first]
        if ":" in first:
            return [first, first.rsplit(":", 1)[0] + f":{self.rng.getrandbits(16):x}"]
        return [first, first.rsplit(".", 1)[0] + f".{self.rng.randint(1, 254)}"]

    def _hash(self, username: str) -> str:
        return hmac.new(self.username_key, username.encode(), hashlib.sha256).hexdigest()

    def events(self, n: int) -> list[tuple[bytes, bytes]]:
        """The next ``n`` events as ``(Kafka key, RequestEvent JSON)`` (:func:`gatewatch.events.request_key`)."""
        out = []
        for _ in range(n):
            event = self._next()
            out.append((request_key(event), event.to_json()))
        return out

    def _next(self) -> RequestEvent:
        rng = self.rng
        ts = EPOCH + timedelta(seconds=self.index / self.event_rate + rng.uniform(0, 0.4 / self.event_rate))
        self.index += 1
        kind = rng.choices(self.kinds, self.kind_weights)[0]
        f: dict[str, Any] = {"event_id": "%032x" % rng.getrandbits(128), "ts": ts, "host": "api.example.com",
                             "user_agent": rng.choice(USER_AGENTS), "bytes_in": 0}
        principal, ips, username = self.users[rng.choices(range(len(self.users)), self.user_weights)[0]]
        ip = rng.choice(ips)
        if kind == "benign":
            f.update(self._benign(principal, ip))
        elif kind == "benign_login":
            ok = rng.random() > 0.08
            f.update(self._login(ip, username, ok))
        elif kind == "anonymous":
            f.update(client_ip=ip, method="GET", path="/items/42", route="/items/{id}", status=401,
                     auth="missing", answered_by="auth", bytes_out=58)
        elif kind == "rate_limited":
            f.update(client_ip=ip, method="GET", path=f"/items/{rng.randint(1, 5000)}", route="/items/{id}",
                     status=429, principal=principal, auth="ok", answered_by="rate_limit", bytes_out=61)
        elif kind == "stuffing_fast":
            f.update(self._login(self.stuffer_ip, rng.choice(self.targets), rng.random() < 0.01))
            f["user_agent"] = ATTACK_UAS[0]
        elif kind == "stuffing_slow":
            f.update(self._login(rng.choice(self.slow_ips), rng.choice(self.targets[:300]), rng.random() < 0.02))
            f["user_agent"] = rng.choice(ATTACK_UAS)
        elif kind == "bola":
            name, bola_ip, next_id = self.bola
            self.bola = (name, bola_ip, next_id + rng.choice((1, 1, 1, 2)))
            f.update(client_ip=bola_ip, method="GET", path=f"/orders/{next_id}", route="/orders/{id}",
                     status=rng.choice((403, 403, 403, 404)), principal=name, auth="ok", answered_by="upstream",
                     latency_ms=round(rng.lognormvariate(3.4, 0.3), 3), bytes_out=40,
                     user_agent=ATTACK_UAS[1])
        elif kind == "bad_key":
            f.update(client_ip=rng.choice(self.bad_key_ips), method="GET", path="/users/me", route="/users/me",
                     status=401, auth="invalid", answered_by="auth", bytes_out=52, user_agent=ATTACK_UAS[2])
        else:  # blocked: answered by an active decision
            f.update(client_ip=self.banned_ip, method="POST", path="/login", route="/login", status=403,
                     answered_by="decision", decision_id=self.ban_id, bytes_out=47, user_agent=ATTACK_UAS[0])
        asn, country = self.geo.get(f["client_ip"], (None, None))
        return RequestEvent(asn=asn, country=country, **f)

    def _benign(self, principal: str, ip: str) -> dict[str, Any]:
        rng = self.rng
        method, route, _, median_ms = ROUTES[rng.choices(range(len(ROUTES)), self.route_weights)[0]]
        status, bytes_in, bytes_out = 200, 0, rng.randint(200, 4000)
        if route == "/items/{id}":
            path = f"/items/{rng.randint(1, 50_000)}"
            status = rng.choices((200, 304, 404), (94, 3, 3))[0]
        elif route == "/orders/{id}":
            path = f"/orders/{rng.choice(self.own_orders[principal])}"
            if method == "PUT":
                bytes_in = rng.randint(100, 900)
            status = rng.choices((200, 404), (98, 2))[0] if method == "GET" else \
                rng.choices((200, 204, 400), (60, 38, 2))[0]
        elif route == "/search":
            path = f"/search?q={rng.choice(BOOKS)}&page={rng.randint(1, 5)}"
        elif route == "/orders":
            path, bytes_in = "/orders", rng.randint(200, 1500)
            status = rng.choices((201, 400), (97, 3))[0]
        elif route == "/books/{title}":
            path = f"/books/{rng.choice(BOOKS)}"
        else:
            path = route
        if rng.random() < 0.004:
            status = rng.choice((500, 502, 503))
        public = route == "/health"
        return {"client_ip": ip, "method": method, "path": path, "route": route, "status": status,
                "latency_ms": round(rng.lognormvariate(_ln(median_ms), 0.45), 3), "bytes_in": bytes_in,
                "bytes_out": bytes_out if status < 400 else 80, "principal": "" if public else principal,
                "auth": "public" if public else "ok", "answered_by": "upstream"}

    def _login(self, ip: str, username: str, ok: bool) -> dict[str, Any]:
        rng = self.rng
        return {"client_ip": ip, "method": "POST", "path": "/login", "route": "/login",
                "status": 200 if ok else 401, "latency_ms": round(rng.lognormvariate(_ln(90), 0.3), 3),
                "bytes_in": rng.randint(60, 120), "bytes_out": 350 if ok else 64, "auth": "public",
                "answered_by": "upstream", "login": "success" if ok else "failure",
                "username_hash": self._hash(username)}


def _ln(x: float) -> float:
    return math.log(x)


def _gateway_geo(ips: list[str]) -> dict[str, tuple[int | None, str | None]]:
    """``ip -> (asn, country)`` as the gateway fills them (country database + ASN ranges);
    empty when the geo data is not installed."""
    try:
        from gatewatch.geoip import GeoDataError, GeoIp
        geo = GeoIp(load_settings().geo.dir, detail="country", with_asn=True, with_as_org=False)
    except (ImportError, GeoDataError):
        return {}
    out = {}
    for ip in set(ips):
        info = geo.lookup(ip)
        out[ip] = (info.asn, info.country) if info else (None, None)
    geo.close()
    return out


def expected_rekeyed(values: list[bytes], settings: GatewatchSettings) -> dict[str, int]:
    """What the request consumer sends on for ``values`` (:func:`streams.rekey.sort_event`), as the
    counters the re-keyed consumers keep: ``events_logins``, ``events_by_principal``,
    ``events_by_route``."""
    from gatewatch.broker import topic_partitions
    from streams.rekey import Rekeyed, sort_event

    parts = topic_partitions(settings)
    out = Rekeyed(parts[settings.topic_requests_by_principal], parts[settings.topic_requests_by_route])
    for raw in values:
        sort_event(out, parse_request_event(raw), raw)
    principal = sum(len(v) for v in out.by_principal.values())
    return {"events_logins": len(out.logins), "events_by_principal": principal,
            "events_by_route": sum(len(s) for by in out.by_route.values() for s in by.values())}


# --------------------------------------------------------------------------- broker side

def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> float:
    """Send ``records`` (key, value) with kafka-python, batched; returns events/s."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024,
                             acks=1, max_request_size=4 * 1024 * 1024)
    t0 = time.perf_counter()
    for key, value in records:
        producer.send(topic, key=key, value=value)
    producer.flush()
    elapsed = time.perf_counter() - t0
    producer.close()
    return len(records) / elapsed


async def _bare(bootstrap: str, topic: str, partitions: int, n: int, parse: bool,
                fetch_max_wait_ms: int, timeout_s: float) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=fetch_max_wait_ms)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        count, t0 = 0, time.perf_counter()
        deadline = t0 + timeout_s
        while count < n and time.perf_counter() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                if parse:
                    for record in records:
                        parse_request_event(record.value)
                count += len(records)
        elapsed = time.perf_counter() - t0
        highwater = sum(consumer.highwater(tp) or 0 for tp in tps)  # from fetched records (Tansu quirk)
    finally:
        await consumer.stop()
    return {"events": count, "seconds": round(elapsed, 3), "eps": round(count / elapsed, 1),
            "highwater_sum": highwater, "parse": parse}


def bare_consume(settings: GatewatchSettings, n: int, parse: bool, timeout_s: float = 60.0) -> dict[str, Any]:
    """The bare aiokafka loop over the request topic (no group, from the beginning)."""
    return asyncio.run(_bare(settings.bootstrap_servers, settings.topic_requests, settings.requests_partitions,
                             n, parse, settings.fetch_max_wait_ms, timeout_s))


# --------------------------------------------------------------------------- /proc

def descendants(pid: int) -> list[int]:
    """PIDs of the processes ``pid`` started, and theirs (the worker's store process)."""
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
        for child in children:
            out += [child] + descendants(child)
    return out


def _own_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rss_mb(pid: int) -> float:
    """VmRSS of ``pid`` and of the processes it started (the worker's store process), in
    MB (0 if gone)."""
    return sum(_own_rss_mb(p) for p in [pid] + descendants(pid))


def _stat_cpu(text: str) -> tuple[str, float]:
    comm = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    return comm, (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def _own_cpu_s(pid: int) -> float:
    try:
        return _stat_cpu(Path(f"/proc/{pid}/stat").read_text())[1]
    except OSError:
        return 0.0


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and by the processes it started
    and still runs (the worker's store process)."""
    return sum(_own_cpu_s(p) for p in [pid] + descendants(pid))


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name of ``pid`` (threads of one name summed; the main thread,
    which runs the event loop, on its own; ``python`` are the other Python threads), and
    of the processes it started as ``store process``."""
    out: Counter[str] = Counter()
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return {}
    for task in tasks:
        try:
            comm, cpu = _stat_cpu((task / "stat").read_text())
        except (OSError, ValueError):
            continue
        # Python threads keep the process name ("python"): tell the event loop's thread apart.
        out["main (event loop)" if task.name == str(pid) else comm] += cpu
    for child in descendants(pid):
        out["store process"] += _own_cpu_s(child)
    return dict(out)


# --------------------------------------------------------------------------- worker

class Children:
    """Child processes, stopped by PID at the end (SIGTERM, then SIGKILL)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def add(self, proc: subprocess.Popen) -> subprocess.Popen:
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen | None = None, timeout_s: float = 30.0) -> None:
        for p in [proc] if proc is not None else list(reversed(self.procs)):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)
            if p in self.procs:
                self.procs.remove(p)


def health(base: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(base + "/gatewatch/health/", timeout=5) as response:
            return json.load(response)
    except OSError:
        return None


class Sampler:
    """Polls the worker's health counters, RSS and CPU; keeps every poll."""

    def __init__(self, base: str, pid: int, broker_pid: int) -> None:
        self.base, self.pid, self.broker_pid = base, pid, broker_pid
        self.t0 = time.monotonic()
        self.polls: list[dict[str, Any]] = []

    def poll(self, produced: int) -> dict[str, Any] | None:
        body = health(self.base)
        if body is None:
            return None
        c = body.get("counters", {})
        sample = {"t": time.monotonic() - self.t0, "produced": produced,
                  "events_requests": c.get("events_requests", 0), "stored_requests": c.get("stored_requests", 0),
                  "rss_mb": round(rss_mb(self.pid), 1), "cpu_s": cpu_s(self.pid),
                  "broker_cpu_s": cpu_s(self.broker_pid), "counters": c}
        sample["lag"] = produced - sample["stored_requests"]
        sample["agent_lag"] = produced - sample["events_requests"]
        self.polls.append(sample)
        return sample

    def timeline(self, since: float = 0.0, until: float = float("inf")) -> list[dict[str, Any]]:
        """One poll every :data:`TIMELINE_S` s between ``since`` and ``until`` (and the last of
        them), without the full counters; times relative to ``since``."""
        polls = [s for s in self.polls if s["t"] <= until]
        out, next_t = [], since
        for i, s in enumerate(polls):
            if s["t"] >= next_t or i == len(polls) - 1:
                out.append({k: (round(v, 2) if isinstance(v, float) else v) for k, v in s.items()
                            if k != "counters"} | {"t": round(s["t"] - since, 2)})
                next_t = s["t"] + TIMELINE_S - 1e-6
        return out


def _crossing(polls: list[dict[str, Any]], value: float, key: Callable[[dict[str, Any]], float]) -> float | None:
    """Time at which ``key(poll)`` first reaches ``value`` (linear interpolation between polls)."""
    prev = None
    for s in polls:
        if key(s) >= value:
            if prev is None or key(s) == key(prev):
                return s["t"]
            frac = (value - key(prev)) / (key(s) - key(prev))
            return prev["t"] + frac * (s["t"] - prev["t"])
        prev = s
    return None


def run_worker(settings: GatewatchSettings, tmp: Path, children: Children, broker_pid: int,
               n: int, expected: dict[str, int], live: list[tuple[bytes, bytes]], live_rate: float,
               poll_s: float, timeout_s: float, profile_s: float,
               profile_out: Path | None = None) -> dict[str, Any]:
    """Start the worker on the pre-filled backlog of ``n`` events; measure; then the live phase."""
    base = f"http://{settings.worker_web_host}:{settings.worker_web_port}"
    env = os.environ | settings.to_env()
    t_spawn = time.monotonic()
    with open(tmp / "worker.log", "ab") as log:
        proc = children.add(subprocess.Popen(worker_command(), env=env, cwd=tmp, stdout=log,
                                             stderr=subprocess.STDOUT))
    sampler = Sampler(base, proc.pid, broker_pid)
    sampler.t0 = t_spawn
    result: dict[str, Any] = {"pid": proc.pid}

    def alive() -> None:
        if proc.poll() is not None:
            tail = (tmp / "worker.log").read_text(errors="replace").splitlines()[-40:]
            raise RuntimeError(f"worker exited with {proc.returncode}:\n" + "\n".join(tail))

    # Start-up: fast polls until the first event is counted (the backlog is consumed from the join on).
    t_ready = t_first = None
    ready_rss = 0.0
    threads_start: dict[str, float] = {}
    while t_first is None:
        alive()
        if time.monotonic() - t_spawn > 90:
            raise RuntimeError("worker not consuming after 90 s")
        body = health(base)
        if body is not None:
            if t_ready is None and body.get("ready"):
                t_ready, ready_rss = time.monotonic() - t_spawn, rss_mb(proc.pid)
            c = body.get("counters", {})
            if c.get("events_requests", 0) or c.get("stored_requests", 0):
                t_first = time.monotonic() - t_spawn
                threads_start = thread_cpu(proc.pid)
                cpu_first, broker_first = cpu_s(proc.pid), cpu_s(broker_pid)
                break
        time.sleep(0.02)
    if t_ready is None:
        t_ready, ready_rss = t_first, rss_mb(proc.pid)
    result.update(startup_s=round(t_ready, 2), first_event_s=round(t_first, 2), rss_ready_mb=round(ready_rss, 1))

    profiler = None
    if profile_s > 0:
        profiler = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(proc.pid),
                                     "-d", str(int(profile_s)), "-r", "100", "--nonblocking", "-f", "raw",
                                     "-o", str(tmp / "profile.txt")], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.STDOUT)
        children.add(profiler)

    # Backlog: poll until the request consumer and the sink have all n events.
    done = lambda s: s["events_requests"] >= n and s["stored_requests"] >= n  # noqa: E731
    t_done = None
    while True:
        alive()
        s = sampler.poll(n)
        if s is not None and done(s):
            t_done = s["t"]
            threads_end = thread_cpu(proc.pid)
            cpu_done, broker_done = cpu_s(proc.pid), cpu_s(broker_pid)
            break
        if time.monotonic() - t_spawn - t_first > timeout_s:
            threads_end = thread_cpu(proc.pid)
            cpu_done, broker_done = cpu_s(proc.pid), cpu_s(broker_pid)
            break
        time.sleep(poll_s)
    backlog_polls = list(sampler.polls)
    last = backlog_polls[-1] if backlog_polls else {"t": t_first, "events_requests": 0, "stored_requests": 0}
    through = min(last["events_requests"], last["stored_requests"])
    elapsed = (t_done if t_done is not None else last["t"]) - t_first
    both = lambda p: min(p["events_requests"], p["stored_requests"])  # noqa: E731
    t10, t90 = _crossing(backlog_polls, 0.1 * n, both), _crossing(backlog_polls, 0.9 * n, both)
    thread_use = {name: round((threads_end.get(name, 0.0) - threads_start.get(name, 0.0)) / elapsed, 3)
                  for name in threads_end}
    result["backlog"] = {
        "events": n, "completed": t_done is not None, "through": through,
        "seconds": round(elapsed, 2), "eps": round(through / elapsed, 1) if elapsed > 0 else 0.0,
        "eps_10_90": round(0.8 * n / (t90 - t10), 1) if t10 is not None and t90 is not None and t90 > t10 else None,
        "agent_eps": round(n / (_crossing(backlog_polls, n, lambda p: p["events_requests"]) - t_first), 1)
        if t_done is not None else None,
        "peak_lag": max([p["lag"] for p in backlog_polls] + [n]),
        "rss_start_mb": round(ready_rss, 1), "rss_peak_mb": max((p["rss_mb"] for p in backlog_polls), default=0.0),
        "rss_end_mb": last.get("rss_mb", 0.0),
        "worker_cpu_pct": round(100 * (cpu_done - cpu_first) / elapsed, 1),
        "broker_cpu_pct": round(100 * (broker_done - broker_first) / elapsed, 1),
        "worker_thread_cpu_pct": {k: round(100 * v, 1) for k, v in
                                  sorted(thread_use.items(), key=lambda kv: -kv[1]) if v >= 0.005},
    }

    # The re-keyed agents (BOLA, geo, latency, logins) drain after the request consumer.
    def rekeyed_done(p: dict[str, Any]) -> bool:
        return all(p["counters"].get(k, 0) >= v for k, v in expected.items())
    deadline = time.monotonic() + 30
    while t_done is not None and not rekeyed_done(sampler.polls[-1]) and time.monotonic() < deadline:
        alive()
        sampler.poll(n)
        time.sleep(poll_s)
    final = sampler.polls[-1]["counters"] if sampler.polls else {}
    result["backlog"]["rekeyed_done_s"] = (round(sampler.polls[-1]["t"] - t_first, 2)
                                           if sampler.polls and rekeyed_done(sampler.polls[-1]) else None)
    result["backlog"]["rekeyed_expected"] = expected
    result["backlog"]["rekeyed_seen"] = {k: final.get(k, 0) for k in expected}
    result["timeline"] = sampler.timeline(since=t_first, until=sampler.polls[-1]["t"] if sampler.polls else 0.0)

    if profiler is not None:
        try:
            profiler.wait(timeout=profile_s + 30)
        except subprocess.TimeoutExpired:
            pass
        children.stop(profiler)
        result["profile"] = summarise_profile(tmp / "profile.txt", profile_s)
        if profile_out is not None and (tmp / "profile.txt").exists():
            shutil.copyfile(tmp / "profile.txt", profile_out)
            result["profile"]["raw"] = str(profile_out)

    if live and live_rate > 0:
        result["live"] = run_live(settings, sampler, n, live, live_rate, poll_s, alive)
    result["counters"] = sampler.polls[-1]["counters"] if sampler.polls else {}
    children.stop(proc)
    result["exit_code"] = proc.returncode
    return result


def run_live(settings: GatewatchSettings, sampler: Sampler, n: int, live: list[tuple[bytes, bytes]],
             rate: float, poll_s: float, alive: Callable[[], None]) -> dict[str, Any]:
    """Produce ``live`` at ``rate`` events/s (10 ms slices) while polling lag and RSS."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5, acks=1)
    sent = [0]
    stop = threading.Event()

    def pace() -> None:
        t0 = time.monotonic()
        while sent[0] < len(live) and not stop.is_set():
            due = min(len(live), int((time.monotonic() - t0) * rate) + 1)
            for key, value in live[sent[0]:due]:
                producer.send(settings.topic_requests, key=key, value=value)
            sent[0] = due
            time.sleep(0.01)
        producer.flush()

    start = len(sampler.polls)
    t_live = time.monotonic() - sampler.t0
    thread = threading.Thread(target=pace, daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            alive()
            sampler.poll(n + sent[0])
            time.sleep(poll_s)
        t_sent = time.monotonic() - sampler.t0
        total = n + len(live)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            alive()
            s = sampler.poll(total)
            if s is not None and s["stored_requests"] >= total and s["events_requests"] >= total:
                break
            time.sleep(poll_s)
    finally:
        stop.set()
        thread.join(timeout=10)
        producer.close()
    polls = sampler.polls[start:]
    during = [p for p in polls if p["t"] <= t_sent]
    lags = sorted(p["lag"] for p in during) or [0]
    last = polls[-1] if polls else {"t": t_sent, "stored_requests": 0, "events_requests": 0, "rss_mb": 0.0}
    return {
        "rate": rate, "events": len(live), "seconds": round(t_sent - t_live, 2),
        "caught_up": min(last["stored_requests"], last["events_requests"]) >= n + len(live),
        "drain_after_s": round(last["t"] - t_sent, 2),
        "peak_lag": lags[-1], "median_lag": lags[len(lags) // 2], "p95_lag": lags[int(0.95 * (len(lags) - 1))],
        "rss_peak_mb": max((p["rss_mb"] for p in polls), default=0.0), "rss_end_mb": last["rss_mb"],
        "timeline": sampler.timeline(since=t_live),
    }


#: Project code in a stack (the frames worth naming in the summary).
PROJECT_FILES = ("(streams/", "(detectors/", "(storage/", "(gatewatch/")
#: Agent, timer or helper of the worker a main-thread stack runs in (first match, root first).
AGENT_FRAME = re.compile(r"^(detect_\w+|sink_\w+|flush_rekeyed|_flush|health|query) \(streams/")


def _thread_of(frames: list[str]) -> str:
    if not frames[0].startswith("Thread._bootstrap"):
        return "main (event loop)"
    if any("concurrent/futures/process.py" in f or "multiprocessing/" in f for f in frames):
        return "store process I/O (pickling, pipes)"
    if any("mode/threads.py" in f for f in frames):
        return "consumer thread (aiokafka)"
    return "other thread"


def _category(thread: str, frames: list[str]) -> str:
    """What a sampled stack was doing, in words (first rule that matches). On the main
    thread only the frames under the event loop's ``_run_once`` count (the root frames
    are Faust's command line)."""
    if thread.startswith("main"):
        runs = [i for i, f in enumerate(frames) if f.startswith("BaseEventLoop._run_once")]
        frames = frames[runs[-1] + 1:] if runs else frames
        if not frames:
            return "asyncio: scheduling task steps and callbacks"
    has = lambda *needles: any(n in f for f in frames for n in needles)  # noqa: E731
    if "select (selectors.py)" in frames[-1]:
        return "waiting in select"
    if thread.startswith("store"):
        if has("chdb/"):
            return "chDB engine (insert/query)"
        if has("clickhouse_connect/"):
            return "clickhouse-connect (rows to native format)"
        return "writer (events to rows)" if has("(storage/") else "executor/other"
    if thread.startswith("consumer"):
        return "fetch and decode records"
    agent = next((m.group(1) for f in frames if (m := AGENT_FRAME.match(f))), None)
    if agent is None:
        if has("faust/", "mode/utils/"):
            return "faust: dispatch messages to agents' streams"
        if has("maxminddb/"):
            return "geo lookup (mmdb; truncated stack)"
        if has("aiokafka/producer/", "aiokafka/conn.py", "aiokafka/client.py"):
            return "aiokafka: produce requests"
        if has("aiohttp/"):
            return "web server (the health polls)"
        if frames[-1].endswith(("(asyncio/events.py)", "(asyncio/base_events.py)")) or \
                has("(asyncio/", "(mode/services.py)", "(mode/timers.py)"):
            return "asyncio: scheduling task steps and callbacks"
        return "other"
    if has("parse_request_event", "unpack_events", "unpack_samples"):
        step = "parse events"
    elif has("GeoIp.lookup"):
        step = "geo lookup (mmdb)"
    elif has("(detectors/"):
        step = "detector"
    elif has("sort_event", "pack_events", "pack_samples"):
        step = "re-key (sort/pack)"
    elif has("Topic.send", "aiokafka/producer/", "publish (streams/decide.py)"):
        step = "send (detections/re-keyed)"
    elif has("faust/streams.py", "faust/agents/"):
        step = "faust stream (take/ack)"
    else:
        step = "own code"
    return f"{agent}: {step}"


def summarise_profile(path: Path, seconds: float, rate_hz: float = 100.0, top: int = 25) -> dict[str, Any]:
    """A py-spy ``raw`` (collapsed stacks) file summarised: per thread and per activity as %
    of one core (samples / (seconds × rate)), top inclusive project frames and top self
    frames (% of all samples)."""
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    activities: Counter[str] = Counter()
    total = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"error": f"no profile at {path}"}
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = [_frame(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        thread = _thread_of(frames)
        threads[thread] += count
        activities[f"{thread} | {_category(thread, frames)}"] += count
        for frame in set(frames):
            if any(p in frame for p in PROJECT_FILES) and "(streams/__main__.py)" not in frame:
                inclusive[frame] += count
        leaf[frames[-1]] += count
    core = lambda c: round(100 * c / (seconds * rate_hz), 1)  # noqa: E731
    pct = lambda c: round(100 * c / total, 1) if total else 0.0  # noqa: E731
    return {"samples": total, "seconds": seconds, "rate_hz": rate_hz,
            "threads_pct_of_core": {k: core(c) for k, c in threads.most_common()},
            "activities_pct_of_core": {k: core(c) for k, c in activities.most_common()},
            "inclusive_project_pct": [[f, pct(c)] for f, c in inclusive.most_common(top)],
            "self_pct": [[f, pct(c)] for f, c in leaf.most_common(top)]}


def _frame(text: str) -> str:
    """``func (path/to/file.py:123)`` → ``func (file.py)`` — lines merged, path shortened."""
    name, _, where = text.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(where).parts
    for anchor in ("site-packages", "main", "lib"):
        if anchor in parts:
            where = "/".join(parts[len(parts) - parts[::-1].index(anchor):])
            break
    return f"{name} ({where})"


# --------------------------------------------------------------------------- main

def code_version() -> dict[str, Any]:
    """The commit of the measured code (the checkout ``streams`` is imported from) and its
    uncommitted changes under the source folders — figures are per commit."""
    import importlib.util

    spec = importlib.util.find_spec("streams")
    root = Path(spec.origin).parents[1] if spec and spec.origin else Path.cwd()

    def git(*argv: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(root), *argv], capture_output=True, text=True,
                                  check=True, timeout=10).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return None
    dirty = git("status", "--porcelain", "--", "streams", "detectors", "storage", "gatewatch")
    return {"root": str(root), "commit": git("rev-parse", "HEAD"),
            "uncommitted": [line[3:] for line in dirty.splitlines()] if dirty else []}


def run_round(args: argparse.Namespace, label: str, backlog: list[tuple[bytes, bytes]],
              live: list[tuple[bytes, bytes]], expected: dict[str, int], tmp: Path, children: Children,
              profile_s: float = 0.0) -> dict[str, Any]:
    """One measurement on a fresh broker: produce the backlog, bare loops, then the worker."""
    tmp.mkdir(parents=True)
    port = free_port()
    broker = children.add(start_tansu("127.0.0.1", port, tmp / "tansu.log"))
    try:
        wait_for_port("127.0.0.1", port, timeout_s=10)
        settings = load_settings(bootstrap_servers=f"127.0.0.1:{port}", chdb_path=tmp / "chdb",
                                 keys_file=tmp / "keys.toml", worker_web_port=free_port())
        create_topics(settings)
        n = len(backlog)
        produce_eps = produce(settings.bootstrap_servers, settings.topic_requests, backlog)
        bare_raw = bare_consume(settings, n, parse=False)
        bare = bare_consume(settings, n, parse=True)
        if bare["events"] != n or bare["highwater_sum"] != n:
            print(f"  warning: read {bare['events']}, high-watermarks {bare['highwater_sum']}, produced {n}")
        print(f"{label}: produce {produce_eps:,.0f}/s, bare {bare_raw['eps']:,.0f}/s, "
              f"bare+parse {bare['eps']:,.0f}/s; worker...", end="", flush=True)
        worker = run_worker(settings, tmp, children, broker.pid, n, expected, live, args.live_rate,
                            args.poll, args.timeout, profile_s, args.profile_out)
        b = worker["backlog"]
        print(f" {b['eps']:,.0f}/s (10→90 % {b['eps_10_90'] or 0:,.0f}/s, {b['seconds']:.1f} s, "
              f"CPU {b['worker_cpu_pct']:.0f} %){'' if b['completed'] else ' NOT COMPLETED'}", flush=True)
    finally:
        children.stop(broker)
    return {"label": label, "produce_eps": round(produce_eps, 1), "bare": bare_raw, "bare_parse": bare,
            "worker": worker}


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _spread(values: list[float]) -> str:
    return f"{min(values):,.0f}–{max(values):,.0f}" if len(values) > 1 else ""


def print_profile(profile: dict[str, Any]) -> None:
    print(f"\npy-spy on the worker, {profile['seconds']:.0f} s of a backlog run ({profile['samples']} samples), "
          f"% of one core:")
    for name, pct in profile["threads_pct_of_core"].items():
        print(f"  {pct:>5.1f} %  {name}")
        for activity, a_pct in profile["activities_pct_of_core"].items():
            if activity.startswith(name + " | ") and a_pct >= 1.0:
                print(f"  {'':>7}    {a_pct:>5.1f} %  {activity.split(' | ', 1)[1]}")
    print("  (py-spy sees fewer on-CPU samples than /proc counts: read these as shares, the CPU % above as totals)")
    print("top inclusive project frames (% of samples):")
    for frame, pct in profile["inclusive_project_pct"][:15]:
        print(f"  {pct:>5.1f} %  {frame}")
    print("top self frames (% of samples):")
    for frame, pct in profile["self_pct"][:10]:
        print(f"  {pct:>5.1f} %  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000, help="backlog size N")
    parser.add_argument("--repeat", type=int, default=3, help="measured rounds (fresh broker and worker each)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--live-rate", type=float, default=2000.0,
                        help="events/s of the live phase, in the last round (0: off)")
    parser.add_argument("--live-seconds", type=float, default=10.0)
    parser.add_argument("--poll", type=float, default=0.1, help="health poll interval (s)")
    parser.add_argument("--timeout", type=float, default=120.0, help="longest backlog run (s)")
    parser.add_argument("--profile", type=float, default=0.0,
                        help="an extra round with py-spy on the worker for this many s (0: off)")
    parser.add_argument("--profile-out", type=Path,
                        default=Path(tempfile.gettempdir()) / "gatewatch-pipeline-pyspy.txt",
                        help="where the raw py-spy stacks are kept")
    args = parser.parse_args()

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # stop the children by PID in the finally below (SIGTERM too)
    signal.signal(signal.SIGTERM, on_term)

    code = code_version()
    print(f"code: {code['commit'] or 'unknown commit'}"
          + (f" + uncommitted changes in {', '.join(code['uncommitted'])}" if code["uncommitted"] else ""))
    t = time.perf_counter()
    defaults = load_settings()
    traffic = Traffic(args.seed, username_key=defaults.username_hash_key.encode())
    backlog = traffic.events(args.events)
    live = traffic.events(int(args.live_rate * args.live_seconds)) if args.live_rate > 0 else []
    expected = expected_rekeyed([v for _, v in backlog], defaults)
    mean_bytes = sum(len(v) for _, v in backlog) / len(backlog)
    print(f"generated {len(backlog):,} + {len(live):,} events in {time.perf_counter() - t:.1f} s "
          f"(seed {args.seed}, {mean_bytes:.0f} B mean)", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="gw-pipeline-"))
    children = Children()
    rounds: list[dict[str, Any]] = []
    profiled: dict[str, Any] | None = None
    try:
        for r in range(args.repeat):
            last = r == args.repeat - 1
            rounds.append(run_round(args, f"round {r + 1}/{args.repeat}", backlog, live if last else [],
                                    expected, tmp / f"round{r + 1}", children))
        if args.profile > 0:
            profiled = run_round(args, "profiled round", backlog, [], expected, tmp / "profiled", children,
                                 profile_s=args.profile)
    finally:
        children.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    backlogs = [r["worker"]["backlog"] for r in rounds]
    eps = [b["eps"] for b in backlogs]
    eps_10_90 = [b["eps_10_90"] for b in backlogs if b["eps_10_90"]]
    bare_raw = [r["bare"]["eps"] for r in rounds]
    bare = [r["bare_parse"]["eps"] for r in rounds]
    summary = {
        "worker_eps": _median(eps), "worker_eps_min": min(eps), "worker_eps_max": max(eps),
        "worker_eps_10_90": _median(eps_10_90) if eps_10_90 else None,
        "bare_eps": _median(bare_raw), "bare_parse_eps": _median(bare),
        "ratio_worker_to_bare_parse": round(_median(eps) / _median(bare), 4),
        "peak_lag": max(b["peak_lag"] for b in backlogs),
        "rss_start_mb": _median([b["rss_start_mb"] for b in backlogs]),
        "rss_peak_mb": max(b["rss_peak_mb"] for b in backlogs),
        "worker_cpu_pct": _median([b["worker_cpu_pct"] for b in backlogs]),
        "startup_s": _median([r["worker"]["startup_s"] for r in rounds]),
        "all_completed": all(b["completed"] for b in backlogs),
        "target_eps": TARGET_EPS, "target_met": _median(eps) >= TARGET_EPS,
    }
    live_result = rounds[-1]["worker"].get("live")
    if live_result:
        summary["live"] = {k: live_result[k] for k in ("rate", "seconds", "peak_lag", "median_lag", "p95_lag",
                                                        "caught_up", "rss_peak_mb", "rss_end_mb")}

    n = args.events
    print(f"\nmedian of {len(rounds)} round(s), {n:,} events (min–max in brackets):")
    print(f"{'run':<26} {'events/s':>9} {'[min–max]':>15} {'×bare':>6} {'peak lag':>9} {'RSS start':>10} "
          f"{'RSS peak':>9} {'CPU %':>6}")
    print(f"{'bare aiokafka':<26} {summary['bare_eps']:>9,.0f} {_spread(bare_raw):>15} "
          f"{summary['bare_eps'] / summary['bare_parse_eps']:>6.2f} {'-':>9} {'-':>10} {'-':>9} {'-':>6}")
    print(f"{'bare aiokafka + parse':<26} {summary['bare_parse_eps']:>9,.0f} {_spread(bare):>15} {1.0:>6.2f} "
          f"{'-':>9} {'-':>10} {'-':>9} {'-':>6}")
    print(f"{'worker, backlog':<26} {summary['worker_eps']:>9,.0f} {_spread(eps):>15} "
          f"{summary['ratio_worker_to_bare_parse']:>6.3f} {summary['peak_lag']:>9,} "
          f"{summary['rss_start_mb']:>8.0f}MB {summary['rss_peak_mb']:>7.0f}MB {summary['worker_cpu_pct']:>6.0f}")
    if live_result:
        lv = live_result
        print(f"{'worker, live ' + format(lv['rate'], ',.0f') + '/s':<26} {'-':>9} {'':>15} {'-':>6} "
              f"{lv['peak_lag']:>9,} {'':>10} {lv['rss_peak_mb']:>7.0f}MB {'-':>6}")
    print()
    print(f"worker: start-up {summary['startup_s']:.1f} s to ready; 10→90 % rate "
          f"{summary['worker_eps_10_90'] or 0:,.0f}/s; {'' if summary['all_completed'] else 'NOT '}all rounds "
          f"completed")
    for r in rounds:
        b = r["worker"]["backlog"]
        print(f"  {r['label']}: {b['eps']:,.0f}/s over {b['seconds']:.1f} s; request consumer {b['agent_eps'] or 0:,.0f}/s; "
              f"re-keyed agents done at {b['rekeyed_done_s'] if b['rekeyed_done_s'] is not None else 'NOT'} s; "
              f"CPU " + ", ".join(f"{k} {v:.0f} %" for k, v in b["worker_thread_cpu_pct"].items())
              + f"; broker {b['broker_cpu_pct']:.0f} %")
    if live_result:
        lv = live_result
        print(f"live {lv['rate']:,.0f}/s for {lv['seconds']:.1f} s: lag median {lv['median_lag']:,}, "
              f"p95 {lv['p95_lag']:,}, peak {lv['peak_lag']:,}; "
              f"{'caught up' if lv['caught_up'] else 'NOT caught up'} {lv['drain_after_s']:.1f} s after the "
              f"last send; RSS end {lv['rss_end_mb']:.0f} MB")
    print(f"target ≥ {TARGET_EPS:,} events/s per worker: {summary['worker_eps'] / TARGET_EPS:.2f} of it "
          f"({'met' if summary['target_met'] else 'not met'})")
    if profiled is not None and profiled["worker"].get("profile", {}).get("samples"):
        print_profile(profiled["worker"]["profile"])

    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "when": datetime.now(timezone.utc).isoformat(), "machine": platform.platform(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "code": code,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "generated": {"events": len(backlog), "live_events": len(live), "mean_bytes": round(mean_bytes, 1),
                      "mix": MIX, "rekeyed_expected": expected},
        "summary": summary, "rounds": rounds, "profiled_round": profiled,
    }, indent=2))
    print(f"\nwritten {RESULTS}")


if __name__ == "__main__":
    main()
