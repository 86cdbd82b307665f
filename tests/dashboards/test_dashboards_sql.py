"""Every panel's, variable's and alert rule's SQL, run against the real schema in chDB.

No Grafana server can run on this machine, so each query is expanded the way
Grafana and the ClickHouse plugin would (``dashboards.macros``, fixed range
10:00–12:00 UTC, 60 s interval, the ``series`` variable set to "All" from its
own query) and executed on a store migrated by ``storage.migrations`` and
seeded through ``storage.writer`` (``conftest.py``). Each result must have the
declared columns in order, types that fit their roles (a DateTime ``time``
first and sorted for time series, numbers for values, strings for labels,
ISO country codes for the geomap) and rows on the seeded data. A few
results are then checked against what the seed is known to contain.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from tests.dashboards.seed_data import DELETED_AT, RANGE_FROM, RANGE_TO, REDELIVERED, Seed
from dashboards import panels
from dashboards.alerts import ALERTS, AlertSpec
from dashboards.clickhouse import Format
from dashboards.macros import QueryContext, expand

INTERVAL_S = 60
_NUMERIC = re.compile(r"^(U?Int(8|16|32|64|128|256)|Float(32|64)|Decimal.*)$")
_STRING = re.compile(r"^(String|FixedString\(\d+\))$")
_TIME = re.compile(r"^DateTime(64)?(\(.*\))?$")


def base_type(name: str) -> tuple[str, bool]:
    """``LowCardinality(Nullable(String))`` → ``("String", True)``."""
    nullable = False
    while True:
        m = re.fullmatch(r"(LowCardinality|Nullable)\((.*)\)", name)
        if not m:
            return name, nullable
        nullable |= m.group(1) == "Nullable"
        name = m.group(2)


def run(store: Client, name: str, ctx: QueryContext) -> tuple[list[str], list[str], list[tuple]]:
    """Column names, type names and rows of query ``name`` in ``ctx``."""
    result = store.query(expand(panels.get(name).sql, ctx))
    return list(result.column_names), [t.name for t in result.column_types], list(result.result_rows)


def rows_as_dicts(store: Client, name: str, ctx: QueryContext) -> list[dict[str, Any]]:
    names, _, rows = run(store, name, ctx)
    return [dict(zip(names, row)) for row in rows]


@pytest.fixture(scope="module")
def ctx(store: Client) -> QueryContext:
    """The dashboards' range, with ``$series`` = All (every value its variable query returns)."""
    base = QueryContext(RANGE_FROM, RANGE_TO, INTERVAL_S)
    _, _, rows = run(store, "latency_series", base)
    return QueryContext(RANGE_FROM, RANGE_TO, INTERVAL_S, {"series": [r[0] for r in rows]})


def check_shape(query: panels.PanelQuery, names: list[str], types: list[str], rows: list[tuple]) -> None:
    """The declared columns, in order, with types fitting their roles."""
    assert names == query.names(), f"{query.name}: columns {names} != declared {query.names()}"
    for col, type_name in zip(query.columns, types):
        base, nullable = base_type(type_name)
        where = f"{query.name}.{col.name}: {type_name}"
        if col.role in ("time", "timestamp"):
            assert _TIME.match(base) and not nullable, where
        elif col.role == "value":
            assert _NUMERIC.match(base), where
        else:  # label, country
            assert _STRING.match(base), where
        if col.role == "country":
            values = {row[names.index(col.name)] for row in rows}
            assert all(v is None or re.fullmatch(r"[A-Z]{2}", v) for v in values), (where, values)
    if query.format == Format.TIME_SERIES:
        assert query.columns[0].role == "time", f"{query.name}: a time series starts with its time column"
        times = [row[0] for row in rows]
        assert times == sorted(times), f"{query.name}: not sorted by time"
        for col, type_name in zip(query.columns, types):
            if col.role == "label":  # the plugin turns long frames wide on non-null string labels
                assert not base_type(type_name)[1], f"{query.name}.{col.name} is nullable"


@pytest.mark.parametrize("name", [n for n in panels.QUERIES if not n.startswith("alert_")])
def test_panel_query_runs_with_declared_columns(store: Client, ctx: QueryContext, name: str) -> None:
    query = panels.get(name)
    names, types, rows = run(store, name, ctx)
    assert rows, f"{name} returned no rows on the seeded data"
    check_shape(query, names, types, rows)
    if query.format == Format.TIME_SERIES:
        first, last = rows[0][0], rows[-1][0]
        assert RANGE_FROM.replace(tzinfo=None) <= first.replace(tzinfo=None)
        assert last.replace(tzinfo=None) <= RANGE_TO.replace(tzinfo=None)


def test_requests_count_once_despite_redelivery(store: Client, ctx: QueryContext, seed: Seed) -> None:
    [totals] = rows_as_dicts(store, "overview_totals", ctx)
    in_range = [e for e in seed.events if RANGE_FROM <= e.ts <= RANGE_TO]
    assert totals["requests"] == len(in_range)
    assert totals["blocked"] == sum(e.answered_by == "decision" for e in in_range)
    assert totals["rate_limited"] == 40
    detections = sum(r["detections"] for r in rows_as_dicts(store, "abuse_detections_by_detector", ctx))
    assert detections == len(seed.detections)


def test_active_decisions_are_the_latest_unexpired_per_key(store: Client, ctx: QueryContext) -> None:
    rows = rows_as_dicts(store, "abuse_active_decisions", ctx)
    assert {r["id"] for r in rows} == {"dec-ip-1", "dec-prefix-2", "dec-principal-1", "dec-username-1"}
    [totals] = rows_as_dicts(store, "abuse_totals", ctx)
    assert totals["active_decisions"] == 4


def test_a_deleted_decision_is_not_active_after_its_deletion(store: Client, seed: Seed) -> None:
    """dec-deleted-1 runs until 15:10 but was deleted at 11:40: active in a range ending
    before the deletion, gone from every range ending after it; its deletion record
    (no lifetime) never shows as a decision in force."""
    [record] = [d for d in seed.decisions if d.evidence.get("lifts") == "dec-deleted-1"]
    for end, active in ((DELETED_AT - timedelta(minutes=10), True), (DELETED_AT, False),
                        (RANGE_TO, False), (RANGE_TO + timedelta(hours=2), False)):
        at = QueryContext(end - timedelta(hours=2), end, INTERVAL_S)
        ids = {r["id"] for r in rows_as_dicts(store, "abuse_active_decisions", at)}
        assert ("dec-deleted-1" in ids) is active, (end, ids)
        assert record.id not in ids
        [totals] = rows_as_dicts(store, "abuse_totals", at)
        assert totals["active_decisions"] == len(ids)


def test_rollup_panels_agree_with_the_requests(store: Client, ctx: QueryContext, seed: Seed) -> None:
    """The rollup-fed panels count what the seed holds, plus the redelivered batch (a
    materialized view sees every insert: the documented limit of migration 005)."""
    in_range = [e for e in seed.events if RANGE_FROM <= e.ts <= RANGE_TO]
    twice = [e for e in seed.events[-REDELIVERED:] if RANGE_FROM <= e.ts <= RANGE_TO]
    counted = in_range + twice
    mix = rows_as_dicts(store, "overview_status_mix", ctx)
    for status_class in {f"{e.status // 100}xx" for e in counted}:
        assert sum(r["requests"] for r in mix if r["status_class"] == status_class) == \
            sum(f"{e.status // 100}xx" == status_class for e in counted)
    denials = rows_as_dicts(store, "overview_denials", ctx)
    for column, status in (("unauthorized_401", 401), ("forbidden_403", 403), ("too_many_429", 429)):
        assert sum(r[column] for r in denials) == sum(e.status == status for e in counted)
    traffic = rows_as_dicts(store, "overview_traffic", ctx)
    assert round(sum(r["requests_per_s"] for r in traffic) * INTERVAL_S) == len(counted)
    # p95 per minute and route equals the exact figure from `requests FINAL` (no upstream
    # request was redelivered, and a minute holds fewer than 8192 requests per route).
    exact = {(r[0], r[1]): r[2] for r in store.query(expand("""
        SELECT toStartOfMinute(ts) AS time, concat(method, ' ', route) AS series,
               quantile(0.95)(latency_ms)
        FROM requests FINAL
        WHERE $__timeFilter(ts) AND answered_by = 'upstream'
        GROUP BY time, series""", ctx)).result_rows}
    p95 = {(r["time"], r["series"]): r["p95_ms"] for r in rows_as_dicts(store, "overview_p95_by_route", ctx)}
    assert p95.keys() == exact.keys()
    assert all(p95[k] == pytest.approx(exact[k], rel=1e-9) for k in exact)


def test_top_offenders_are_the_attackers(store: Client, ctx: QueryContext) -> None:
    prefixes = [r["prefix"] for r in rows_as_dicts(store, "abuse_top_prefixes", ctx)]
    assert prefixes[:2] == ["203.0.113.0/24", "2001:db8:bad::/64"]
    ips = [r["ip"] for r in rows_as_dicts(store, "abuse_top_ips", ctx)]
    assert set(ips[:13]) == {f"203.0.113.{i}" for i in range(10, 20)} | {f"2001:db8:bad::{i}" for i in range(1, 4)}
    assert not any(ip.startswith("::ffff:") for ip in ips)  # IPv4 shown plain
    asns = rows_as_dicts(store, "abuse_top_asns", ctx)
    assert [(r["asn"], r["country"]) for r in asns[:2]] == [(64500, "RU"), (64501, "CN")]
    assert all(r["asn"] is not None for r in asns)


def test_geomap_layers_have_located_countries(store: Client, ctx: QueryContext) -> None:
    requests = {r["country"]: r for r in rows_as_dicts(store, "geo_requests_by_country", ctx)}
    assert None not in requests and "" not in requests  # the unlocated health checker is left out
    assert set(requests) == {"US", "DE", "FR", "GB", "JP", "BR", "IN", "CA", "NL", "RU", "CN"}
    assert requests["RU"]["blocked"] > 0 and requests["US"]["blocked"] == 0
    detections = {r["country"]: r["detections"] for r in rows_as_dicts(store, "geo_detections_by_country", ctx)}
    # ip, prefix, asn (RU), prefix (CN), global (both), bola and geo on key_07 (JP); the route-scoped
    # latency regression has no place.
    assert detections == {"RU": 4, "CN": 2, "JP": 2}


def test_latency_p95_against_baseline(store: Client, ctx: QueryContext) -> None:
    rows = [r for r in rows_as_dicts(store, "latency_p95_vs_baseline", ctx) if r["series"] == "GET /orders/{id}"]
    assert all(r["baseline_p95_ms"] is not None for r in rows)  # the hour before the range counts

    def median_ratio(start: datetime, end: datetime) -> float:
        ratios = sorted(r["p95_ms"] / r["baseline_p95_ms"] for r in rows if start <= r["time"] < end)
        return ratios[len(ratios) // 2]

    assert median_ratio(DateTimeNaive(10, 0), DateTimeNaive(11, 30)) < 1.5  # near its baseline
    assert median_ratio(DateTimeNaive(11, 30), DateTimeNaive(12, 0)) > 2  # the regression stands out
    change = rows_as_dicts(store, "latency_change_by_route", ctx)
    assert change[0]["series"] == "GET /orders/{id}" and change[0]["ratio"] > 2
    [regression] = rows_as_dicts(store, "latency_regressions", ctx)
    assert (regression["state"], regression["baseline_p95_ms"]) == ("regression", 41.0)


def test_auth_failures_by_reason(store: Client, ctx: QueryContext) -> None:
    rows = rows_as_dicts(store, "auth_failures_by_reason", ctx)
    assert {r["auth"] for r in rows} == {"missing", "invalid", "unavailable"}
    outcomes = rows_as_dicts(store, "auth_outcomes", ctx)
    assert {(r["auth"], r["answered_by"]) for r in outcomes} >= {
        ("missing", "auth"), ("invalid", "auth"), ("unavailable", "auth"), ("ok", "rate_limit"),
        ("public", "decision"), ("ok", "upstream")}
    assert abs(sum(r["share_pct"] for r in outcomes) - 100) < 0.1
    assert {r["outcome"] for r in rows_as_dicts(store, "auth_logins", ctx)} == {"success", "failure"}


def DateTimeNaive(hour: int, minute: int) -> datetime:  # noqa: N802 - reads like a constructor
    """A time on the seeded day as the naive UTC datetime clickhouse_connect returns."""
    return RANGE_FROM.replace(hour=hour, minute=minute, tzinfo=None)


# ---------------------------------------------------------------- alert rules

def evaluate(store: Client, spec: AlertSpec, now: datetime) -> dict[tuple, float]:
    """The rule as Grafana evaluates it at ``now``: its query over the last ``window_s``
    seconds, then the threshold per label set; returns the firing label sets and values."""
    query = panels.get(spec.query)
    ctx = QueryContext(now - timedelta(seconds=spec.window_s), now, INTERVAL_S)
    names, types, rows = run(store, spec.query, ctx)
    if not rows:  # chDB returns no column names for an empty result
        return {}
    check_shape(query, names, types, rows)
    value_at = names.index(query.names("value")[0])
    labels = [names.index(n) for n in query.names("label")]
    return {tuple(row[i] for i in labels): row[value_at] for row in rows if spec.fires(row[value_at])}


ALERT_CASES = {  # rule uid: (a time it must fire at, with these label sets), a quiet time
    "gatewatch-credential-stuffing": (DateTimeNaive(11, 1), {("asn",), ("global",), ("prefix",)},
                                      DateTimeNaive(9, 30)),
    "gatewatch-blocked-spike": (DateTimeNaive(11, 4), {()}, DateTimeNaive(11, 50)),
    "gatewatch-latency-regression": (DateTimeNaive(11, 45), {("GET /orders/{id}",)}, DateTimeNaive(11, 0)),
}


@pytest.mark.parametrize("spec", ALERTS, ids=[a.uid for a in ALERTS])
def test_alert_rule_fires_on_the_attack_and_not_when_quiet(store: Client, spec: AlertSpec) -> None:
    firing_at, labels, quiet_at = ALERT_CASES[spec.uid]
    as_utc = lambda t: t.replace(tzinfo=RANGE_FROM.tzinfo)  # noqa: E731
    firing = evaluate(store, spec, as_utc(firing_at))
    assert set(firing) == labels, firing
    assert evaluate(store, spec, as_utc(quiet_at)) == {}


def test_every_alert_case_is_covered() -> None:
    assert set(ALERT_CASES) == {a.uid for a in ALERTS}
    assert {a.query for a in ALERTS} == {n for n in panels.QUERIES if n.startswith("alert_")}
