"""Allow entries (action 'allow') in the store, on real chDB: a ban and a later allow entry
for the same value are both in force (their topic keys differ), the allow entry's deletion
record ends only it, and the counts of decisions leave allow entries out — in the named
queries (report, replay) and in the Abuse dashboard's SQL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from clickhouse_connect.driver.client import Client

from dashboards import panels
from dashboards.macros import QueryContext, expand
from gatewatch.decision_feed import lift
from gatewatch.events import Decision
from storage.queries import run_query
from storage.writer import write_decisions

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
UNTIL = T0 + timedelta(minutes=10)


def _decision(id_: str, scope: str, value: str, action: str, at: datetime, ttl: timedelta) -> Decision:
    return Decision(id=id_, scope=scope, value=value, action=action, created_at=at, expires_at=at + ttl,
                    detector="manual" if action == "allow" else "credential_stuffing",
                    origin="cli" if action == "allow" else "detector")


def _seed(store: Client) -> None:
    partner_net = _decision("allow-net", "prefix", "198.51.100.0/24", "allow", T0, timedelta(days=365))
    write_decisions(store, [
        _decision("ban-1", "ip", "203.0.113.5", "ban", T0, timedelta(hours=1)),
        _decision("allow-1", "ip", "203.0.113.5", "allow", T0 + timedelta(minutes=1), timedelta(days=365)),
        _decision("ban-2", "ip", "192.0.2.9", "ban", T0 + timedelta(minutes=2), timedelta(hours=1)),
        partner_net,
        lift("prefix", "198.51.100.0/24", partner_net, now=T0 + timedelta(minutes=3)),   # deleted
    ])


def _rows(result: dict) -> list[dict]:
    return [dict(zip(result["columns"], row)) for row in result["rows"]]


def test_report_and_replay_queries(store: Client) -> None:
    _seed(store)
    window = {"since": T0.isoformat(), "until": UNTIL.isoformat()}
    [totals] = _rows(run_query(store, "report_totals", window))
    assert (totals["decisions"], totals["active_decisions"]) == (2, 2)        # the two bans
    in_force = {r["id"]: bool(r["in_force"]) for r in _rows(run_query(store, "report_decisions", window))}
    assert in_force["ban-1"] and in_force["allow-1"] and in_force["ban-2"]    # the ban is not hidden
    assert not in_force["allow-net"]                                          # ended by its deletion record
    live = {r["id"] for r in _rows(run_query(store, "decisions_between", window))}
    assert live == {"ban-1", "ban-2"}                                         # replay compares decisions only


def test_abuse_dashboard_queries(store: Client) -> None:
    _seed(store)
    ctx = QueryContext(UNTIL - timedelta(hours=2), UNTIL, 60)

    def rows(name: str) -> list[dict]:
        result = store.query(expand(panels.get(name).sql, ctx))
        return [dict(zip(result.column_names, row)) for row in result.result_rows]
    active = {r["id"]: r["action"] for r in rows("abuse_active_decisions")}
    assert active == {"ban-1": "ban", "allow-1": "allow", "ban-2": "ban"}
    [totals] = rows("abuse_totals")
    assert totals["active_decisions"] == 2
