"""Generate the dashboards' JSON and the alert rules file; load a dashboard back.

Output is deterministic (same code, same bytes): the SDK serialises fields in
a fixed order, panel ids are assigned in reading order, and nothing depends
on the clock. ``dashboards/json/`` and ``dashboards/provisioning/alerting/``
hold the committed output; a test checks that they are up to date.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard

from dashboards import abuse, alerts, auth, geo, latency, overview
from dashboards.clickhouse import register

PACKAGE_DIR = Path(__file__).parent
#: Default output of ``gatewatch dashboards build`` (committed).
JSON_DIR = PACKAGE_DIR / "json"
#: Grafana's provisioning tree: datasources/, dashboards/, alerting/.
PROVISIONING_DIR = PACKAGE_DIR / "provisioning"
ALERTS_FILE = PROVISIONING_DIR / "alerting" / "gatewatch.yaml"

#: File stem → builder, in menu order.
DASHBOARDS: dict[str, Callable[[], dashboard.Dashboard]] = {
    "overview": overview.build,
    "abuse": abuse.build,
    "geo": geo.build,
    "latency": latency.build,
    "auth": auth.build,
}


def build_dashboards() -> dict[str, dashboard.Dashboard]:
    """Every dashboard model, by file stem."""
    return {stem: build() for stem, build in DASHBOARDS.items()}


def render(board: dashboard.Dashboard) -> str:
    """A dashboard as the JSON text Grafana imports (2-space indent, trailing newline)."""
    return json.dumps(board, cls=JSONEncoder, indent=2, ensure_ascii=False) + "\n"


def render_all() -> dict[str, str]:
    """File name → text for every output: ``<stem>.json`` per dashboard and the alert rules
    (key ``alerts``)."""
    boards = build_dashboards()
    out = {f"{stem}.json": render(board) for stem, board in boards.items()}
    out["alerts"] = alerts.render({board.uid: board for board in boards.values() if board.uid})
    return out


def write(out_dir: Path = JSON_DIR, alerts_file: Path | None = ALERTS_FILE) -> list[Path]:
    """Write every dashboard to ``out_dir`` (and the alert rules to ``alerts_file`` unless
    None); return the paths written. Files are rewritten only when their text changed."""
    written: list[Path] = []
    rendered = render_all()
    alerts_text = rendered.pop("alerts")
    targets = [(out_dir / name, text) for name, text in rendered.items()]
    if alerts_file is not None:
        targets.append((alerts_file, alerts_text))
    for path, text in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        written.append(path)
    return written


def load(text: str) -> dashboard.Dashboard:
    """Parse dashboard JSON back into the SDK model (ClickHouse targets included)."""
    register()
    return dashboard.Dashboard.from_json(json.loads(text))
