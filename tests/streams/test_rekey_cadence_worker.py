"""How often the worker sends re-keyed messages (streams/detect_requests.py): login
attempts after every batch it reads (the login rules' challenges are on the decision
path), by-principal rows and by-route latency samples only once they span a second of
event time, at an offset commit or with the periodic progress. Every message is a batch
that each read of its partition goes through on Tansu's ``memory://`` engine
(bench/broker_growth.py), so the topics whose detectors judge windows or alert get fewer.

Real parts: a Tansu broker and a worker process. Requests come in 20 small bursts 0.15 s
apart (event time = now), each fetched on its own by the worker: a principal's object
requests on one route and a login attempt each, so each topic's messages land on one
partition.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

from gatewatch.events import RequestEvent, new_id
from gatewatch.netutil import free_port
from gatewatch.settings import GatewatchSettings
from streams.rekey import unpack_events, unpack_principal, unpack_samples
from worker_harness import read_topic, running_worker, send_requests, wait_for

BURSTS, PER_BURST, GAP_S = 20, 3, 0.15


def _burst(n: int) -> tuple[list[RequestEvent], RequestEvent]:
    """``PER_BURST`` object requests of one principal and one failed login attempt."""
    now = datetime.now(timezone.utc)
    reads = [RequestEvent(event_id=new_id(), ts=now, client_ip="192.0.2.10", method="GET",
                          host="api.example", path=f"/items/{n * PER_BURST + i}", route="/items/{id}", status=200,
                          latency_ms=12.0, principal="key-1", auth="ok") for i in range(PER_BURST)]
    login = RequestEvent(event_id=new_id(), ts=now, client_ip="192.0.2.20", method="POST", host="api.example",
                         path="/login", route="/login", status=401, latency_ms=12.0, login="failure",
                         username_hash=f"h-user{n}")
    return reads, login


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


def test_principal_rows_and_latency_samples_are_sent_a_second_at_a_time_logins_every_batch(
        settings: GatewatchSettings, tmp_path: Path) -> None:
    s = settings.model_copy(update={"worker_web_port": free_port()})
    reads: set[str] = set()
    logins: set[str] = set()
    with running_worker(s, tmp_path):
        for n in range(BURSTS):
            burst, login = _burst(n)
            send_requests(s, [*burst, login])
            reads |= {e.event_id for e in burst}
            logins.add(login.event_id)
            time.sleep(GAP_S)

        def delivered() -> tuple[list[set[str]], list[set[str]], list[set[str]]] | None:
            rows = _ids_per_message(s, s.topic_requests_by_principal, unpack_principal)
            samples = _ids_per_message(s, s.topic_requests_by_route, unpack_samples)
            attempts = _ids_per_message(s, s.topic_logins, unpack_events)
            if set().union(*rows) == reads and set().union(*samples) == reads | logins \
                    and set().union(*attempts) == logins:
                return rows, samples, attempts
            return None
        rows, samples, attempts = wait_for(delivered, 30, "every event re-keyed to its topics")
    # each event once in each of its topics
    assert sum(map(len, rows)) == BURSTS * PER_BURST and sum(map(len, attempts)) == BURSTS
    assert sum(map(len, samples)) == BURSTS * (PER_BURST + 1)
    # ~3 s of event time: a few by-principal and by-route messages against one login
    # message a batch
    assert len(attempts) >= BURSTS // 2
    assert len(rows) <= len(attempts) // 2 and len(samples) <= len(attempts) // 2
