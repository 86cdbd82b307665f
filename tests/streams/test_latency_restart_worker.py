"""A latency regression raised before a worker restart recovers after it (streams/detect_latency.py).

The first worker sees GET /items/{id} at ~20 ms for five minutes, then at ~200 ms for
sixteen: it raises one regression. It stops; a second one starts on the same broker
and store. Its by-route replay (545 s) holds only slow minutes, so on its own it would
learn ~200 ms as the baseline: the route would never recover and a later regression
would be raised afresh. With the raised routes it reads from the stored detections, the
route is still in regression after the restart (no second regression detection), and
when it is fast again the recovery is reported, naming the first worker's regression.

Real parts: a Tansu broker, two worker processes one after the other on one chDB store.
Event times are synthetic (the past hour), so windows close as later events arrive.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

from gatewatch.events import RequestEvent, new_id, parse_detection
from gatewatch.netutil import free_port
from gatewatch.settings import GatewatchSettings
from worker_harness import read_topic, running_worker, send_requests, wait_for, wait_requests_stored


def _minutes(t0: datetime, minutes: range, ms: float, rng: random.Random, per_minute: int = 40
             ) -> list[RequestEvent]:
    out = []
    for minute in minutes:
        for _ in range(per_minute):
            ts = t0 + timedelta(seconds=minute * 60 + rng.uniform(0, 59))
            latency = round(rng.lognormvariate(math.log(ms), 0.25), 2)
            out.append(RequestEvent(event_id=new_id(), ts=ts, client_ip=f"192.0.2.{rng.randint(1, 200)}",
                                    method="GET", host="api.example", path=f"/items/{rng.randint(1, 9)}",
                                    route="/items/{id}", status=200, latency_ms=latency,
                                    principal=f"key-{rng.randint(1, 20)}", auth="ok"))
    return sorted(out, key=lambda e: e.ts)


def _latency_states(s: GatewatchSettings) -> list:
    found = [parse_detection(v) for _, v in read_topic(s, s.topic_detections)]
    return sorted((d for d in found if d.detector == "latency_regression"), key=lambda d: d.ts)


def test_a_regression_raised_before_a_restart_recovers_after_it(settings: GatewatchSettings,
                                                                 tmp_path: Path) -> None:
    s = settings.model_copy(update={"worker_web_port": free_port(), "sink_batch_within_s": 0.2})
    rng = random.Random(7)
    t0 = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=60)
    before = _minutes(t0, range(0, 5), 20, rng) + _minutes(t0, range(5, 21), 200, rng)
    before += _minutes(t0, range(21, 22), 200, rng, per_minute=1)   # closes minute 20
    with running_worker(s, tmp_path) as first:
        send_requests(s, before)
        wait_for(lambda: [d for d in _latency_states(s) if d.evidence["state"] == "regression"] or None,
                 60, "the regression")

        def stored() -> bool:
            counts = {(r[0], r[1]): r[2] for r in first.query("detection_counts")["rows"]}
            return counts.get(("latency_regression", "route")) == 1
        wait_for(stored, 30, "the regression stored")

    after = _minutes(t0, range(30, 33), 200, rng) + _minutes(t0, range(33, 36), 20, rng)
    after += _minutes(t0, range(36, 37), 20, rng, per_minute=1)      # closes minute 35
    with running_worker(s, tmp_path) as second:
        send_requests(s, after)
        found = wait_for(lambda: (lambda d: d if len(d) >= 2 else None)(_latency_states(s)), 60,
                         "the recovery")
        counters = second.health()["counters"]
    regression, recovered = found
    assert [d.evidence["state"] for d in found] == ["regression", "recovered"]
    # the store keeps milliseconds
    since = datetime.fromisoformat(recovered.evidence["regression_since"])
    assert abs((since - regression.ts).total_seconds()) < 0.001
    assert recovered.evidence["baseline_p95_ms"] == regression.evidence["baseline_p95_ms"] < 40
    assert counters.get("latency_raised_loads", 0) >= 1 and "latency_raised_errors" not in counters


def test_a_run_of_bad_windows_goes_on_across_a_restart(settings: GatewatchSettings, tmp_path: Path) -> None:
    """The windows before the replay come back from the store (named query
    ``latency_windows``). The first worker sees twenty fast minutes, then two slow ones (a
    run of two bad windows, one short of a regression) and twenty thin minutes (too few
    requests to judge); it stops. The second one's replay (545 s) holds thin minutes
    only: on its own it would learn its baseline from the next slow minutes.
    With the stored windows, the twenty fast minutes are the baseline and the run goes on:
    the next slow minute raises the regression, on three bad windows."""
    s = settings.model_copy(update={"worker_web_port": free_port(), "sink_batch_within_s": 0.2})
    rng = random.Random(11)
    t0 = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=60)
    minutes = [_minutes(t0, range(m, m + 1), 20, rng) for m in range(0, 20)]
    minutes += [_minutes(t0, range(m, m + 1), 200, rng) for m in range(20, 22)]
    minutes += [_minutes(t0, range(m, m + 1), 200, rng, per_minute=1) for m in range(22, 42)]
    with running_worker(s, tmp_path) as first:
        stored = 0
        for minute in minutes:   # a minute at a time, as live traffic: the re-keyed samples too
            send_requests(s, minute)
            stored += len(minute)
            wait_requests_stored(first, stored, f"{stored} requests stored")
    assert _latency_states(s) == []

    after = _minutes(t0, range(42, 43), 200, rng) + _minutes(t0, range(43, 44), 200, rng, per_minute=1)
    with running_worker(s, tmp_path) as second:
        send_requests(s, after)
        found = wait_for(lambda: _latency_states(s) or None, 60, "the regression")
        counters = second.health()["counters"]
    [regression] = found
    assert regression.evidence["state"] == "regression"
    assert [w["start"] for w in regression.evidence["bad_windows"]] == [
        (t0 + timedelta(minutes=m)).isoformat() for m in (20, 21, 42)]
    assert regression.evidence["baseline_p95_ms"] < 40
    assert counters.get("latency_windows_loads", 0) >= 1 and "latency_windows_errors" not in counters
