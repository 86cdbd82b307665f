"""BOLA's given ids across a worker restart, from the store (streams/detect_bola.py).

A principal reads thirty of its own orders (200s) forty minutes ago, and calls once
more a minute ago. The worker stops; a new one starts on the same store and broker.
Its replay of the request partition covers the last 900 s — the last call only — so
without the store the thirty orders would not be known as given. The principal's
orders are then deleted and it reads them again: thirty 404s on its own ids, which
are not refusals. Another principal walking thirty ids it was never given, with the
same answers, is the control: it is detected.

Real parts: a Tansu broker, two worker processes one after the other on one chDB store.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from gatewatch.events import RequestEvent, new_id, parse_detection
from gatewatch.netutil import free_port
from gatewatch.settings import GatewatchSettings
from worker_harness import read_topic, running_worker, send_requests, wait_for, wait_requests_stored

OWNER, PROBER = "key-owner", "key-prober"
IDS = range(1000, 1030)


def _get(ts: datetime, principal: str, order: int, status: int) -> RequestEvent:
    return RequestEvent(event_id=new_id(), ts=ts, client_ip="192.0.2.70", method="GET", host="api.example",
                        path=f"/orders/{order}", route="/orders/{id}", status=status, latency_ms=5.0,
                        principal=principal, auth="ok")


def _bola(s: GatewatchSettings) -> list:
    found = [parse_detection(v) for _, v in read_topic(s, s.topic_detections)]
    return [d for d in found if d.detector == "bola"]


def test_ids_given_before_the_replay_span_are_restored_from_the_store(
        settings: GatewatchSettings, tmp_path: Path) -> None:
    s = settings.model_copy(update={"worker_web_port": free_port(), "sink_batch_within_s": 0.2})
    now = datetime.now(timezone.utc)
    history = [_get(now - timedelta(minutes=40, seconds=-i), OWNER, order, 200) for i, order in enumerate(IDS)]
    recent = _get(now - timedelta(minutes=1), OWNER, 1, 200)
    with running_worker(s, tmp_path) as first:
        send_requests(s, history)
        wait_requests_stored(first, len(history), "the owner's orders stored")
        send_requests(s, [recent])   # a later batch: the only one within the replay span
        wait_requests_stored(first, len(history) + 1, "the recent call stored")
    assert _bola(s) == []

    with running_worker(s, tmp_path) as second:
        later = datetime.now(timezone.utc)
        deleted = [_get(later + timedelta(milliseconds=i), OWNER, order, 404) for i, order in enumerate(IDS)]
        probing = [_get(later + timedelta(milliseconds=i), PROBER, order + 5000, 404) for i, order in enumerate(IDS)]
        send_requests(s, deleted + probing)
        wait_requests_stored(second, len(history) + 1 + len(deleted) + len(probing), "every call stored")
        found = wait_for(lambda: _bola(s) or None, 30, "the prober detected")
        counters = second.health()["counters"]
    assert [d.value for d in found] == [PROBER]   # the owner's 404s on its own orders are not refusals
    assert counters.get("bola_given_loads", 0) >= 1 and "bola_given_errors" not in counters

