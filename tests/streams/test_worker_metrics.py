"""The worker's Prometheus metrics (``GET /metrics``, streams/metrics.py) and its container
healthcheck (``python -m gatewatch.healthcheck worker``), on a real worker process fed by a
real broker."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gatewatch.events import RequestEvent
from gatewatch.netutil import free_port
from gatewatch.settings import GatewatchSettings
from worker_harness import producer, running_worker, wait_for

EVENTS = 25


def scrape(settings: GatewatchSettings) -> dict[str, dict[tuple, float]]:
    """Samples of ``/metrics`` as ``{name: {labels: value}}`` (parsed by prometheus_client)."""
    url = f"http://{settings.worker_web_host}:{settings.worker_web_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_worker_metrics_and_healthcheck(settings: GatewatchSettings, tmp_path: Path) -> None:
    s = settings.model_copy(update={"worker_web_port": free_port(), "sink_batch_within_s": 0.2})
    with running_worker(s, tmp_path):
        check = subprocess.run([sys.executable, "-m", "gatewatch.healthcheck", "worker"],
                               env=os.environ | s.to_env(), capture_output=True, text=True, timeout=60)
        assert check.returncode == 0 and "worker ready" in check.stdout, check.stdout + check.stderr

        p = producer(s)
        now = datetime.now(timezone.utc)
        for i in range(EVENTS):
            event = RequestEvent(event_id=f"m{i}", ts=now, client_ip="198.51.100.9", method="GET", host="api",
                                 path="/health", route="/health", status=200)
            p.send(s.topic_requests, key=b"198.51.100.9", value=event.model_dump_json().encode())
        p.send(s.topic_requests, key=b"x", value=b"{not json")
        p.flush()
        p.close()

        def stored() -> dict | None:
            metrics = scrape(s).get("gatewatch_worker_events_total", {})
            return metrics if metrics.get((("counter", "stored_requests"),)) == EVENTS else None

        counters = wait_for(stored, 30, "stored_requests in /metrics")
        assert counters[(("counter", "malformed_requests"),)] == 1
        metrics = scrape(s)
        assert metrics["gatewatch_worker_store_open"] == {(): 1.0}
        # Faust's own sensors (faust.sensors.prometheus) share the page.
        assert any(name.startswith("faust_") for name in metrics), sorted(metrics)[:20]

    stopped = subprocess.run([sys.executable, "-m", "gatewatch.healthcheck", "worker"],
                             env=os.environ | s.to_env(), capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 1 and "unhealthy" in stopped.stderr
