"""Detection quality on the real pipeline: labelled traffic from a seed, scored per detector.

What it does, on this machine, 127.0.0.1 only:

1. **Traffic plan** (:mod:`bench.quality_actors`): benign actors (people, a
   corporate NAT office, a mobile user changing cells, a VPN user, a nightly
   batch job, a bulk-sync client) and attacks (credential stuffing from one IP
   at 150 req/s and slowly, distributed stuffing over 200 IPs, BOLA over
   sequential ids and over UUIDs at 150 req/s and slowly, impossible travel,
   an upstream latency regression), generated from ``--seed``. Client
   addresses are real public IPv4 addresses that the installed DB-IP data
   locates in the wanted country/ASN (:mod:`bench.quality_addresses`; run
   ``gatewatch geo install`` first), sent as ``X-Forwarded-For`` from
   127.0.0.1, the gateway's only trusted proxy.
2. **The real pipeline** — :class:`gatewatch.launcher.Stack` as ``gatewatch
   up``/``demo`` start it: the sample API (with the harness's knobs: 400 users,
   a bulk owner, an unchecked documents route, latency control), a Tansu
   broker, the Faust worker with chDB, the gateway; the traffic is played
   through the gateway (:mod:`bench.quality_client`) while a follower of the
   detections and decisions topics notes when each arrives, and a probe in its own
   process (:mod:`bench.broker_probe`) measures the broker's own hop every 50 ms
   (``broker_probe`` in the results: median and p90 per 10 s of traffic). The request
   events' Kafka timestamps are read once after the traffic; ``--follow-requests``
   follows the request topic live instead, which adds the "event seen" leg and
   costs the broker ~0.1 of a core (seed 1: 0.52–0.54 cores with it, 0.43 without;
   Tansu reads cost more the fuller the partition, ``bench/broker_growth.py``).
3. **Read back** after the run through the worker's read API
   (:class:`gatewatch.store_reader.StoreReader`, named queries): every stored
   request, detection and decision.
4. **Score** (:mod:`bench.quality_scoring`): per detector precision, recall,
   benign actors blocked; per attack the time from its start to the threshold
   crossing (the request that made the detector's window cross, named by the
   detection's sample ids) and to the first 403, requests answered and foreign
   objects returned before the first block, requests answered after the
   threshold; the targets with a verdict each.

It prints tables and writes ``bench/results/quality.json``.

Settings: the product's defaults, except what a few minutes of traffic needs —
the gateway trusts 127.0.0.1 as a proxy, and the latency detector's windows
are 10 s instead of 60 s (:data:`LATENCY_WINDOW_S`; 5 baseline windows and 3
bad ones then fit in a run). Everything else (credential-stuffing, BOLA and
geo thresholds, rate limits, decision TTLs) is the default.

Targets (issue 4, "Quality harness"): recall ≥ 0.99 on attack actors, zero
benign actors blocked, median time from threshold crossing to enforced 403 ≤
50 ms, and at 150 req/s from one source at most 2 attack requests answered
after the threshold is crossed.

Run: ``.venv/bin/python bench/quality.py [--seed 1] [--duration 160]
[--set fetch_max_wait_ms=5] [--follow-requests]`` (about 3 minutes: ~15 s start-up, the traffic,
~15 s to drain and read; ``--set`` overrides a settings field for the whole
stack, recorded in the results). The machine's load average and the cores each
part used during the traffic are recorded: figures taken on a shared machine
say so. Logs, the store and ``outcomes.json`` (every answer) stay in ``--run-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bench.*` when run as a script

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench import broker_probe  # noqa: E402
from bench.pipeline import cpu_s  # noqa: E402
from bench.quality_actors import Scenario, build_scenario  # noqa: E402
from bench.quality_addresses import AddressBook  # noqa: E402
from bench.quality_client import PlayLog, Player, follow_requests, rekeyed_times, request_times, topic_records  # noqa: E402
from bench.quality_scoring import (StoredDecision, StoredDetection, StoredRequest,  # noqa: E402
                                   score)
from gatewatch.demo import TopicWatch  # noqa: E402
from gatewatch.keys import add_key  # noqa: E402
from gatewatch.launcher import Stack  # noqa: E402
from gatewatch.settings import GatewatchSettings, LatencySettings, load_settings  # noqa: E402
from gatewatch.store_reader import StoreReader  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "quality.json"
#: Latency-detector window for the harness (s): the default 60 s would need 8+ minutes.
LATENCY_WINDOW_S = 10.0
#: Seconds to wait after the traffic for the last detections and decisions to arrive.
SETTLE_S = 3.0
#: Fetch wait of the harness's topic followers (ms); Tansu does not wake a waiting fetch.
FOLLOWER_FETCH_WAIT_MS = 5
#: The broker probe's output, in the run directory.
PROBE_FILE = "broker-probe.jsonl"


def harness_settings(run_dir: Path, overrides: dict[str, Any] | None = None) -> GatewatchSettings:
    """The defaults, plus the trusted proxy and the shorter latency windows (module docstring),
    then ``overrides`` (top-level settings fields, as ``--set`` gives them)."""
    return load_settings(**{"keys_file": run_dir / "keys.toml", "listen_port": 0,
                            "trusted_proxies": ["127.0.0.1/32"],
                            "latency": LatencySettings(window_s=LATENCY_WINDOW_S), **(overrides or {})})


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["fetch_max_wait_ms=5", 'bola={"min_distinct_ids": 10}']`` → overrides; a value is
    read as JSON when it parses, else kept as text. Raises ``ValueError`` without ``=``."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--set expects NAME=VALUE, got {item!r}")
        try:
            out[name] = json.loads(value)
        except ValueError:
            out[name] = value
    return out


def code_state() -> dict[str, Any]:
    """The commit the figures were taken on, and the product files changed but not committed
    then (several engineers share the working tree; the run used it as it was)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout.strip()

    dirty = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
             if line[3:].split("/")[0] in ("inline", "streams", "detectors", "storage", "gatewatch")]
    return {"head": git("rev-parse", "--short", "HEAD"), "uncommitted_product_files": dirty}


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores (``/proc/stat``)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / tick, sum(fields) / tick


class CpuMeter:
    """CPU used during the traffic: each stack part, this harness process and the whole
    machine (other users of the machine included), as shares of one core."""

    def __init__(self, stack: Stack) -> None:
        self.pids = {part.name: part.proc.pid for part in stack.parts}
        self.start = self._sample()

    def _sample(self) -> dict[str, float]:
        sample = {name: cpu_s(pid) for name, pid in self.pids.items()}
        t = os.times()
        sample["harness"] = t.user + t.system
        sample["machine"], sample["_total"] = machine_busy_s()
        sample["_wall"] = time.monotonic()
        return sample

    def stop(self) -> dict[str, float]:
        """Cores used on average since the start, per part, ``harness`` and ``machine``."""
        end = self._sample()
        wall = end["_wall"] - self.start["_wall"]
        return {k: round((end[k] - self.start[k]) / wall, 2) for k in end if not k.startswith("_")}


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def read_store(reader: StoreReader, since: float, until: float) -> tuple[
        dict[str, StoredRequest], list[StoredDetection], list[StoredDecision]]:
    """Every stored request, detection and decision of the run (named queries)."""
    window = {"since": datetime.fromtimestamp(since, timezone.utc).isoformat(),
              "until": datetime.fromtimestamp(until, timezone.utc).isoformat()}
    stored = {r["event_id"]: StoredRequest(r["event_id"], _epoch(r["ts"]), r["client_ip"], r["answered_by"],
                                           int(r["status"]), r["decision_id"])
              for r in reader.query("requests_between", **window)}
    detections = [StoredDetection(r["detection_id"], _epoch(r["ts"]), r["detector"], r["scope"], r["value"],
                                  json.loads(r["evidence"] or "{}"), tuple(r["sample_event_ids"] or ()))
                  for r in reader.query("recent_detections", limit=10_000)
                  if since <= _epoch(r["ts"]) < until]
    decisions = [StoredDecision(r["id"], _epoch(r["created_at"]), r["scope"], r["value"], r["action"],
                                r["detector"], r["detection_id"])
                 for r in reader.query("decisions_between", **window)]
    return stored, detections, decisions


async def drive(stack: Stack, scenario: Scenario, api_keys: dict[str, str], created_at: dict[str, float],
                rekeyed_at: dict[str, float],
                live_requests: bool = False) -> tuple[PlayLog, TopicWatch, dict[str, float]]:
    """Play the scenario through the gateway while following the detection and decision
    topics (arrivals in the follower's ``seen_at``) and, with ``live_requests``, the request
    topic too; request events' Kafka timestamps go to ``created_at``, and those of the
    by-principal messages that carried them to ``rekeyed_at`` (by event id). Return the client log,
    the follower and the CPU used during the traffic."""
    # The followers are measuring instruments: a 5 ms fetch wait keeps their own delay small.
    watch = TopicWatch(stack.settings.model_copy(update={"fetch_max_wait_ms": FOLLOWER_FETCH_WAIT_MS}))
    followers = [asyncio.create_task(watch.run())]
    if live_requests:
        followers.append(asyncio.create_task(follow_requests(stack.settings, watch.seen_at, created_at,
                                                             FOLLOWER_FETCH_WAIT_MS)))
    # The broker's own hop, apart from gatewatch's code (bench/broker_probe.py), in its own process.
    probe = subprocess.Popen([sys.executable, "-m", "bench.broker_probe", stack.settings.bootstrap_servers,
                              str(stack.run_dir / PROBE_FILE), str(scenario.duration_s)],
                             cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.DEVNULL,
                             stderr=open(stack.run_dir / "broker-probe.log", "ab"))
    try:
        meter = CpuMeter(stack)
        log = await Player(stack.gateway_url, stack.part("sample-api").address, api_keys).play(scenario)
        cores = meter.stop()
        await asyncio.sleep(SETTLE_S)
    finally:
        try:
            probe.wait(timeout=10)
        except subprocess.TimeoutExpired:
            probe.kill()
        for follower in followers:
            follower.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
    if not live_requests:
        created_at.update(await request_times(stack.settings))
    rekeyed_at.update(await rekeyed_times(stack.settings))
    return log, watch, cores


def run(seed: int, duration_s: float, run_dir: Path, console: Console,
        overrides: dict[str, Any] | None = None, live_requests: bool = False) -> dict[str, Any]:
    """One full run (``live_requests``: follow the request topic during the traffic, see the
    module docstring); returns the results document (also what is written to RESULTS)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = harness_settings(run_dir, overrides)
    t_plan = time.monotonic()
    book = AddressBook(settings.geo.dir, seed)
    try:
        scenario = build_scenario(seed, duration_s, book.pick, settings.username_hash_key)
    finally:
        book.close()
    settings.keys_file.unlink(missing_ok=True)
    api_keys = {key_id: add_key(settings.keys_file, key_id, owner) for key_id, owner in scenario.api_keys}
    steps = sum(len(s.steps) for a in scenario.actors for s in a.scripts)
    console.print(f"plan: {len(scenario.actors)} actors, {steps} requests planned over {duration_s:.0f} s "
                  f"(seed {seed}) in {time.monotonic() - t_plan:.1f} s; logs in {run_dir}")
    load_before, code = os.getloadavg(), code_state()
    stack = Stack(settings, run_dir, sample_api=True, sample_api_args=scenario.sample_api_args())
    t0 = time.monotonic()
    stack.start()
    try:
        console.print(f"stack ready in {time.monotonic() - t0:.1f} s; playing the traffic")
        created_at: dict[str, float] = {}
        rekeyed_at: dict[str, float] = {}
        log, watch, cores = asyncio.run(drive(stack, scenario, api_keys, created_at, rekeyed_at, live_requests))
        load_after = os.getloadavg()
        records = topic_records(stack.settings)
        reader = StoreReader(stack.settings)
        with_id = sum(1 for o in log.outcomes if o.request_id)
        stored_count = reader.worker.wait_for_requests(with_id, timeout_s=60.0)
        time.sleep(1.0)  # the detections sink batches too
        stored, detections, decisions = read_store(reader, log.started_at - 5.0, time.time() + 5.0)
    finally:
        stack.stop()
    report = score(list(scenario.actors), log.outcomes, log.latency_changes, stored, detections, decisions,
                   watch.seen_at, {**created_at, **watch.published_at}, rekeyed_at)
    (run_dir / "outcomes.json").write_text(json.dumps([asdict(o) for o in log.outcomes]))
    return {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": seed, "duration_s": duration_s, "code": code,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in load_after],
                    "cores_used_during_traffic": cores,
                    "note": "cores shared with other processes: 'machine' counts every process"},
        "settings": {"overrides": overrides or {}, "trusted_proxies": settings.trusted_proxies,
                     "latency": settings.latency.model_dump(),
                     "credential_stuffing": settings.credential_stuffing.model_dump(),
                     "bola": settings.bola.model_dump(), "geo_anomaly": settings.geo_anomaly.model_dump(),
                     "ip_rate_limit": settings.ip_rate_limit.model_dump(),
                     "fetch_max_wait_ms": settings.fetch_max_wait_ms,
                     "requests_partitions": settings.requests_partitions},
        "request_topic_followed_live": live_requests,
        "stored_requests_seen_by_wait": stored_count,
        "topic_records_after_traffic": records,
        "topic_follower": {"detections": watch.detections, "decisions": watch.decisions_seen,
                           "malformed": watch.malformed, "unsigned": watch.unsigned},
        "latency_changes": [{"actor": a, "at": t, "ms": ms} for a, t, ms in log.latency_changes],
        "broker_probe": broker_probe.summarize(broker_probe.read_lines(run_dir / PROBE_FILE)),
        **report,
        "actors": [{"name": a.name, "kind": a.kind, "attack": a.attack, "response": a.response,
                    "detectors": sorted(a.detectors), "requests_planned": sum(len(s.steps) for s in a.scripts),
                    "rate_per_s": a.rate_per_s, "identities": len(a.keys)} for a in scenario.actors],
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return "inf" if value == float("inf") else f"{value:g}"
    return str(value)


def print_tables(results: dict[str, Any], console: Console) -> None:
    """The detector, attack, benign and target tables."""
    t = Table(title="per detector")
    for col in ("detector", "detections", "TP", "FP", "precision", "attack actors", "caught", "recall",
                "benign blocked", "median start→detection s"):
        t.add_column(col, justify="right")
    for name, r in results["detectors"].items():
        t.add_row(name, *(_fmt(r[k]) for k in ("detections", "true_positives", "false_positives", "precision",
                                               "attack_actors", "caught", "recall")),
                  str(len(r["benign_actors_blocked"])), _fmt(r["median_start_to_detection_s"]))
    console.print(t)

    t = Table(title="per attack (times: threshold = the request that crossed the detector's threshold)")
    cols = [("actor", "actor"), ("response", "response"), ("req/s plan", "planned_rate_per_s"),
            ("req/s got", "achieved_rate_per_s"), ("detected", "detected"),
            ("start→det s", "start_to_first_detection_s"), ("start→thr s", "start_to_threshold_s"),
            ("thr→event sent ms (gateway)", "threshold_to_event_created_ms"),
            ("thr→re-keyed sent ms (worker)", "threshold_to_event_rekeyed_ms"),
            ("thr→detection sent ms (worker)", "threshold_to_detection_published_ms"),
            ("thr→decision sent ms (worker)", "threshold_to_decision_published_ms"),
            ("thr→decision seen ms", "threshold_to_decision_seen_ms"),
            ("thr→first 403 ms (gateway)", "threshold_to_first_403_ms"),
            ("thr→403 ms (client)", "threshold_to_first_403_client_ms"),
            ("answered before block", "answered_before_first_block"),
            ("foreign before block", "foreign_objects_before_first_block"),
            ("answered after thr", "answered_after_threshold")]
    for head, _ in cols:
        t.add_column(head, justify="right", no_wrap=head == "actor")
    for r in results["attacks"]:
        t.add_row(*(_fmt(r[k]) for _, k in cols))
    console.print(t)

    t = Table(title="benign actors")
    for col in ("actor", "requests", "statuses", "blocked (ban/throttle)", "challenged (solved)",
                "decisions on its identities", "FP detections"):
        t.add_column(col)
    for r in results["benign"]:
        t.add_row(r["actor"], str(r["requests"]), " ".join(f"{k}:{v}" for k, v in r["statuses"].items()),
                  f"{r['blocked_requests']} ({r['banned_requests']}/{r['throttled_requests']})",
                  str(r["challenged_requests"]),
                  "; ".join(r["decisions_on_its_identities"]) or "—", str(r["false_positive_detections"]))
    console.print(t)

    fps = results["false_positive_detections"]
    if fps:
        t = Table(title=f"false-positive detections ({len(fps)})")
        for col in ("detector", "rule", "key", "on"):
            t.add_column(col)
        for f in fps[:30]:
            t.add_row(f["detector"], str(f["rule"]), f["key"][:60], f["on"])
        console.print(t)

    t = Table(title="targets")
    for col in ("target", "figure", "verdict", "detail"):
        t.add_column(col)
    for r in results["targets"]:
        t.add_row(r["target"], _fmt(r["figure"]), "[green]met[/]" if r["met"] else "[red]not met[/]",
                  r["detail"])
    console.print(t)
    m = results["machine"]
    console.print(f"load average before/after: {m['loadavg_before']} / {m['loadavg_after']} "
                  f"({m['cpus']} cores, shared); cores used during the traffic: {m['cores_used_during_traffic']}")
    console.print(f"totals: {results['totals']}")
    records = results.get("topic_records_after_traffic") or {}
    if records:
        console.print("records per partition after the traffic: "
                      + "; ".join(f"{topic} {sum(ends):,} ({'/'.join(map(str, ends))})" for topic, ends in records.items()))
    probe = results.get("broker_probe") or []
    if probe:
        console.print("broker hop (bench/broker_probe.py; ms, median/p90 per 10 s of traffic): "
                      + " ".join(f"{b['hop_ms_median']:g}/{b['hop_ms_p90']:g}" for b in probe))


def main(argv: list[str] | None = None) -> None:
    """Command line: ``bench/quality.py [--seed N] [--duration S] [--run-dir DIR] [--results FILE]
    [--set NAME=VALUE ...] [--follow-requests]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=160.0, help="seconds of traffic (at least 60)")
    parser.add_argument("--run-dir", type=Path, default=None, help="logs and store (default: a temp dir)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a settings field for the stack (JSON value), e.g. fetch_max_wait_ms=5")
    parser.add_argument("--follow-requests", action="store_true",
                        help="follow the request topic live (adds the 'event seen' leg; costs the broker CPU)")
    args = parser.parse_args(argv)
    console = Console(width=max(Console().width, 240))
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix=f"gatewatch-quality-{args.seed}-"))
    results = run(args.seed, args.duration, run_dir, console, parse_set(args.set), args.follow_requests)
    print_tables(results, console)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1, default=str))
    console.print(f"results: {args.results}")


if __name__ == "__main__":
    main()
