"""The Latency dashboard: p95 per route against its trailing-hour baseline.

A ``series`` template variable lists the routes (``"METHOD /template"``)
answered by the upstream in the range; the p95-vs-baseline panel repeats once
per selected route.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import dashboard

from dashboards import panels
from dashboards.clickhouse import datasource_ref
from dashboards.layout import Row, assemble, table, timeseries

UID = "gatewatch-latency"


def series_variable() -> db.QueryVariable:
    """Multi-value ``series`` variable (all routes by default), refreshed with the time range.

    Its query is plain SQL text: the plugin runs a string variable query as raw SQL.
    """
    return (db.QueryVariable("series").label("Route").description(panels.get("latency_series").description)
            .datasource(datasource_ref()).query(panels.get("latency_series").sql)
            .refresh(dashboard.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dashboard.VariableSort.ALPHABETICAL_ASC).multi(True).include_all(True)
            .current(dashboard.VariableOption(selected=True, text="All", value="$__all")))


def build() -> dashboard.Dashboard:
    """Build the Latency dashboard."""
    p95 = (timeseries("latency_p95_vs_baseline", "p95 vs baseline: $series", unit="ms")
           .repeat("series").repeat_direction("h").max_per_row(2))
    return assemble(UID, "gatewatch · Latency", "Upstream latency per route against its own baseline.", [
        Row("Per route", [p95]),
        Row("Changes and regressions", [
            table("latency_change_by_route", "p95 now vs the window before", unit="none"),
            table("latency_regressions", "Latency-regression detections"),
        ]),
    ], variables=[series_variable()])
