"""BOLA's given ids across a worker restart, from the store (streams/detect_bola.py).

A principal reads thirty of its own orders (200s) forty minutes ago, and calls once
more a minute ago; so does an anonymous caller (keyed by its address). The worker
stops; a new one starts on the same store and broker. Its replay of the request
partitions covers the last 900 s — the last calls only — so without the store the
thirty orders would not be known as given. The orders are then deleted and both read
them again: thirty 404s each on their own ids, which are not refusals. Another
principal and another anonymous address walking thirty ids never given to them, with
the same answers, are the controls: they are detected.

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
ANONYMOUS_OWNER, ANONYMOUS_PROBER = "198.51.100.71", "2001:db8::72"
IDS = range(1000, 1030)


def _get(ts: datetime, principal: str, order: int, status: int, ip: str = "192.0.2.70") -> RequestEvent:
    return RequestEvent(event_id=new_id(), ts=ts, client_ip=ip, method="GET", host="api.example",
                        path=f"/orders/{order}", route="/orders/{id}", status=status, latency_ms=5.0,
                        principal=principal, auth="ok" if principal else "public")


def _calls(ts: datetime, order: int, status: int) -> list[RequestEvent]:
    """The principal's and the anonymous caller's call of ``order`` at ``ts``."""
    return [_get(ts, OWNER, order, status), _get(ts, "", order + 100, status, ANONYMOUS_OWNER)]


def _bola(s: GatewatchSettings) -> list:
    found = [parse_detection(v) for _, v in read_topic(s, s.topic_detections)]
    return [d for d in found if d.detector == "bola"]


def test_ids_given_before_the_replay_span_are_restored_from_the_store(
        settings: GatewatchSettings, tmp_path: Path) -> None:
    s = settings.model_copy(update={"worker_web_port": free_port(), "sink_batch_within_s": 0.2})
    now = datetime.now(timezone.utc)
    history = [e for i, order in enumerate(IDS) for e in _calls(now - timedelta(minutes=40, seconds=-i), order, 200)]
    recent = _calls(now - timedelta(minutes=1), 1, 200)
    with running_worker(s, tmp_path) as first:
        send_requests(s, history)
        wait_requests_stored(first, len(history), "the owners' orders stored")
        send_requests(s, recent)   # a later batch: the only one within the replay span
        wait_requests_stored(first, len(history) + len(recent), "the recent calls stored")
    assert _bola(s) == []

    with running_worker(s, tmp_path) as second:
        later = datetime.now(timezone.utc)
        deleted = [e for i, order in enumerate(IDS) for e in _calls(later + timedelta(milliseconds=i), order, 404)]
        probing = [e for i, order in enumerate(IDS) for e in (
            _get(later + timedelta(milliseconds=i), PROBER, order + 5000, 404),
            _get(later + timedelta(milliseconds=i), "", order + 6000, 404, ANONYMOUS_PROBER))]
        send_requests(s, deleted + probing)
        stored = len(history) + len(recent) + len(deleted) + len(probing)
        wait_requests_stored(second, stored, "every call stored")
        found = wait_for(lambda: (lambda d: d if len(d) >= 2 else None)(_bola(s)), 30, "both probers detected")
        counters = second.health()["counters"]
    # The owners' 404s on their own orders are not refusals; the probers' are.
    assert sorted((d.scope, d.value) for d in found) == [("ip", ANONYMOUS_PROBER), ("principal", PROBER)]
    assert counters.get("bola_given_loads", 0) >= 1 and "bola_given_errors" not in counters

