"""How often the worker sends re-keyed messages (streams/detect_requests.py): by-principal
rows after every batch it reads (BOLA and geo are on the decision path), by-route latency
samples only once they span a second of event time, at an offset commit or with the
periodic progress. Every message is a batch that each read of its partition goes through
on Tansu's ``memory://`` engine (bench/broker_growth.py), so the by-route topic, which
decides nothing, gets fewer.

Real parts: a Tansu broker and a worker process. Requests come in 20 small bursts 0.15 s
apart (event time = now), each fetched on its own by the worker; one principal and one
route, so each topic's messages land on one partition.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

from gatewatch.events import RequestEvent, new_id
from gatewatch.netutil import free_port
from gatewatch.settings import GatewatchSettings
from streams.rekey import unpack_principal, unpack_samples
from worker_harness import read_topic, running_worker, send_requests, wait_for

BURSTS, PER_BURST, GAP_S = 20, 3, 0.15


def _burst(n: int) -> list[RequestEvent]:
    return [RequestEvent(event_id=new_id(), ts=datetime.now(timezone.utc), client_ip="192.0.2.10", method="GET",
                         host="api.example", path=f"/items/{n * PER_BURST + i}", route="/items/{id}", status=200,
                         latency_ms=12.0, principal="key-1", auth="ok") for i in range(PER_BURST)]


def _ids_per_message(settings: GatewatchSettings, topic: str, unpack) -> list[set[str]]:
    """The event ids of each message of ``topic`` that carries events (progress-only
    messages left out)."""
    out = []
    for _, value in read_topic(settings, topic):
        batch = unpack(value)
        ids = {getattr(item, "event_id", None) or item[-1] for item in batch.items}
        if ids:
            out.append(ids)
    return out


def test_latency_samples_are_sent_a_second_at_a_time_principal_rows_every_batch(
        settings: GatewatchSettings, tmp_path: Path) -> None:
    s = settings.model_copy(update={"worker_web_port": free_port()})
    sent: set[str] = set()
    with running_worker(s, tmp_path):
        for n in range(BURSTS):
            burst = _burst(n)
            send_requests(s, burst)
            sent |= {e.event_id for e in burst}
            time.sleep(GAP_S)

        def delivered() -> tuple[list[set[str]], list[set[str]]] | None:
            rows = _ids_per_message(s, s.topic_requests_by_principal, unpack_principal)
            samples = _ids_per_message(s, s.topic_requests_by_route, unpack_samples)
            if set().union(*rows) == sent and set().union(*samples) == sent:
                return rows, samples
            return None
        rows, samples = wait_for(delivered, 30, "every event re-keyed to both topics")
    # each event once in each topic
    assert sum(map(len, rows)) == sum(map(len, samples)) == BURSTS * PER_BURST
    # ~3 s of event time: a few by-route messages against one by-principal message a batch
    assert len(rows) >= BURSTS // 2
    assert len(samples) <= len(rows) // 2
