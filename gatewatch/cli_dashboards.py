"""``gatewatch dashboards build|push``: Grafana dashboards and alert rules from ``dashboards/``.

``build`` writes the dashboards' JSON (and the alert rules provisioning file);
``push`` uploads the dashboards to a running Grafana with ``grafana-client``.
The ``dashboards`` package is imported inside the commands only, so the rest
of the CLI never loads the Grafana SDK.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(help="Grafana dashboards and alert rules as code (dashboards/).", no_args_is_help=True)
console = Console()


@app.command("build")
def build(
    out: Optional[Path] = typer.Option(None, help="Directory for the dashboard JSON files "
                                                  "(default: dashboards/json of the package)."),
    alerts: Optional[Path] = typer.Option(None, help="Alert rules provisioning file (default: "
                                                     "dashboards/provisioning/alerting/gatewatch.yaml)."),
    no_alerts: bool = typer.Option(False, "--no-alerts", help="Write the dashboards only."),
) -> None:
    """Write every dashboard as Grafana JSON, and the alert rules file."""
    from dashboards import generate

    alerts_file = None if no_alerts else (alerts or generate.ALERTS_FILE)
    for path in generate.write(out or generate.JSON_DIR, alerts_file):
        console.print(f"wrote {path}")


@app.command("push")
def push(
    url: str = typer.Option(..., help="Grafana base URL, e.g. http://127.0.0.1:3000"),
    token: str = typer.Option(..., envvar="GRAFANA_TOKEN",
                              help="Service-account token (or GRAFANA_TOKEN in the environment)."),
    folder_uid: Optional[str] = typer.Option(None, help="Put the dashboards in this folder."),
    timeout: float = typer.Option(10.0, help="Seconds per HTTP request."),
) -> None:
    """Upload every dashboard to Grafana (POST /api/dashboards/db, overwrite by uid)."""
    from dashboards.push import PushError, push as push_all

    try:
        results = push_all(url, token, folder_uid=folder_uid, timeout_s=timeout)
    except PushError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    for r in results:
        console.print(f"{r.status or 'ok'}: {r.uid} version {r.version} {url.rstrip('/')}{r.url}")
