"""The generated dashboards and provisioning files: structure, SDK round trip, determinism.

No Grafana server can run here; the JSON is validated structurally, loaded
back through grafana-foundation-sdk (``Dashboard.from_json`` with the
ClickHouse query variant registered) and compared with the committed files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dashboards import generate, panels
from dashboards.alerts import ALERTS, LINKED_PANEL
from dashboards.clickhouse import DATASOURCE_TYPE, DATASOURCE_UID, ClickHouseQuery, Format
from dashboards.layout import COUNTRIES_GAZETTEER

GATEWATCH = str(Path(sys.executable).parent / "gatewatch")
RENDERED = generate.render_all()
BOARDS = {stem: json.loads(RENDERED[f"{stem}.json"]) for stem in generate.DASHBOARDS}
SQL_TO_NAME = {q.sql: q.name for q in panels.QUERIES.values()}


def content_panels(board: dict) -> list[dict]:
    return [p for p in board["panels"] if p["type"] != "row"]


@pytest.mark.parametrize("stem", list(generate.DASHBOARDS))
def test_dashboard_structure(stem: str) -> None:
    board = BOARDS[stem]
    assert board["uid"] == f"gatewatch-{stem}" and board["title"].startswith("gatewatch · ")
    assert "gatewatch" in board["tags"] and board["timezone"] == "utc"
    assert board["annotations"]["list"][0]["builtIn"] == 1
    ids = [p["id"] for p in board["panels"]]
    assert ids == list(range(1, len(ids) + 1))
    assert content_panels(board)
    for panel in content_panels(board):
        assert panel["title"] and panel["datasource"] == {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID}
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID}
            assert target["editorType"] == "sql" and target["pluginVersion"].startswith("4.")
            query = panels.get(SQL_TO_NAME[target["rawSql"]])  # every target runs a named query
            want = Format.TIME_SERIES if panel["type"] == "timeseries" else Format.TABLE
            assert target["format"] == query.format == want, (panel["title"], query.name)
            assert target["queryType"] == {0: "timeseries", 1: "table"}[target["format"]]


def test_every_named_query_is_used_once_somewhere() -> None:
    used = [SQL_TO_NAME[t["rawSql"]] for b in BOARDS.values() for p in content_panels(b) for t in p["targets"]]
    used += [SQL_TO_NAME[v["query"]] for b in BOARDS.values() for v in b.get("templating", {}).get("list", [])]
    used += [a.query for a in ALERTS]
    assert set(used) == set(panels.QUERIES), set(panels.QUERIES) - set(used)


def test_geomap_looks_countries_up_in_the_gazetteer() -> None:
    [geomap] = [p for p in content_panels(BOARDS["geo"]) if p["type"] == "geomap"]
    refs = {t["refId"]: SQL_TO_NAME[t["rawSql"]] for t in geomap["targets"]}
    layers = geomap["options"]["layers"]
    assert [layer["name"] for layer in layers] == ["Requests", "Detections"]
    for layer in layers:
        assert layer["type"] == "markers"
        assert layer["location"] == {"mode": "lookup", "lookup": "country", "gazetteer": COUNTRIES_GAZETTEER}
        query = panels.get(refs[layer["filterData"]["options"]])
        assert query.names("country") == ["country"]
        assert layer["config"]["style"]["size"]["field"] in query.names("value")
    assert geomap["options"]["basemap"]["type"] == "default"


def test_latency_panel_repeats_per_route() -> None:
    board = BOARDS["latency"]
    [variable] = board["templating"]["list"]
    assert (variable["name"], variable["type"], variable["multi"], variable["includeAll"]) == \
        ("series", "query", True, True)
    assert variable["datasource"]["uid"] == DATASOURCE_UID
    [repeated] = [p for p in content_panels(board) if p.get("repeat")]
    assert repeated["repeat"] == "series" and "${series:singlequote}" in repeated["targets"][0]["rawSql"]


@pytest.mark.parametrize("stem", list(generate.DASHBOARDS))
def test_dashboard_loads_back_through_the_sdk(stem: str) -> None:
    text = RENDERED[f"{stem}.json"]
    model = generate.load(text)
    assert model.uid == f"gatewatch-{stem}"
    targets = [t for p in model.panels if getattr(p, "targets", None) for t in p.targets]
    assert targets and all(isinstance(t, ClickHouseQuery) for t in targets)
    assert generate.render(model) == text  # nothing lost or added on the way


def test_build_is_deterministic_and_committed_output_is_current() -> None:
    assert generate.render_all() == RENDERED
    for name, text in RENDERED.items():
        path = generate.ALERTS_FILE if name == "alerts" else generate.JSON_DIR / name
        assert path.read_text() == text, f"{path} is stale: run `gatewatch dashboards build`"
    assert sorted(p.name for p in generate.JSON_DIR.iterdir()) == sorted(
        f"{stem}.json" for stem in generate.DASHBOARDS)


def test_cli_build_writes_the_same_files(tmp_path: Path) -> None:
    out, alerts_file = tmp_path / "json", tmp_path / "alerting" / "rules.yaml"
    proc = subprocess.run([GATEWATCH, "dashboards", "build", "--out", str(out), "--alerts", str(alerts_file)],
                          capture_output=True, text=True, timeout=60, env=os.environ | {"COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        k: v for k, v in RENDERED.items() if k != "alerts"}
    assert alerts_file.read_text() == RENDERED["alerts"]


def test_datasource_and_dashboard_provisioning() -> None:
    ds = yaml.safe_load((generate.PROVISIONING_DIR / "datasources" / "clickhouse.yaml").read_text())
    [source] = ds["datasources"]
    assert ds["apiVersion"] == 1
    assert (source["type"], source["uid"]) == (DATASOURCE_TYPE, DATASOURCE_UID)
    assert source["jsonData"]["protocol"] in ("native", "http") and source["jsonData"]["defaultDatabase"]
    prov = yaml.safe_load((generate.PROVISIONING_DIR / "dashboards" / "gatewatch.yaml").read_text())
    [provider] = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


def test_alert_rules_file() -> None:
    doc = yaml.safe_load(RENDERED["alerts"])
    assert doc["apiVersion"] == 1
    [group] = doc["groups"]
    assert group["folder"] == "gatewatch" and group["interval"] == "1m"
    rules = {r["uid"]: r for r in group["rules"]}
    assert list(rules) == [a.uid for a in ALERTS]
    for spec in ALERTS:
        rule = rules[spec.uid]
        data = {d["refId"]: d for d in rule["data"]}
        assert rule["condition"] == "B" and set(data) == {"A", "B"}
        assert data["A"]["datasourceUid"] == DATASOURCE_UID
        assert data["A"]["relativeTimeRange"] == {"from": spec.window_s, "to": 0}
        assert data["A"]["model"]["rawSql"] == panels.get(spec.query).sql
        assert data["A"]["model"]["format"] == Format.TABLE
        assert data["B"]["model"]["type"] == "threshold" and data["B"]["model"]["expression"] == "A"
        assert data["B"]["model"]["conditions"][0]["evaluator"] == {"type": spec.op, "params": [spec.threshold]}
        assert rule["noDataState"] == "OK" and rule["execErrState"] == "Error"
        # Grafana interpolates $VARS from its environment in titles and labels: none may hold a '$'.
        assert "$" not in rule["title"] and not any("$" in v for v in rule["labels"].values())
        # The rule links to the panel showing the same thing.
        board = next(b for b in BOARDS.values() if b["uid"] == rule["annotations"]["__dashboardUid__"])
        panel = next(p for p in board["panels"] if str(p["id"]) == rule["annotations"]["__panelId__"])
        assert SQL_TO_NAME[panel["targets"][0]["rawSql"]] == LINKED_PANEL[spec.uid]


def test_the_cli_does_not_load_dashboards_until_a_dashboards_command_runs() -> None:
    code = ("import sys, gatewatch.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dashboards', 'grafana_foundation_sdk', "
            "'grafana_client')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_rollup_panels_never_ask_for_buckets_finer_than_a_minute() -> None:
    """A panel bucketing a per-minute rollup has Grafana's min interval at 1m, or its
    per-second rates would be divided by a bucket the rollup cannot fill."""
    checked = 0
    for board in BOARDS.values():
        for panel in content_panels(board):
            for target in panel["targets"]:
                query = panels.get(SQL_TO_NAME[target["rawSql"]])
                if "_per_minute" in query.sql and "$__timeInterval" in query.sql:
                    assert query.min_interval == "1m" and panel.get("interval") == "1m", panel["title"]
                    checked += 1
    assert checked >= 5
