"""Behaviour outliers through a real worker process on a real Tansu broker, in shadow.

A model is trained here on a day of synthetic history (12 principals) and
written with skops; the worker loads it from ``settings.behaviour.model_path``.
Then a quarter of an hour of the same principals' traffic is produced keyed by
client IP (event times in the past), during which the key of one of them
(``key-b03``, at home in the US) scrapes foreign order ids from a new country.
The worker re-keys by principal, closes the 5-minute windows on the low
watermark, scores them, and publishes one detection for that principal —
recorded in shadow (no decision; the BOLA detector bans the scraper on its
own rule) and stored in ClickHouse. ``gatewatch train``
then reads the stored traffic through the running worker's API.

Without a model file, the worker logs it once and detects nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from detectors.behaviour_features import WINDOW_S
from gatewatch.events import RequestEvent, parse_decision, parse_detection, request_key
from gatewatch.model_file import save_model_file
from gatewatch.netutil import free_port
from gatewatch.settings import GatewatchSettings
from streams.rekey import partition_for
from tests.detectors.behaviour_history import benign_history, scraper, trained_model
from worker_harness import Worker, producer, read_topic, wait_for

STOLEN = "key-b03"
GATEWATCH = str(Path(sys.executable).parent / "gatewatch")


def _start(settings: GatewatchSettings, tmp_path: Path, model_path: Path) -> Worker:
    s = settings.model_copy(update={
        "worker_web_port": free_port(), "sink_batch_within_s": 0.2,
        "behaviour": settings.behaviour.model_copy(update={"model_path": model_path})})
    w = Worker(s, tmp_path)
    w.start()
    return w


def _traffic(t0: datetime) -> list[RequestEvent]:
    """Three windows of the 12 principals from ``t0``; in the second, key-b03's key scrapes
    from KP; then one late event per request partition, past the third window's end."""
    events = benign_history(seed=7, hours=0.25, start=t0, traffic_seed=5)
    events += [e.model_copy(update={"principal": STOLEN})
               for e in scraper(t0 + timedelta(seconds=WINDOW_S + 1), country="KP")]
    ticks, partitions, i = [], set(), 0
    while len(partitions) < 4:  # every request partition passes the last window (watermark)
        ip = f"192.0.2.{i + 1}"
        partition = partition_for(ip.encode(), 4)
        if partition not in partitions:
            partitions.add(partition)
            ticks.append(events[0].model_copy(update={
                "event_id": f"tick-{i}", "client_ip": ip, "principal": f"key-tick-{i}",
                "ts": t0 + timedelta(seconds=3 * WINDOW_S + 60)}))
        i += 1
    return sorted(events, key=lambda e: e.ts) + ticks


def test_a_stolen_key_scraping_is_detected_in_shadow(settings: GatewatchSettings, tmp_path: Path) -> None:
    assert settings.behaviour.shadow and settings.requests_partitions == 4
    model_path = save_model_file(trained_model().to_document(), tmp_path / "models" / "behaviour.skops")
    worker = _start(settings, tmp_path, model_path)
    try:
        s = worker.settings
        now = datetime.now(timezone.utc)
        t0 = datetime.fromtimestamp((now.timestamp() // WINDOW_S) * WINDOW_S, tz=timezone.utc) - \
            timedelta(minutes=30)
        events = _traffic(t0)
        p = producer(s)
        for e in events:
            p.send(s.topic_requests, key=request_key(e), value=e.to_json())
        p.flush()

        def behaviour() -> list | None:
            found = [parse_detection(v) for _, v in read_topic(s, s.topic_detections)]
            return [d for d in found if d.detector == "behaviour"] or None

        [hit] = wait_for(behaviour, 90, "a behaviour detection")
        assert (hit.scope, hit.value) == ("principal", STOLEN)
        assert hit.evidence["policy"] == "shadow" and hit.score >= s.behaviour.threshold
        assert hit.evidence["window_start"] == (t0 + timedelta(seconds=WINDOW_S)).isoformat()
        assert {"distinct_object_ids", "error_share", "new_country"} <= set(hit.evidence["drivers"])
        assert hit.evidence["features"]["new_country"]["value"] == 1.0
        assert set(hit.sample_event_ids) <= {e.event_id for e in events}

        decisions = [parse_decision(v) for _, v in read_topic(s, s.topic_decisions) if v is not None]
        assert not [d for d in decisions if d.detector == "behaviour"], "shadow: no decision"
        assert [d.detector for d in decisions if d.value == STOLEN] == ["bola"]  # the rule-based ban
        stored = wait_for(lambda: [r for r in worker.query("detections_for", target=STOLEN)["rows"]
                                   if r[2] == "behaviour"] or None, 30, "the stored detection")
        assert stored[0][0] == hit.detection_id

        # gatewatch train through the running worker (it owns the chDB directory).
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWATCH_")} | \
            s.to_env() | {"COLUMNS": "250"}
        done = subprocess.run([GATEWATCH, "train", "--since", "2h", "--min-windows", "10",
                               "--out", str(tmp_path / "retrained.skops")],
                              env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "trained on" in done.stdout and (tmp_path / "retrained.skops").exists()
        assert not [d for d in behaviour() or [] if d.value != STOLEN], "no benign principal flagged"
    finally:
        rc = worker.stop()
        assert rc == 0, worker.log_tail()


def test_without_a_model_file_the_agent_logs_once_and_does_nothing(settings: GatewatchSettings,
                                                                    tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model.skops"
    worker = _start(settings, tmp_path, missing)
    try:
        s = worker.settings
        t0 = datetime.now(timezone.utc) - timedelta(minutes=30)
        events = [e.model_copy(update={"principal": STOLEN}) for e in scraper(t0, seconds=60)]
        p = producer(s)
        for e in events:
            p.send(s.topic_requests, key=request_key(e), value=e.to_json())
        p.flush()
        wait_for(lambda: worker.health()["counters"].get("events_by_principal", 0) >= len(events) or None,
                 60, "the BOLA agent to read the re-keyed events")
        found = [parse_detection(v) for _, v in read_topic(s, s.topic_detections)]
        assert not [d for d in found if d.detector == "behaviour"]
        assert "events_by_principal_behaviour" not in worker.health()["counters"]
    finally:
        rc = worker.stop()
        assert rc == 0, worker.log_tail()
    log = worker.log_path.read_text()
    assert log.count(f"behaviour model: no model file at {missing}") == 1, worker.log_tail()
