"""The Auth dashboard: refused credentials by reason and answering party, failed logins."""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard

from dashboards.layout import Row, assemble, table, timeseries

UID = "gatewatch-auth"


def build() -> dashboard.Dashboard:
    """Build the Auth dashboard."""
    return assemble(UID, "gatewatch · Auth", "Authentication failures by reason and login outcomes.", [
        Row("Failures", [
            timeseries("auth_failures_by_reason", "Refused credentials by reason", bars=True, stacked=True),
            timeseries("auth_logins", "Login attempts by outcome", stacked=True),
        ]),
        Row("Breakdown", [
            table("auth_outcomes", "Auth result × answered by × status"),
            table("auth_failures_by_route", "Failures per route"),
            table("auth_top_failing_clients", "Clients with the most failures", width=24),
        ]),
    ])
