"""``gatewatch explain <decision-id | detection-id | ip | principal | value>``: why was this blocked?

Prints every decision about the target (active ones from the decisions topic,
past ones from the store), the detector and the thresholds its evidence
crossed, the detections behind it, and the sample requests that made it.
Allow entries (``gatewatch allowlist``) about the target are shown too, and a
detection the decision policy let go because of one says so.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from gatewatch import decision_feed
from gatewatch.stack_info import stack_settings
from gatewatch.store_reader import StoreReader, StoreUnavailable

console = Console()


def thresholds_crossed(evidence: dict[str, Any]) -> list[str]:
    """Human lines "failures 12 ≥ 10" from an evidence dict whose ``thresholds`` map
    ``min_X``/``max_X`` to limits and whose ``X`` holds the observed value."""
    lines = []
    for name, limit in sorted((evidence.get("thresholds") or {}).items()):
        for prefix, op in (("min_", "≥"), ("max_", "≤")):
            if name.startswith(prefix):
                key = name[len(prefix):]
                seen = next((evidence[k] for k in (key, key + "s", "distinct_" + key) if k in evidence), None)
                if seen is not None:
                    lines.append(f"{key} {seen} {op} {limit}")
    return lines


def _parse_evidence(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    try:
        return json.loads(value or "{}")
    except ValueError:
        return {"raw": value}


def _state(expires_at: str | datetime) -> str:
    exp = datetime.fromisoformat(expires_at) if isinstance(expires_at, str) else expires_at
    left = (exp - datetime.now(timezone.utc)).total_seconds()
    return f"[red]active[/], {left / 60:.1f} min left" if left > 0 else "expired"


def explain(target: str = typer.Argument(..., help="Decision id, detection id, IP, principal or other value."),
            stack: Optional[Path] = typer.Option(None, help="Run directory of the stack (default: current)."),
            samples: int = typer.Option(10, help="Sample requests to show per detection.")) -> None:
    """Why was this blocked: decisions, detector, thresholds crossed, sample requests."""
    settings = stack_settings(stack)
    reader = StoreReader(settings)
    decisions: dict[str, dict[str, Any]] = {}
    try:
        log = decision_feed.read_decisions(settings, timeout_s=5)
        for d in log.latest.values():
            if target in (d.id, d.value, d.detection_id):
                decisions[d.id] = d.model_dump(mode="json")
    except Exception as exc:  # broker down: the store still answers
        console.print(f"[yellow]decisions topic not read ({exc}); showing stored decisions only[/]")
    try:
        for row in reader.query("decisions_for", target=target, limit=20):
            decisions.setdefault(row["id"], row)
        detections = reader.query("detections_for", target=target, limit=20)
        detection_ids = {d.get("detection_id") for d in decisions.values() if d.get("detection_id")}
        for det_id in detection_ids - {d["detection_id"] for d in detections}:
            detections += reader.query("detections_for", target=det_id, limit=1)
    except StoreUnavailable as exc:
        console.print(f"[yellow]store not readable: {exc}[/]")
        detections = []
    if not decisions and not detections:
        console.print(f"nothing known about {target!r}: no decision or detection names it")
        raise typer.Exit(1)

    for d in sorted(decisions.values(), key=lambda d: str(d["created_at"]), reverse=True):
        evidence = _parse_evidence(d.get("evidence"))
        allow = d["action"] == "allow"
        console.rule(f"{'allow entry' if allow else 'decision'} {d['id']}")
        console.print(f"[bold]{d['action']}[/] {d['scope']} [bold]{d['value']}[/] — {_state(d['expires_at'])}")
        if allow:
            console.print("  allow-listed: no decision blocks or throttles it at the gateway, no rate limit "
                          "applies, and the workers issue no decision against it")
        console.print(f"  detector {d['detector'] or 'manual'} ({d['origin']}), created {d['created_at']}, "
                      f"expires {d['expires_at']}")
        console.print(f"  reason: {d['reason']}")
        for line in thresholds_crossed(evidence):
            console.print(f"  threshold crossed: {line}")
    for det in detections:
        evidence = _parse_evidence(det.get("evidence"))
        console.rule(f"detection {det['detection_id']}")
        console.print(f"{det['detector']} on {det['scope']} {det['value']} at {det['ts']} "
                      f"(severity {det['severity']}): {det['summary']}")
        for line in thresholds_crossed(evidence):
            console.print(f"  threshold crossed: {line}")
        if evidence.get("policy") == "allow_listed":
            console.print(f"  no decision: the value is allow-listed (allow entry {evidence.get('allow_entry')})")
        ids = list(det.get("sample_event_ids") or [])[:samples]
        if not ids:
            continue
        try:
            rows = reader.query("requests_by_ids", ids=",".join(ids))
        except StoreUnavailable as exc:
            console.print(f"  [yellow]sample requests not readable: {exc}[/]")
            continue
        table = Table(title=f"sample requests ({len(rows)} of {len(ids)} stored)")
        for col in ("ts", "client_ip", "method", "path", "status", "principal", "login", "answered_by"):
            table.add_column(col)
        for r in rows:
            table.add_row(*(str(r.get(c) or "") for c in
                            ("ts", "client_ip", "method", "path", "status", "principal", "login", "answered_by")))
        console.print(table)
    console.print(f"[dim](store read {'through the worker' if reader.via == 'worker' else 'directly'})[/]")
