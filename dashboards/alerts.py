"""Grafana-managed alert rules as code, written as Grafana's alerting provisioning file.

Each rule runs one named query of :mod:`dashboards.panels` (a table with one
numeric column; string columns become alert labels, so a rule fires once per
scope or route) over the last ``window_s`` seconds, and a threshold
expression on it. Rules link to the dashboard panel that shows the same thing
(``__dashboardUid__`` / ``__panelId__``).

Rules:

* **credential stuffing** — any credential-stuffing detection in the last 5 minutes;
* **blocked requests spike** — requests blocked by decisions in the last 5 minutes
  above 3× the average 5 minutes of the hour before;
* **latency regression** — any latency-regression detection (not a recovery)
  in the last 10 minutes.

Grafana interpolates environment variables (``$NAME``) in provisioning files,
but not in a rule's query ``model`` (raw since Grafana 9.1, so ``$__timeFilter``
reaches the plugin) nor in annotations (so ``{{ $labels.scope }}`` stays a
template); titles and labels are interpolated and must hold no ``$``.

With no rows (nothing detected) a rule is OK, not "no data"; a query error is
an error. Notification routing (Alertmanager contact point, policies) is
configured in Grafana, not here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from grafana_foundation_sdk.builders import alerting as alerting_b
from grafana_foundation_sdk.builders import expr as expr_b
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import alerting, dashboard

from dashboards import panels
from dashboards.clickhouse import DATASOURCE_UID, SqlTarget

FOLDER = "gatewatch"
GROUP = "gatewatch"
INTERVAL = "1m"
#: Grafana's server-side expressions pseudo-datasource.
EXPR_UID = "__expr__"
_OPS: dict[str, Callable[[float, float], bool]] = {"gt": lambda v, t: v > t, "lt": lambda v, t: v < t}


@dataclass(frozen=True)
class AlertSpec:
    """One rule: query ``query`` over the last ``window_s`` s fires where its value is
    ``op`` (``gt``/``lt``) ``threshold`` for ``for_`` (a Grafana duration)."""

    uid: str
    title: str
    query: str
    window_s: int
    threshold: float
    severity: Literal["warning", "critical"]
    summary: str
    description: str
    dashboard_uid: str
    op: Literal["gt", "lt"] = "gt"
    for_: str = "0s"

    def fires(self, value: float | None) -> bool:
        """Whether the threshold expression fires for one value (None: no data, never)."""
        return value is not None and _OPS[self.op](float(value), self.threshold)


ALERTS: list[AlertSpec] = [
    AlertSpec(
        uid="gatewatch-credential-stuffing", title="Credential stuffing detected",
        query="alert_credential_stuffing", window_s=300, threshold=0, severity="critical",
        summary="Credential stuffing on scope {{ $labels.scope }}",
        description=("{{ $values.A.Value }} credential-stuffing detection(s) on scope {{ $labels.scope }} in "
                     "the last 5 minutes. Who and why: `gatewatch explain <ip|principal|decision id>`."),
        dashboard_uid="gatewatch-abuse"),
    AlertSpec(
        uid="gatewatch-blocked-spike", title="Blocked requests spike",
        query="alert_blocked_spike", window_s=3600, threshold=3, severity="warning",
        summary="Requests blocked by decisions: {{ $values.A.Value }}× the usual rate",
        description=("Blocked requests in the last 5 minutes are {{ $values.A.Value }} times the average "
                     "5 minutes of the hour before (floor 10). An attack in progress, or a decision "
                     "blocking legitimate clients: check the active decisions."),
        dashboard_uid="gatewatch-overview"),
    AlertSpec(
        uid="gatewatch-latency-regression", title="Latency regression",
        query="alert_latency_regression", window_s=600, threshold=0, severity="warning",
        summary="Latency regression on {{ $labels.series }}",
        description=("The latency detector reports a p95 regression on {{ $labels.series }} in the last "
                     "10 minutes; see the Latency dashboard for p95 against its baseline."),
        dashboard_uid="gatewatch-latency"),
]


def _panel_id(dashboard_uid: str, query: str, boards: dict[str, dashboard.Dashboard]) -> int | None:
    """Id of the first panel of ``dashboard_uid`` showing ``query`` (or its source table)."""
    board = boards[dashboard_uid]
    wanted = {panels.get(query).sql}
    for panel in board.panels or []:
        targets = getattr(panel, "targets", None) or []
        if any(getattr(t, "raw_sql", None) in wanted for t in targets):
            return panel.id_val
    return None


#: Panel shown with each alert: the query whose panel the rule links to.
LINKED_PANEL = {"gatewatch-credential-stuffing": "abuse_detections_by_detector",
                "gatewatch-blocked-spike": "overview_denials",
                "gatewatch-latency-regression": "latency_regressions"}


def rule(spec: AlertSpec, panel_id: int | None = None) -> alerting.Rule:
    """The SDK rule for ``spec``: query A (ClickHouse) and threshold expression B."""
    query = panels.get(spec.query)
    if len(query.names("value")) != 1:
        raise ValueError(f"alert query {spec.query} must return exactly one numeric column")
    annotations = {"summary": spec.summary, "description": spec.description,
                   "__dashboardUid__": spec.dashboard_uid}
    if panel_id is not None:
        annotations["__panelId__"] = str(panel_id)
    threshold = (expr_b.TypeThreshold().ref_id("B").expression("A")
                 .datasource(dashboard.DataSourceRef(type_val=EXPR_UID, uid=EXPR_UID))
                 .conditions([expr_b.ExprTypeThresholdConditions().evaluator(
                     expr_b.ExprTypeThresholdConditionsEvaluator().type(spec.op).params([spec.threshold]))]))
    return (alerting_b.Rule(spec.title).uid(spec.uid).condition("B")
            .queries([
                alerting_b.Query("A").datasource_uid(DATASOURCE_UID)
                .relative_time_range(alerting.RelativeTimeRange(from_val=spec.window_s, to=0))
                .model(SqlTarget(query.sql, query.format, "A")),
                alerting_b.Query("B").datasource_uid(EXPR_UID)
                .relative_time_range(alerting.RelativeTimeRange(from_val=0, to=0)).model(threshold),
            ])
            .no_data_state("OK").exec_err_state("Error").for_val(spec.for_)
            .labels({"severity": spec.severity, "source": "gatewatch"})
            .annotations(annotations).is_paused(False).build())


#: Keys of the SDK's API rule that the provisioning file format does not take per rule.
_API_ONLY = ("folderUID", "orgID", "ruleGroup", "id", "provenance", "updated")


def provisioning(boards: dict[str, dashboard.Dashboard]) -> dict[str, Any]:
    """The alerting provisioning document (``apiVersion: 1``, one rule group)."""
    rules = []
    for spec in ALERTS:
        panel_id = _panel_id(spec.dashboard_uid, LINKED_PANEL[spec.uid], boards)
        data = json.loads(json.dumps(rule(spec, panel_id), cls=JSONEncoder))
        rules.append({k: v for k, v in data.items() if k not in _API_ONLY})
    return {"apiVersion": 1,
            "groups": [{"orgId": 1, "name": GROUP, "folder": FOLDER, "interval": INTERVAL, "rules": rules}]}


class _Dumper(yaml.SafeDumper):
    """Safe YAML with multi-line strings (the SQL) as literal blocks, readable in review."""


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def render(boards: dict[str, dashboard.Dashboard]) -> str:
    """The provisioning file's text (YAML, stable key order)."""
    header = ("# Generated by `gatewatch dashboards build` from dashboards/alerts.py and\n"
              "# dashboards/panels.py: edit those, not this file.\n")
    return header + yaml.dump(provisioning(boards), Dumper=_Dumper, sort_keys=False,
                              allow_unicode=True, width=100)
