"""The Abuse dashboard: detections per detector, top offenders, decisions in force."""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard

from dashboards.layout import Row, assemble, stat, table, timeseries

UID = "gatewatch-abuse"


def build() -> dashboard.Dashboard:
    """Build the Abuse dashboard."""
    return assemble(UID, "gatewatch · Abuse", "What the detectors found and what the gateway enforces.", [
        Row("Summary", [
            stat("abuse_totals", "Detections, offenders, active decisions", width=8, height=8),
            timeseries("abuse_detections_by_detector", "Detections by detector", bars=True, stacked=True,
                       width=16),
        ]),
        Row("Top offenders", [
            table("abuse_top_ips", "Top client IPs"),
            table("abuse_top_prefixes", "Top networks (/24, /64)"),
            table("abuse_top_asns", "Top ASNs"),
            table("abuse_top_principals", "Top principals"),
        ]),
        Row("Decisions and detections", [
            table("abuse_active_decisions", "Active decisions (at the end of the range)", width=24),
            table("abuse_recent_detections", "Recent detections", width=24, height=10),
        ]),
    ])
