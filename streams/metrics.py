"""Prometheus metrics of the worker: ``GET /metrics`` on its web server (``worker_web_port``).

Two sources in one registry of this module's own (not the process-global one):

* Faust's stream metrics from ``faust.sensors.prometheus`` (faust-streaming):
  messages and events per topic, commit and send latency (ms), consumer lag
  per partition, rebalances, table keys... named ``faust_*``.
* gatewatch's worker counters (:mod:`streams.counters`: stored, rejected and
  dropped rows, malformed messages, tombstones, alerts sent...) as one
  counter family ``gatewatch_worker_events_total{counter="<name>"}``, and
  ``gatewatch_worker_store_open`` (1 once the store is open).

Behind the admin token like every route of the worker's web server
(:mod:`streams.web_auth`): Prometheus sends it as a bearer token
(``deploy/prometheus/prometheus.yml``).
"""

from __future__ import annotations

from collections.abc import Iterator

from faust.sensors.prometheus import setup_prometheus_sensors
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from streams import counters
from streams.app import app, store

#: Path of the exposition on the worker's web server.
METRICS_PATH = "/metrics"


class WorkerCollector:
    """Collects :mod:`streams.counters` and the store's state at every scrape."""

    def collect(self) -> Iterator[Metric]:
        """The gatewatch metric families (see the module docstring)."""
        family = CounterMetricFamily("gatewatch_worker_events", "Worker counters (streams/counters.py) by name.",
                                     labels=("counter",))
        for name, value in counters.snapshot().items():
            family.add_metric((name,), value)
        yield family
        yield GaugeMetricFamily("gatewatch_worker_store_open", "1 once the store is open, migrated and warm.",
                                value=1.0 if store.ready else 0.0)


registry = CollectorRegistry(auto_describe=False)
registry.register(WorkerCollector())  # type: ignore[arg-type]
setup_prometheus_sensors(app, pattern=METRICS_PATH, registry=registry, name_prefix="faust")
