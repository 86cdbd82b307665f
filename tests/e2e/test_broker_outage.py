"""Broker outage under load, end to end on real processes: sample API, Tansu, Faust worker with
chDB, mitmdump gateway (gatewatch.launcher.Stack).

Scenario: steady bounded load through the gateway; the broker process is
killed; load goes on for :data:`OUTAGE_S` seconds (the gateway answers and
spools its events to disk); a new, empty broker is started on the same port
and the topics are re-created (Tansu keeps records in memory only); load goes
on a little, then stops. Checked:

1. gateway side — every request answered from the kill on is on the new
   broker's requests topic exactly once, in answer order within each
   partition (events are keyed by client address);
2. worker side — every answered request of the whole run is in ClickHouse
   exactly once (the worker's ``event_id_counts`` query, physical rows).

The issue asks for a 30 s outage; the test uses :data:`OUTAGE_S` = 10 s to
keep the suite short. ``GATEWATCH_TEST_OUTAGE_S=30`` runs the full one.

Load is paused around the kill itself: Tansu loses on SIGKILL the records it
had acknowledged but the worker had not fetched yet (a real Kafka keeps them
on disk), which would make check 2 a race against the kill, not a test of
the gateway. Load runs during the whole outage.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kafka import KafkaConsumer, TopicPartition

from gatewatch.events import parse_request_event
from gatewatch.launcher import Stack
from gatewatch.settings import GatewatchSettings, load_settings
from gatewatch.worker_api import WorkerApi

OUTAGE_S = float(os.environ.get("GATEWATCH_TEST_OUTAGE_S", "10"))
RATE_PER_S = 20.0
MAX_REQUESTS = 2000   # bound of the load loop whatever happens


class Load:
    """Bounded steady load in a thread: GET /health and /users/{n}, RATE_PER_S per second.

    Records the X-Request-Id of every answered request, in answer order."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.answered: list[str] = []
        self.statuses: list[int] = []
        self.running = threading.Event()
        self.stop = threading.Event()
        self.idle = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10.0) as client:
            n = 0
            while not self.stop.is_set() and n < MAX_REQUESTS:
                if not self.running.is_set():
                    self.idle.set()
                    self.running.wait(0.1)
                    continue
                self.idle.clear()
                path = "/health" if n % 2 else f"/users/{n % 7 + 1}"
                try:
                    response = client.get(path)
                except httpx.HTTPError:
                    continue
                n += 1
                self.answered.append(response.headers["X-Request-Id"])
                self.statuses.append(response.status_code)
                time.sleep(1.0 / RATE_PER_S)
            self.idle.set()

    def pause(self) -> None:
        self.running.clear()
        self.idle.wait(15)

    def resume(self) -> None:
        self.running.set()


def stored_counts(api: WorkerApi) -> dict[str, int]:
    return {r["event_id"]: int(r["count"]) for r in api.query("event_id_counts")}


def wait_stored(api: WorkerApi, ids: set[str], timeout_s: float) -> dict[str, int]:
    """Poll the worker until every id of ``ids`` is stored or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = stored_counts(api)
        if ids <= set(counts) or time.monotonic() > deadline:
            return counts
        time.sleep(0.5)


def topic_records(settings: GatewatchSettings, want: set[str]) -> list[tuple[int, int, str]]:
    """``(partition, offset, event_id)`` of the requests topic, read until ``want`` is seen or 20 s."""
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                             enable_auto_commit=False)
    out: list[tuple[int, int, str]] = []
    try:
        tps = [TopicPartition(settings.topic_requests, p)
               for p in sorted(consumer.partitions_for_topic(settings.topic_requests))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)   # never "latest" (Tansu quirk)
        deadline = time.monotonic() + 20
        while not want <= {e for _, _, e in out} and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                out.extend((r.partition, r.offset, parse_request_event(r.value).event_id) for r in records)
    finally:
        consumer.close()
    return out


def gateway_metrics(url: str) -> dict[str, float]:
    """Samples of the gateway's ``/metrics`` (its Prometheus admin port), summed over labels."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url, timeout=5).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    run_dir: Path = tmp_path_factory.mktemp("outage")
    (run_dir / "keys.toml").write_text("")
    settings = load_settings(keys_file=run_dir / "keys.toml", listen_port=0, public_routes=["/*"])
    stack = Stack(settings, run_dir, sample_api=True)
    stack.start()
    load = Load(stack.gateway_url)
    load.thread.start()
    try:
        api = WorkerApi(stack.worker_url)
        load.resume()
        time.sleep(2.0)
        load.pause()
        before = set(load.answered)
        counts = wait_stored(api, before, 30)
        assert before <= set(counts), "the worker stores what was answered before the outage"

        stack.part("broker").proc.kill()
        kill_index = len(load.answered)
        load.resume()
        time.sleep(OUTAGE_S)
        stack.restart_broker()
        time.sleep(3.0)
        load.stop.set()
        load.running.set()
        load.thread.join(30)
        answered = list(load.answered)
        after_kill = set(answered[kill_index:])
        records = topic_records(stack.settings, after_kill)
        counts = wait_stored(api, set(answered), 60)
        metrics = gateway_metrics(stack.metrics_urls[0])  # the launcher picks the admin port
        yield {"metrics": metrics, "answered": answered, "kill_index": kill_index, "records": records, "counts": counts,
               "statuses": list(load.statuses), "settings": stack.settings,
               "gateway_log": stack.part("gateway").log_path}
    finally:
        load.stop.set()
        load.running.set()
        stack.stop()


@pytest.mark.e2e
def test_gateway_sends_every_event_of_the_outage_once_in_order(outage) -> None:
    answered, kill_index, records = outage["answered"], outage["kill_index"], outage["records"]
    after_kill = answered[kill_index:]
    assert len(after_kill) >= RATE_PER_S * OUTAGE_S / 4, "load ran during the outage"
    assert set(outage["statuses"]) <= {200, 401, 404}, "the gateway kept answering normally"
    metrics = outage["metrics"]
    assert metrics["gatewatch_events_spooled_total"] > 0, "the outage went through the disk spool"
    assert metrics.get("gatewatch_events_dropped_total", 0) == 0
    assert metrics["gatewatch_spool_bytes"] == 0 and metrics["gatewatch_event_queue_depth"] == 0
    ids = [e for _, _, e in records]
    assert set(after_kill) <= set(ids), f"{len(set(after_kill) - set(ids))} events missing on the new broker"
    assert len(ids) == len(set(ids)), "an event was sent twice"
    position = {event_id: i for i, event_id in enumerate(after_kill)}
    for partition in {p for p, _, _ in records}:
        order = [position[e] for p, _, e in sorted(records) if p == partition and e in position]
        assert order == sorted(order), f"partition {partition} is out of order"


@pytest.mark.e2e
def test_every_answered_request_stored_once_across_the_outage(outage) -> None:
    answered, counts = outage["answered"], outage["counts"]
    assert len(answered) == len(set(answered))
    missing = set(answered) - set(counts)
    assert not missing, f"{len(missing)} of {len(answered)} answered requests not stored"
    assert {counts[e] for e in answered} == {1}
