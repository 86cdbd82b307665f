"""The broker is lost under a running worker and comes back empty (Tansu's memory
storage; a new process on the same port): every consumer of the worker notices that
its partitions' logs are new and reads them from their start, and an attack sent to
the new broker is detected and decided (streams/checkpointed_consumer.py).

Tansu answers a fetch past the end of the new, shorter log with no records and no
error, so the worker must compare its next offset with the fetched high-watermark:
otherwise each re-keyed consumer — whose partitions all had a position, progress
messages arrive every second — would wait until the new log reached the old length
(about one message a second: as long as the worker had run).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from gatewatch.broker import create_topics, start_tansu
from gatewatch.events import parse_decision
from gatewatch.netutil import free_port, wait_for_port
from gatewatch.settings import GatewatchSettings, load_settings
from test_worker_kill_rekeyed import ENUMERATOR, _enumeration
from worker_harness import Worker, read_topic, send_requests, wait_for

#: Seconds the worker runs on the first broker (its re-keyed partitions grow ~1 message a second).
UPTIME_S = 30.0


class Broker:
    """A Tansu process on a fixed loopback port that can be replaced by an empty one."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.log = tmp_path / "tansu.log"
        self.proc = self._start()

    def _start(self):  # type: ignore[no-untyped-def]
        proc = start_tansu("127.0.0.1", self.port, log_path=self.log)
        wait_for_port("127.0.0.1", self.port, timeout_s=10)
        return proc

    def replace(self, settings: GatewatchSettings) -> None:
        """Kill the broker, start an empty one on the same port, create the topics."""
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = self._start()
        create_topics(settings)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def lost_broker(tmp_path: Path) -> Iterator[tuple[Broker, GatewatchSettings]]:
    broker = Broker(tmp_path)
    try:
        s = load_settings(bootstrap_servers=f"127.0.0.1:{broker.port}", chdb_path=tmp_path / "chdb",
                          keys_file=tmp_path / "keys.toml", worker_web_port=free_port(), commit_interval_s=0.2)
        create_topics(s)
        yield broker, s
    finally:
        broker.stop()


def test_a_worker_reads_the_new_logs_of_a_broker_that_came_back_empty(
        lost_broker: tuple[Broker, GatewatchSettings], tmp_path: Path) -> None:
    broker, s = lost_broker
    t0 = datetime.now(timezone.utc).replace(microsecond=0)
    worker = Worker(s, tmp_path)
    worker.start()
    try:
        # Requests on every partition, so that every consumer has positions to lose.
        send_requests(s, _enumeration(t0, 5))
        time.sleep(UPTIME_S)
        before = worker.health()
        positions = sum(len(r["partitions"]) for r in before["rekeyed"].values())
        assert positions == 2 * s.requests_partitions + 1 and before["rekeyed"]["by_principal"]["committed"] > 20
        replaced = before["counters"].get("partition_log_replaced", 0)

        broker.replace(s)
        # Each re-keyed partition (and the request partition that had events) finds its
        # log new — well before the new logs could reach the old positions.
        wait_for(lambda: worker.health()["counters"].get("partition_log_replaced", 0) - replaced
                 >= positions + 1 or None, 20, "every consumer reading the new logs")

        attack = _enumeration(t0, s.bola.min_distinct_ids + 2)
        send_requests(s, attack)
        [decision] = wait_for(lambda: [parse_decision(v) for k, v in read_topic(s, s.topic_decisions)
                                       if k == f"principal:{ENUMERATOR}".encode()], 30, "the BOLA ban")
        assert decision.action == "ban" and decision.detector == "bola"
    finally:
        assert worker.stop() == 0, worker.log_tail()
