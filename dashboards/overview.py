"""The Overview dashboard: traffic, status mix, 401/403/429 and p95 latency per route."""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard

from dashboards.layout import Row, assemble, stat, table, timeseries

UID = "gatewatch-overview"


def build() -> dashboard.Dashboard:
    """Build the Overview dashboard."""
    return assemble(UID, "gatewatch · Overview", "Traffic through the gateway and how it was answered.", [
        Row("Totals", [stat("overview_totals", "Totals in range")]),
        Row("Traffic", [
            timeseries("overview_traffic", "Requests per second by who answered", unit="reqps", stacked=True),
            timeseries("overview_status_mix", "Status mix", stacked=True, bars=True),
            timeseries("overview_denials", "401 / 403 / 429", bars=True),
            timeseries("overview_p95_by_route", "p95 upstream latency per route", unit="ms"),
        ]),
        Row("Routes", [table("overview_routes", "Busiest routes", width=24)]),
    ])
