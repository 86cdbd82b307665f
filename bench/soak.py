"""Soak: a fixed request rate through gateway, broker, worker and store for a bounded time.

What it does, on this machine, 127.0.0.1 only:

1. Starts the local stack as ``gatewatch up`` does (:class:`gatewatch.launcher.Stack`:
   sample API, Tansu broker, worker with chDB, one gateway on the minimal master), with
   127.0.0.1 as the gateway's only trusted proxy and one API key per benign user.
2. Drives ``--rate`` requests/s (open loop: each request starts on schedule, at most
   :data:`MAX_IN_FLIGHT` at once; a request due while the client is at that cap is
   counted as *shed*, never queued) for ``--duration`` s. The client address is sent as
   ``X-Forwarded-For`` (as ``bench/quality_client.py`` does); one ``aiohttp`` session
   carries all clients, because on 2 shared cores the client's own CPU matters
   (aiohttp costs less per request than httpx). The mix (seeded, :data:`MIX`): benign
   users who log in, list their orders and read their profile and orders (1 % of their
   reads ask again for one of two stale order ids: 404s that stay below the BOLA
   detector's distinct-id threshold, as a real client's do);
   a credential stuffer (leaked pairs of :func:`gatewatch.traffic.leaked_credentials`)
   that the worker bans, so later attempts are 403 by decision; a client enumerating
   other users' orders (BOLA); anonymous scanners (401).
3. Every ``--sample-s`` s records: RSS (``VmRSS`` of ``/proc/PID/status``) of every
   part and of this client; the gateway's Prometheus metrics (admin port:
   ``gatewatch_events_sent_total``, ``_event_queue_depth``, ``_spool_bytes``,
   ``_events_dropped_total``); the worker's ``/gatewatch/health/`` (counters
   ``events_requests``, ``stored_requests``; ``sink_pending_events``,
   ``store_spool_bytes``); requests answered at the client, client errors and 5xx.
   **Lag** (end to end) = requests answered − requests the worker stored, split into
   the gateway's part (answered − events the broker acknowledged) and the consumer's
   (acknowledged − stored). Read downstream first, so a sampled lag is never too low.
4. After the traffic, waits (``--drain-timeout``) until the gateway has sent every
   event, the worker stored them all and both spools and the sink are empty; then
   reads ``event_id_counts`` (physical rows per event id, no FINAL) through the
   worker's read API and checks every ``X-Request-Id`` the client received.

Windows: a worker's state grows, by design, until its longest window has filled
(the login aggregates keep 600 s, BOLA 300 s by default), so RSS can only be flat
after that. To see the steady state within a 10-minute run, the soak runs the stack
with those windows shortened (:data:`SOAK_WINDOWS`, at most 120 s) and a warm-up of
the longest window in effect plus one minute (:func:`default_warmup_s`); a leak
still grows after it, only the level of the plateau is lower than with the default
windows. ``--default-windows`` runs the stack's own windows (then use a warm-up past
600 s and a run of 20 minutes or more).

Verdict (bounds are constants here and options on the command line):

* **RSS flat after warm-up**, per process: the samples after the warm-up (at most a
  third of the run) are fitted with a least-squares line (slope, MB/min) and the
  growth = median of the last half − the first sample after warm-up must be at most
  max(:data:`RSS_GROWTH_MB`, :data:`RSS_GROWTH_FRACTION` × that first sample). A leak of
  100 bytes per request at 300 req/s grows 1.7 MB/min, ~7 MB over the last half of a
  10-minute run: the bound catches leaks from a few hundred bytes per request up.
  The broker is *not* judged on flatness: Tansu's ``memory://`` storage keeps every
  record until its topic is deleted (DESIGN.md, Known quirks), so its growth is
  reported per stored request instead (and compared with the bytes the gateway sent).
* **Lag bounded**: the largest end-to-end lag sampled after the warm-up is at most
  ``--max-lag-s`` × rate (default 5 s of traffic; the maximum over the whole traffic,
  start-up included, is reported too), and the lag is 0 once drained.
* **Nothing dropped**: every request id the client received is stored exactly once;
  the gateway dropped no event (``gatewatch_events_dropped_total`` = 0).

It prints the table of samples and the verdict and writes ``bench/results/soak.json``.

Run: ``.venv/bin/python bench/soak.py [--rate 300] [--duration 600] [--sample-s 10]``
(about ``duration`` + 30 s); a short check: ``--duration 60 --rate 100``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bench.*` when run as a script

import aiohttp  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from bench.pipeline import V4_PREFIXES, code_version, cpu_s, rss_mb  # noqa: E402
from bench.quality import machine_busy_s  # noqa: E402
from gatewatch.admin_auth import auth_headers  # noqa: E402
from gatewatch.demo import make_keys  # noqa: E402
from gatewatch.launcher import Stack, signals_raise_interrupt  # noqa: E402
from gatewatch.netutil import wait_for_port  # noqa: E402
from gatewatch.sample_api import ORDERS_PER_USER, password_for  # noqa: E402
from gatewatch.settings import GatewatchSettings, load_settings  # noqa: E402
from gatewatch.traffic import leaked_credentials  # noqa: E402
from gatewatch.worker_api import WorkerApi  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "soak.json"
#: Requests in flight at most; a request due while this many are open is shed (counted).
MAX_IN_FLIGHT = 256
#: Scheduler tick (s): every tick starts the requests that came due.
TICK_S = 0.005
REQUEST_TIMEOUT_S = 10.0
#: RSS bound after warm-up: growth ≤ max(RSS_GROWTH_MB, RSS_GROWTH_FRACTION × first sample).
RSS_GROWTH_MB = 16.0
RSS_GROWTH_FRACTION = 0.05
#: Share of each kind of request (normalised): mostly benign, a small attack component.
#: Windows the soak shortens (module docstring): settings field → overrides.
SOAK_WINDOWS: dict[str, dict[str, float]] = {
    "credential_stuffing": {"aggregate_window_s": 120.0},
    "bola": {"window_s": 120.0},
}
#: Margin (s) after the longest window before RSS is judged: the windows' expiry runs
#: on event time, up to a sample period late.
WARMUP_MARGIN_S = 60.0
MIX = {"benign": 0.955, "stuffing": 0.02, "bola": 0.01, "anonymous": 0.015}
ATTACKER_IP = "185.220.101.7"  # data only: sent as X-Forwarded-For, no packet leaves 127.0.0.1
BOLA_IP = "45.155.205.33"
SCANNER_PREFIX = "103.251.167"
#: First order id of the sample API's seeded data (gatewatch/sample_api.py).
FIRST_ORDER_ID = 1000


# --------------------------------------------------------------------------- traffic

@dataclass
class User:
    """A benign user (sample API ``user{n}``) with its API key, address and session."""

    n: int
    ip: str
    api_key: str
    token: str | None = None
    uid: int | None = None
    orders: list[int] = field(default_factory=list)
    stale_ids: tuple[int, ...] = ()  # orders it keeps asking for that do not exist (404)


@dataclass
class ClientLog:
    """What the client saw: answers by status, request ids, errors, shed requests."""

    statuses: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    request_ids: set[str] = field(default_factory=set)
    repeated_ids: int = 0  # an X-Request-Id seen twice (must be 0)
    no_request_id: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    shed: int = 0
    blocked: Counter[str] = field(default_factory=Counter)  # by kind: 403 {"error": "blocked"}

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())


def user_address(n: int) -> str:
    """A stable public-looking IPv4 address for user ``n`` (spread over :data:`V4_PREFIXES`)."""
    prefix = V4_PREFIXES[n % len(V4_PREFIXES)]
    return f"{prefix}.{(n // len(V4_PREFIXES)) % 256}.{n % 250 + 1}"


class Traffic:
    """Seeded choice of the next request: ``(kind, method, path, headers, json, user)``."""

    def __init__(self, users: list[User], seed: int) -> None:
        self.rng = random.Random(seed)
        self.users = users
        self.leaked = leaked_credentials(100_000, seed)
        self.leaked_next = 0
        self.kinds, self.weights = list(MIX), list(MIX.values())
        self.bola_user = users[-1]  # the last user's key enumerates other users' orders
        self.max_order = FIRST_ORDER_ID + ORDERS_PER_USER * (len(users) + 1)

    def next(self) -> tuple[str, str, str, dict[str, str], Any, User | None]:
        rng = self.rng
        kind = rng.choices(self.kinds, self.weights)[0]
        if kind == "stuffing":
            user, password = self.leaked[self.leaked_next % len(self.leaked)]
            self.leaked_next += 1
            return kind, "POST", "/login", {"X-Forwarded-For": ATTACKER_IP}, \
                {"username": user, "password": password}, None
        if kind == "anonymous":
            ip = f"{SCANNER_PREFIX}.{rng.randint(1, 254)}"
            return kind, "GET", f"/users/{rng.randint(1, 50)}", {"X-Forwarded-For": ip}, None, None
        user = self.bola_user if kind == "bola" else rng.choice(self.users[:-1])
        headers = {"X-Forwarded-For": BOLA_IP if kind == "bola" else user.ip, "X-API-Key": user.api_key}
        if user.token is None:
            return kind, "POST", "/login", headers, \
                {"username": f"user{user.n}", "password": password_for(f"user{user.n}")}, user
        headers["Authorization"] = f"Bearer {user.token}"
        if kind == "bola":
            return kind, "GET", f"/orders/{rng.randint(FIRST_ORDER_ID, self.max_order)}", headers, None, user
        if not user.orders:
            return kind, "GET", f"/users/{user.uid}/orders", headers, None, user
        roll = rng.random()
        if roll < 0.4:
            return kind, "GET", f"/users/{user.uid}", headers, None, user
        if roll < 0.99:
            return kind, "GET", f"/orders/{rng.choice(user.orders)}", headers, None, user
        return kind, "GET", f"/orders/{rng.choice(user.stale_ids)}", headers, None, user


async def send_one(session: aiohttp.ClientSession, log: ClientLog, request: tuple, sem: asyncio.Semaphore) -> None:
    """Send one request and record its answer (and a user's session or orders from it)."""
    kind, method, path, headers, body, user = request
    try:
        async with session.request(method, path, headers=headers, json=body) as resp:
            data = await resp.read()
            status = resp.status
            rid = resp.headers.get("X-Request-Id")
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        log.errors[type(exc).__name__] += 1
        return
    finally:
        sem.release()
    log.statuses[str(status)] += 1
    log.by_kind[kind] += 1
    if rid is None:
        log.no_request_id += 1
    elif rid in log.request_ids:
        log.repeated_ids += 1
    else:
        log.request_ids.add(rid)
    if status == 403 and b'"blocked"' in data:
        log.blocked[kind] += 1
    if user is None or status != 200:
        return
    try:
        doc = json.loads(data)
    except ValueError:
        return
    if path == "/login":
        user.token, user.uid = doc.get("token"), doc.get("user_id")
    elif path.endswith("/orders") and isinstance(doc.get("orders"), list):
        user.orders = [int(o) for o in doc["orders"]]


async def drive(base_url: str, traffic: Traffic, log: ClientLog, rate: float, duration_s: float) -> None:
    """Start ``rate`` requests/s on schedule for ``duration_s`` s, then wait for the open ones."""
    sem = asyncio.Semaphore(MAX_IN_FLIGHT)
    tasks: set[asyncio.Task] = set()
    connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(base_url=base_url, connector=connector, timeout=timeout) as session:
        loop = asyncio.get_running_loop()
        start, due_sent = loop.time(), 0
        while (elapsed := loop.time() - start) < duration_s:
            due = int(elapsed * rate) + 1 - due_sent
            for _ in range(max(0, due)):
                if sem.locked():
                    log.shed += 1
                    continue
                await sem.acquire()
                task = asyncio.create_task(send_one(session, log, traffic.next(), sem))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            due_sent += max(0, due)
            await asyncio.sleep(TICK_S)
        if tasks:
            await asyncio.gather(*tasks)


# --------------------------------------------------------------------------- sampling

def prometheus_sums(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """Sum of every sample (all label sets) of each metric family in ``names`` (family names
    as ``prometheus_client`` parses them: counters without ``_total``)."""
    out = dict.fromkeys(names, 0.0)
    for family in text_string_to_metric_families(text):
        if family.name in out:
            out[family.name] += sum(s.value for s in family.samples
                                    if not s.name.endswith(("_created", "_bucket", "_count", "_sum")))
    return out


GATEWAY_METRICS = ("gatewatch_events_sent", "gatewatch_events_dropped", "gatewatch_events_spooled",
                   "gatewatch_event_queue_depth", "gatewatch_spool_bytes")


def add_lags(s: dict[str, Any]) -> None:
    """Set a sample's lags (requests) from its raw counts: ``gateway_lag`` (answered, not yet
    acknowledged by the broker), ``consumer_lag`` (acknowledged, not yet stored) and ``lag``
    (end to end: answered, not yet stored)."""
    s["gateway_lag"] = s["answered"] - s["events_sent"]
    s["consumer_lag"] = s["events_sent"] - s["stored_requests"]
    s["lag"] = s["answered"] - s["stored_requests"]


class Sampler:
    """Reads RSS of every part, the gateway's metrics and the worker's health."""

    def __init__(self, stack: Stack, log: ClientLog) -> None:
        self.stack, self.log = stack, log
        self.headers = auth_headers(stack.settings.admin_token)
        self.pids = {p.name: p.proc.pid for p in stack.parts} | {"client": os.getpid()}
        self.t0 = time.monotonic()
        self.samples: list[dict[str, Any]] = []

    async def sample(self, session: aiohttp.ClientSession, phase: str) -> dict[str, Any]:
        # Downstream first (worker, then gateway, then the client's count), so that a lag
        # read while traffic flows is never below the true one.
        started = time.monotonic()
        async with session.get(f"{self.stack.worker_url}/gatewatch/health/", headers=self.headers) as resp:
            health = await resp.json()
        gw = dict.fromkeys(GATEWAY_METRICS, 0.0)
        for url in self.stack.metrics_urls:
            async with session.get(url, headers=self.headers) as resp:
                for k, v in prometheus_sums(await resp.text(), GATEWAY_METRICS).items():
                    gw[k] += v
        c = health.get("counters", {})
        status = self.log.statuses
        s = {"t": round(time.monotonic() - self.t0, 1), "phase": phase,
             "answered": self.log.answered, "shed": self.log.shed,
             "client_errors": sum(self.log.errors.values()),
             "http_5xx": sum(n for k, n in status.items() if k.startswith("5")),
             "events_sent": int(gw["gatewatch_events_sent"]),
             "events_dropped": int(gw["gatewatch_events_dropped"]),
             "events_spooled": int(gw["gatewatch_events_spooled"]),
             "gateway_queue": int(gw["gatewatch_event_queue_depth"]),
             "gateway_spool_bytes": int(gw["gatewatch_spool_bytes"]),
             "events_requests": int(c.get("events_requests", 0)),
             "stored_requests": int(c.get("stored_requests", 0)),
             "sink_pending_events": int(health.get("sink_pending_events", 0)),
             "store_spool_bytes": int(health.get("store_spool_bytes", 0)),
             "rss_mb": {name: round(rss_mb(pid), 1) for name, pid in self.pids.items()},
             "cpu_s": {name: cpu_s(pid) for name, pid in self.pids.items()},
             "machine_busy_s": machine_busy_s(), "sample_ms": round(1000 * (time.monotonic() - started))}
        add_lags(s)
        self.samples.append(s)
        return s


def drained(s: dict[str, Any]) -> bool:
    """Every answered request sent by the gateway and stored by the worker, nothing waiting."""
    return (s["events_sent"] >= s["answered"] and s["stored_requests"] >= s["events_sent"]
            and s["gateway_queue"] == 0 and s["gateway_spool_bytes"] == 0
            and s["sink_pending_events"] == 0 and s["store_spool_bytes"] == 0)


def print_row(s: dict[str, Any], names: list[str], rate: float | None, header: bool = False) -> None:
    cols = ["t s", "phase", "answered", "req/s", "sent", "stored", "gw lag", "cons lag", "lag", "pending",
            "st.spool", "shed", "err", "5xx"] + [f"{n} MB" for n in names]
    widths = [5, 7, 8, 5, 8, 8, 6, 8, 5, 7, 8, 5, 4, 4] + [max(9, len(n) + 3) for n in names]
    if header:
        print(" ".join(f"{c:>{w}}" for c, w in zip(cols, widths)), flush=True)
    values = [f"{s['t']:.0f}", s["phase"], s["answered"], "-" if rate is None else f"{rate:.0f}",
              s["events_sent"], s["stored_requests"], s["gateway_lag"], s["consumer_lag"], s["lag"],
              s["sink_pending_events"], s["store_spool_bytes"], s["shed"], s["client_errors"], s["http_5xx"]] + \
             [f"{s['rss_mb'][n]:.1f}" for n in names]
    print(" ".join(f"{v:>{w}}" for v, w in zip(values, widths)), flush=True)


async def soak(stack: Stack, traffic: Traffic, log: ClientLog, args: argparse.Namespace) -> Sampler:
    """Traffic and sampling, then the drain; returns the sampler with every sample."""
    sampler = Sampler(stack, log)
    names = list(sampler.pids)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        first = await sampler.sample(session, "start")
        print_row(first, names, None, header=True)
        driver = asyncio.create_task(drive(stack.gateway_url, traffic, log, args.rate, args.duration))
        last_t, last_answered = first["t"], first["answered"]
        while not driver.done():
            await asyncio.wait({driver}, timeout=args.sample_s)
            s = await sampler.sample(session, "traffic" if not driver.done() else "end")
            print_row(s, names, (s["answered"] - last_answered) / max(s["t"] - last_t, 1e-9))
            last_t, last_answered = s["t"], s["answered"]
        await driver
        deadline = time.monotonic() + args.drain_timeout
        while True:
            await asyncio.sleep(1.0)
            s = await sampler.sample(session, "drain")
            if drained(s) or time.monotonic() > deadline:
                s["phase"] = "drained" if drained(s) else "timeout"
                print_row(s, names, None)
                break
    return sampler


# --------------------------------------------------------------------------- verdict

def slope_per_min(ts: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` over ``ts`` (s), per minute; 0 for fewer than 2 points."""
    if len(ts) < 2:
        return 0.0
    return statistics.linear_regression(ts, ys).slope * 60.0


def rss_verdicts(samples: list[dict[str, Any]], warmup_s: float) -> dict[str, dict[str, Any]]:
    """Per process: first sample after warm-up, growth of the last half, slope, pass/fail."""
    steady = [s for s in samples if s["phase"] == "traffic" and s["t"] >= warmup_s]
    out: dict[str, dict[str, Any]] = {}
    if len(steady) < 2:
        return out
    for name in steady[0]["rss_mb"]:
        ts = [s["t"] for s in steady]
        ys = [s["rss_mb"][name] for s in steady]
        first = ys[0]
        growth = statistics.median(ys[len(ys) // 2:]) - first
        bound = max(RSS_GROWTH_MB, RSS_GROWTH_FRACTION * first)
        row: dict[str, Any] = {"first_mb": first, "last_mb": ys[-1], "peak_mb": max(ys),
                               "growth_mb": round(growth, 1), "bound_mb": round(bound, 1),
                               "slope_mb_per_min": round(slope_per_min(ts, ys), 2),
                               "last_half_slope_mb_per_min": round(slope_per_min(ts[len(ts) // 2:],
                                                                                 ys[len(ys) // 2:]), 2)}
        if name == "client":
            row["judged"] = False
            row["note"] = "the load generator itself (keeps every request id)"
        elif name == "broker":
            stored = steady[-1]["stored_requests"] - steady[0]["stored_requests"]
            row["judged"] = False
            row["kb_per_request"] = round((ys[-1] - first) * 1024 / stored, 2) if stored else None
            row["note"] = ("Tansu memory:// keeps every record (DESIGN.md): growth is retained data, "
                           "reported per request stored")
        else:
            row["judged"] = True
            row["flat"] = growth <= bound
        out[name] = row
    return out


def cpu_shares(first: dict[str, Any], last: dict[str, Any]) -> dict[str, float]:
    """CPU of each process between two samples, and of the whole machine (every user of it:
    the machine is shared), as % of one core."""
    wall = last["t"] - first["t"]
    if wall <= 0:
        return {}
    out = {name: round(100 * (last["cpu_s"][name] - first["cpu_s"][name]) / wall, 1) for name in first["cpu_s"]}
    (busy0, total0), (busy1, total1) = first["machine_busy_s"], last["machine_busy_s"]
    cores = os.cpu_count() or 1
    out["machine (all users)"] = round(100 * cores * (busy1 - busy0) / max(total1 - total0, 1e-9), 1)
    return out


def check_stored(api: WorkerApi, log: ClientLog) -> dict[str, Any]:
    """Every request id the client received stored exactly once (``event_id_counts``)."""
    rows = api.query("event_id_counts")
    counts = {str(r["event_id"]).replace("-", ""): int(r["count"]) for r in rows}
    ids = {rid.replace("-", "") for rid in log.request_ids}
    missing = [rid for rid in ids if rid not in counts]
    duplicated = {rid: n for rid, n in counts.items() if n > 1}
    extra = len(set(counts) - ids)
    return {"client_ids": len(ids), "stored_ids": len(counts), "stored_rows": sum(counts.values()),
            "missing": len(missing), "missing_sample": missing[:5], "duplicated": len(duplicated),
            "duplicated_sample": dict(list(duplicated.items())[:5]),
            "stored_not_seen_by_client": extra, "table_counts": api.table_counts()}


def judge(result: dict[str, Any], warmup_s: float, max_lag_s: float) -> dict[str, Any]:
    """The verdict of a run's ``result`` (samples, client, stored, rate): RSS per process, lag
    and the three checks of the module docstring."""
    samples = result["samples"]
    for s in samples:
        add_lags(s)
    during = [s for s in samples if s["phase"] in ("traffic", "end")]
    final = samples[-1]
    rss = rss_verdicts(samples, warmup_s)
    lag_bound = int(max_lag_s * result["rate"])
    lags = {k: max((s[k] for s in during), default=0) for k in ("lag", "gateway_lag", "consumer_lag")}
    steady_lag = max((s["lag"] for s in during if s["t"] >= warmup_s), default=0)
    stored, client = result["stored"], result["client"]
    checks = {
        "rss_flat": bool(rss) and all(r["flat"] for r in rss.values() if r["judged"]),
        "lag_bounded": steady_lag <= lag_bound and final["phase"] == "drained" and final["lag"] <= 0,
        "nothing_dropped": (stored["missing"] == 0 and stored["duplicated"] == 0
                            and final["events_dropped"] == 0 and client["repeated_ids"] == 0),
    }
    ok = all(checks.values()) and result["dead_part"] is None
    traffic = [s for s in during if s["phase"] == "traffic"]
    return {"warmup_s": warmup_s, "bounds": {"rss_growth_mb": RSS_GROWTH_MB,
                                             "rss_growth_fraction": RSS_GROWTH_FRACTION,
                                             "max_lag_events": lag_bound, "max_lag_s": max_lag_s},
            "rss": rss, "max_lags": lags, "max_lag_after_warmup": steady_lag, "final_lag": final["lag"], "drain_phase": final["phase"],
            "drain_s": round(final["t"] - during[-1]["t"], 1) if during else None,
            "achieved_rps": round(traffic[-1]["answered"] / traffic[-1]["t"], 1) if traffic else 0.0,
            "cpu_pct_of_core": cpu_shares(samples[0], during[-1]) if during else {},
            "checks": checks, "verdict": "pass" if ok else "fail"}


def max_sample_ms(result: dict[str, Any]) -> int | None:
    """The longest a sample took to read (ms): a lag read over a slow sample is inflated."""
    return max((s["sample_ms"] for s in result["samples"] if "sample_ms" in s), default=None)


def print_report(result: dict[str, Any], v: dict[str, Any], samples_table: bool) -> None:
    """The table of samples (when asked: a run prints it live), the RSS table and the verdict."""
    names = list(result["samples"][0]["rss_mb"])
    last_t, last_answered = 0.0, 0
    for i, s in enumerate(result["samples"] if samples_table else []):
        rate = None if s["phase"] in ("start", "drain", "drained", "timeout") else \
            (s["answered"] - last_answered) / max(s["t"] - last_t, 1e-9)
        print_row(s, names, rate, header=i == 0)
        last_t, last_answered = s["t"], s["answered"]
    print(f"\nRSS after a warm-up of {v['warmup_s']:.0f} s (MB; growth = median of the last half − first "
          f"sample; bound max({RSS_GROWTH_MB:.0f} MB, {RSS_GROWTH_FRACTION:.0%} of the first sample))")
    print(f"{'process':<12} {'first':>8} {'last':>8} {'peak':>8} {'growth':>8} {'bound':>7} {'MB/min':>8} "
          f"{'last half':>10}  verdict")
    for name, r in v["rss"].items():
        verdict = ("flat" if r["flat"] else "GROWS") if r["judged"] else "not judged: " + r["note"]
        if name == "broker" and r.get("kb_per_request") is not None:
            verdict += f"; {r['kb_per_request']:.2f} KB per request stored"
        print(f"{name:<12} {r['first_mb']:>8.1f} {r['last_mb']:>8.1f} {r['peak_mb']:>8.1f} {r['growth_mb']:>8.1f} "
              f"{r['bound_mb']:>7.1f} {r['slope_mb_per_min']:>8.2f} {r['last_half_slope_mb_per_min']:>10.2f}  "
              f"{verdict}")
    print("CPU during the traffic (% of one core): "
          + ", ".join(f"{k} {x:.0f}" for k, x in v["cpu_pct_of_core"].items()))
    c, st, lags = result["client"], result["stored"], v["max_lags"]
    print(f"\nclient: {c['answered']} answered ({v['achieved_rps']:.0f}/s achieved, {result['rate']:.0f}/s "
          f"offered), shed {c['shed']}, errors {c['errors'] or 0}, no X-Request-Id {c['no_request_id']}, "
          f"blocked by decision {c['blocked']}; sampling took up to {max_sample_ms(result)} ms; "
          f"statuses {dict(sorted(c['statuses'].items()))}")
    print(f"lag (answered − stored): max {v['max_lag_after_warmup']} after the warm-up, {lags['lag']} during all "
          f"the traffic (gateway → broker max {lags['gateway_lag']}, broker → store max {lags['consumer_lag']}); bound "
          f"{v['bounds']['max_lag_events']} = {v['bounds']['max_lag_s']:g} s × rate; {v['final_lag']} at the end "
          f"({v['drain_phase']} {v['drain_s']} s after the traffic)")
    print(f"stored: {st['client_ids']} request ids received, {st['missing']} missing, {st['duplicated']} stored "
          f"twice or more, {st['stored_not_seen_by_client']} stored but not received by the client; gateway "
          f"dropped {result['samples'][-1]['events_dropped']}, spooled {result['samples'][-1]['events_spooled']}; "
          f"tables {st['table_counts']}")
    if result["dead_part"]:
        print(f"a part died during the run: {result['dead_part']}")
    print("\nverdict: " + ", ".join(f"{k} {'yes' if x else 'NO'}" for k, x in v["checks"].items())
          + f" → {v['verdict'].upper()}")


def soak_settings(run_dir: Path, default_windows: bool) -> GatewatchSettings:
    """The stack's settings: keys file, a free port, 127.0.0.1 as the trusted proxy and,
    unless ``default_windows``, the windows of :data:`SOAK_WINDOWS`."""
    base = load_settings()
    windows = {} if default_windows else {
        field: getattr(base, field).model_copy(update=changes) for field, changes in SOAK_WINDOWS.items()}
    return load_settings(keys_file=run_dir / "keys.toml", listen_port=0, trusted_proxies=["127.0.0.1/32"],
                         **windows)


def longest_window_s(settings: GatewatchSettings) -> float:
    """The longest span (s) over which the worker's per-key state fills with this traffic:
    the windows of credential stuffing (per IP and aggregate), BOLA, and latency (the open
    window and the one closing; its baseline is an EWMA of fixed size). The other state
    (geo, behaviour, BOLA's ids per principal) is per principal, which the soak's fixed
    users bound."""
    cs = settings.credential_stuffing
    return max(cs.window_s, cs.aggregate_window_s, cs.spike_bucket_s, settings.bola.window_s,
               2 * settings.latency.window_s)


def default_warmup_s(settings: GatewatchSettings) -> float:
    """Warm-up (s) before RSS is judged: the longest window plus :data:`WARMUP_MARGIN_S`."""
    return longest_window_s(settings) + WARMUP_MARGIN_S


def run(args: argparse.Namespace, warmup_s: float) -> dict[str, Any]:
    """Start the stack, soak it, check the store, stop it; the raw result (no verdict)."""
    code = code_version()
    run_dir = Path(tempfile.mkdtemp(prefix="gw-soak-"))
    keys = make_keys(run_dir / "keys.toml", args.users + 1)
    rng = random.Random(args.seed)
    users = [User(n, user_address(n), key, stale_ids=(rng.randint(90_000, 99_999), rng.randint(90_000, 99_999)))
             for n, key in enumerate(keys, 1)]
    settings = soak_settings(run_dir, args.default_windows)
    stack = Stack(settings, run_dir / "stack", sample_api=True, sample_api_args=["--users", str(args.users + 1)])
    log = ClientLog()
    machine_load = os.getloadavg()
    print(f"code: {code['commit'] or 'unknown'}" + (f" + uncommitted {', '.join(code['uncommitted'])}"
                                                    if code["uncommitted"] else ""))
    print(f"soak: {args.rate:.0f} req/s for {args.duration:.0f} s, sample every {args.sample_s:.0f} s, "
          f"warm-up {warmup_s:.0f} s; load average before start {machine_load[0]:.2f} "
          f"({os.cpu_count()} CPUs); run dir {run_dir}", flush=True)
    print("windows: " + ("the stack's defaults" if args.default_windows else
                         ", ".join(f"{field}.{name}={value:.0f} s" for field, changes in SOAK_WINDOWS.items()
                                   for name, value in changes.items()))
          + f"; longest window {longest_window_s(settings):.0f} s", flush=True)
    t0 = time.monotonic()
    try:
        with signals_raise_interrupt():
            stack.start()
            for url in stack.metrics_urls:  # the admin port opens after the listening port
                host, _, port = url.split("/")[2].rpartition(":")
                wait_for_port(host, int(port), timeout_s=30)
            print(f"stack ready in {time.monotonic() - t0:.1f} s: "
                  + ", ".join(f"{p.name} pid {p.proc.pid}" for p in stack.parts), flush=True)
            sampler = asyncio.run(soak(stack, Traffic(users, args.seed), log, args))
            stored = check_stored(WorkerApi(stack.worker_url, timeout_s=120.0,
                                            token=stack.settings.admin_token), log)
            dead = stack.dead_part()
    finally:
        stack.stop()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "when": datetime.now(timezone.utc).isoformat(), "machine": platform.platform(), "cpus": os.cpu_count(),
        "load_average_before": machine_load, "load_average_after": os.getloadavg(), "code": code,
        "args": {k: str(x) if isinstance(x, Path) else x for k, x in vars(args).items()},
        "rate": args.rate, "mix": MIX,
        "windows": {} if args.default_windows else SOAK_WINDOWS, "longest_window_s": longest_window_s(settings),
        "client": {"answered": log.answered, "shed": log.shed, "errors": dict(log.errors),
                   "no_request_id": log.no_request_id, "repeated_ids": log.repeated_ids,
                   "blocked": dict(log.blocked), "statuses": dict(log.statuses), "by_kind": dict(log.by_kind)},
        "stored": stored, "dead_part": dead.name if dead else None, "samples": sampler.samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=300.0, help="requests/s offered")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of traffic")
    parser.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--warmup-s", type=float, default=None,
                        help="seconds before RSS is judged (at most a third of the run; default: the "
                             "longest window in effect + 60 s)")
    parser.add_argument("--default-windows", action="store_true",
                        help="run the stack's own windows instead of SOAK_WINDOWS")
    parser.add_argument("--users", type=int, default=200, help="benign users (one API key each)")
    parser.add_argument("--max-lag-s", type=float, default=5.0,
                        help="lag bound in seconds of traffic (max lag ≤ this × rate)")
    parser.add_argument("--drain-timeout", type=float, default=120.0, help="seconds to wait for the backlog")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs, chDB)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file")
    parser.add_argument("--report", type=Path, default=None,
                        help="no run: judge the samples of this results file again (with --warmup-s, "
                             "--max-lag-s) and write the verdict into --out")
    args = parser.parse_args()

    if args.report is not None:
        result = json.loads(args.report.read_text())
        result.setdefault("rate", result["args"]["rate"])
        duration = result["args"]["duration"]
        result["rejudged"] = datetime.now(timezone.utc).isoformat()
        for stale in ("rss", "checks", "max_lag", "bounds", "warmup_s", "cpu_pct_of_core"):
            result.pop(stale, None)  # an earlier verdict's figures; judged again below
        for sample in result["samples"]:
            sample.pop("answered_not_stored", None)
    else:
        if args.warmup_s is None:
            args.warmup_s = default_warmup_s(soak_settings(Path("."), args.default_windows))
        result = run(args, min(args.warmup_s, args.duration / 3))
        duration = args.duration
    if args.warmup_s is None:
        args.warmup_s = float(result["args"]["warmup_s"])
    result["verdict"] = judge(result, min(args.warmup_s, duration / 3), args.max_lag_s)
    print_report(result, result["verdict"], samples_table=args.report is not None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
