"""``gatewatch demo``: the whole pipeline live, in front of the sample API.

Starts the stack (sample API, broker, worker, gateway), creates one API key
per benign user, drives benign users and a credential-stuffing attacker
through the gateway while a live table shows the counters, then reads the
outcome back from ClickHouse (through the worker) and prints a summary:
attack requests before the block, seconds from the first attack request to
the first 403, benign requests blocked (must be 0), rows per table.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console
from rich.live import Live
from rich.table import Table

from gatewatch.events import MalformedRecord, parse_decision, parse_detection
from gatewatch.keys import add_key
from gatewatch.launcher import Stack
from gatewatch.settings import GatewatchSettings
from gatewatch.signing import DecisionVerifier
from gatewatch.traffic import ATTACKER_IP, TrafficLog, run_scenario
from gatewatch.worker_api import WorkerApi


@dataclass
class DemoSummary:
    """What the demo (and the end-to-end test) report, read from ClickHouse where noted."""

    requests_answered: int  # client side: responses received
    requests_stored: int  # ClickHouse: rows in requests
    attack_requests: int  # ClickHouse
    attack_requests_before_block: int | None  # ClickHouse
    seconds_to_first_block: float | None  # ClickHouse: first attack request → first 403
    benign_blocked: int  # ClickHouse: requests blocked by a decision from other IPs
    table_rows: dict[str, int]  # ClickHouse
    detections_seen: int  # Kafka: detections topic
    decisions_seen: int  # Kafka: decisions topic


class TopicWatch:
    """Counts detections and active decisions by following their topics from the start.

    Decision messages count only when their signature verifies (:mod:`gatewatch.signing`);
    the others are counted in ``unsigned`` (none, or one that does not verify).
    ``seen_at`` maps each detection id and decision id to the wall-clock time
    (``time.time()``, s) at which this follower received it, ``published_at`` to its
    Kafka timestamp (s; CreateTime: when the worker handed it to its producer)."""

    def __init__(self, settings: GatewatchSettings) -> None:
        self.settings = settings
        self.verifier = DecisionVerifier.from_settings(settings)
        self.detections = 0
        self.seen_at: dict[str, float] = {}
        self.published_at: dict[str, float] = {}
        self.decisions: dict[str, datetime] = {}  # key -> expires_at
        self.decisions_seen = 0
        self.malformed = 0
        self.unsigned = 0

    def _note(self, record_id: str, timestamp_ms: int) -> None:
        self.seen_at.setdefault(record_id, time.time())
        self.published_at.setdefault(record_id, timestamp_ms / 1000.0)

    def active_decisions(self) -> int:
        """Decisions whose ``expires_at`` is still ahead."""
        now = datetime.now(timezone.utc)
        return sum(1 for exp in self.decisions.values() if exp > now)

    async def run(self) -> None:
        """Follow both topics until cancelled."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.bootstrap_servers,
                                    enable_auto_commit=False,
                                    fetch_max_wait_ms=self.settings.fetch_max_wait_ms)
        await consumer.start()
        try:
            parts = [TopicPartition(t, 0) for t in (self.settings.topic_detections,
                                                     self.settings.topic_decisions)]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)  # never "latest" on Tansu
            async for msg in consumer:
                if msg.topic == self.settings.topic_detections:
                    self.detections += 1
                    try:
                        self._note(parse_detection(msg.value).detection_id, msg.timestamp)
                    except MalformedRecord:
                        self.malformed += 1
                elif self.verifier.rejects(msg.key, msg.value, msg.headers) is not None:
                    self.unsigned += 1
                elif msg.value is None:
                    self.decisions.pop((msg.key or b"").decode(), None)
                else:
                    try:
                        decision = parse_decision(msg.value)
                    except MalformedRecord:
                        self.malformed += 1
                        continue
                    self.decisions_seen += 1
                    self.decisions[decision.key()] = decision.expires_at
                    self._note(decision.id, msg.timestamp)
        finally:
            await consumer.stop()


def live_table(log: TrafficLog, watch: TopicWatch, duration_s: float) -> Table:
    """The live counters: per actor, requests by outcome; then detections and decisions."""
    elapsed = min(time.monotonic() - log.started, duration_s)
    table = Table(title=f"gatewatch demo — {elapsed:4.1f} / {duration_s:.0f} s", min_width=70)
    for col in ("", "requests", "2xx", "401", "403 blocked", "403 other", "404", "429"):
        table.add_column(col, justify="right")
    for actor in ("benign", "attacker", None):
        c = log.counts(actor)
        ok = sum(v for k, v in c.items() if k.startswith("2"))
        table.add_row(actor or "all", str(c["total"]), str(ok), str(c["401"]), str(c["blocked"]),
                      str(c["403"] - c["blocked"]), str(c["404"]), str(c["429"]))
    table.caption = (f"detections: {watch.detections}   active decisions: {watch.active_decisions()}"
                     f"   client errors: {log.errors}")
    return table


def summarize(log: TrafficLog, api: WorkerApi, watch: TopicWatch) -> DemoSummary:
    """Wait until the sink stored every answered request, then read the figures back."""
    answered = len(log.outcomes)
    stored = api.wait_for_requests(answered, timeout_s=30.0)
    timeline = api.query("ip_timeline", ip=ATTACKER_IP)[0]
    benign_blocked = api.query("blocked_excluding_ip", ip=ATTACKER_IP)[0]
    first, first_block = timeline["first_ts"], timeline["first_blocked_ts"]
    seconds = None
    if first and first_block:
        seconds = (datetime.fromisoformat(first_block) - datetime.fromisoformat(first)).total_seconds()
    return DemoSummary(
        requests_answered=answered,
        requests_stored=stored,
        attack_requests=int(timeline["requests"]),
        attack_requests_before_block=int(timeline["requests_before_block"]) if seconds is not None else None,
        seconds_to_first_block=seconds,
        benign_blocked=int(benign_blocked["blocked"]),
        table_rows=api.table_counts(),
        detections_seen=watch.detections,
        decisions_seen=watch.decisions_seen,
    )


def summary_table(s: DemoSummary) -> Table:
    """The closing summary as a two-column table."""
    table = Table(title="summary (read from ClickHouse)", show_header=False, min_width=70)
    table.add_column("what")
    table.add_column("value", justify="right")
    fmt: dict[str, Any] = {
        "attack requests before the block": s.attack_requests_before_block,
        "seconds from first attack request to first 403":
            None if s.seconds_to_first_block is None else f"{s.seconds_to_first_block:.2f}",
        "attack requests in all": s.attack_requests,
        "benign requests blocked (must be 0)": s.benign_blocked,
        "requests answered (client) / stored": f"{s.requests_answered} / {s.requests_stored}",
    }
    for name, rows in sorted(s.table_rows.items()):
        fmt[f"rows in {name}"] = rows
    for k, v in fmt.items():
        table.add_row(k, "—" if v is None else str(v))
    return table


def make_keys(keys_file: Path, users: int) -> list[str]:
    """Create one API key per benign user in a fresh ``keys_file``; return the raw keys."""
    keys_file.unlink(missing_ok=True)
    return [add_key(keys_file, f"key_user{n}", owner=f"user{n}") for n in range(1, users + 1)]


async def _drive(stack: Stack, api_keys: list[str], duration_s: float, attack_start_s: float,
                 console: Console, live: bool) -> tuple[TrafficLog, TopicWatch]:
    log, watch = TrafficLog(), TopicWatch(stack.settings)
    watcher = asyncio.create_task(watch.run())
    traffic = asyncio.create_task(run_scenario(log, stack.gateway_url, api_keys, duration_s, attack_start_s))
    with Live(live_table(log, watch, duration_s), console=console, refresh_per_second=4,
              transient=False, auto_refresh=live) as view:
        while not traffic.done():
            view.update(live_table(log, watch, duration_s))
            await asyncio.sleep(0.25)
        await asyncio.sleep(1.0)  # let the last decisions arrive for the final counters
        view.update(live_table(log, watch, duration_s))
    await traffic
    watcher.cancel()
    try:
        await watcher
    except asyncio.CancelledError:
        pass
    return log, watch


def run_demo(settings: GatewatchSettings, run_dir: Path, users: int = 8, duration_s: float = 30.0,
             attack_start_s: float = 5.0, console: Console | None = None) -> DemoSummary:
    """Run the demo end to end and return its summary (also written to ``run_dir/summary.json``)."""
    console = console or Console()
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    keys_file = run_dir / "keys.toml"
    api_keys = make_keys(keys_file, users)
    stack = Stack(settings.model_copy(update={"keys_file": keys_file, "listen_port": 0}),
                  run_dir, sample_api=True)
    console.print(f"[bold]starting the stack[/] (logs in {run_dir})")
    t0 = time.monotonic()
    stack.start()
    try:
        for part in stack.parts:
            console.print(f"  {part.name:<10} {part.address}")
        console.print(f"stack ready in {time.monotonic() - t0:.1f} s; {users} benign users, "
                      f"attacker {ATTACKER_IP} from t={attack_start_s:.0f} s")
        log, watch = asyncio.run(_drive(stack, api_keys, duration_s, attack_start_s, console,
                                        live=console.is_terminal))
        summary = summarize(log, WorkerApi(stack.worker_url, token=stack.settings.admin_token), watch)
    finally:
        stack.stop()
    console.print()
    console.print(summary_table(summary))
    (run_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
    return summary
