"""Upload the dashboards to a running Grafana through its HTTP API (``grafana-client``).

Each dashboard is POSTed to ``/api/dashboards/db`` with ``overwrite: true``
(same uid → new version), authenticated with a service-account token
(``Authorization: Bearer``). The ClickHouse datasource must exist in that
Grafana with uid ``gatewatch-clickhouse`` (``provisioning/datasources``), as
every panel refers to it by uid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from grafana_client import GrafanaApi
from grafana_client.client import GrafanaException

from dashboards.generate import build_dashboards, render

MESSAGE = "gatewatch dashboards push"


class PushError(RuntimeError):
    """Grafana refused a dashboard or could not be reached."""


@dataclass(frozen=True)
class Pushed:
    """Grafana's answer for one dashboard: its uid, URL path, version and status."""

    uid: str
    url: str
    version: int | None
    status: str


def payload(board_json: dict[str, Any], folder_uid: str | None = None) -> dict[str, Any]:
    """The body of ``POST /api/dashboards/db`` for one dashboard."""
    body: dict[str, Any] = {"dashboard": {**board_json, "id": None}, "overwrite": True, "message": MESSAGE}
    if folder_uid:
        body["folderUid"] = folder_uid
    return body


def push(url: str, token: str, *, folder_uid: str | None = None, timeout_s: float = 10.0) -> list[Pushed]:
    """Build every dashboard and upload it to the Grafana at ``url``.

    Raises :class:`PushError` naming the dashboard on the first refusal or
    connection failure (dashboards before it stay uploaded).
    """
    api = GrafanaApi.from_url(url, credential=token, timeout=timeout_s)
    results: list[Pushed] = []
    for stem, board in build_dashboards().items():
        body = payload(json.loads(render(board)), folder_uid)
        try:
            answer = api.dashboard.update_dashboard(body)
        except GrafanaException as exc:
            raise PushError(f"Grafana refused dashboard {stem} ({board.uid}): HTTP {exc.status_code} "
                            f"{exc.message}") from exc
        except Exception as exc:  # niquests connection errors and the like
            raise PushError(f"cannot upload dashboard {stem} to {url}: {exc}") from exc
        results.append(Pushed(uid=answer.get("uid", board.uid or ""), url=answer.get("url", ""),
                              version=answer.get("version"), status=answer.get("status", "")))
    return results
