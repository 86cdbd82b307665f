"""The macro expander against the ClickHouse plugin's own expansions (pkg/macros/macros.go)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from dashboards.macros import MacroError, QueryContext, expand, expand_macros, expand_variables

FROM = datetime(2025, 3, 1, 10, 0, 0, 123_000, tzinfo=timezone.utc)  # 1740823200.123
TO = FROM + timedelta(hours=2)
CTX = QueryContext(FROM, TO, interval_s=30.9)


@pytest.mark.parametrize("sql, want", [
    ("$__fromTime", "toDateTime(1740823200)"),
    ("$__toTime", "toDateTime(1740830400)"),
    ("$__fromTime_ms", "fromUnixTimestamp64Milli(1740823200123)"),
    ("$__toTime_ms", "fromUnixTimestamp64Milli(1740830400123)"),
    ("$__timeFilter(ts)", "ts >= toDateTime(1740823200) AND ts <= toDateTime(1740830400)"),
    ("$__timeFilter_ms(ts)",
     "ts >= fromUnixTimestamp64Milli(1740823200123) AND ts <= fromUnixTimestamp64Milli(1740830400123)"),
    ("$__dateFilter(d)", "d >= toDate('2025-03-01') AND d <= toDate('2025-03-01')"),
    ("$__dateTimeFilter(d, t)", "(d >= toDate('2025-03-01') AND d <= toDate('2025-03-01')) AND "
                                "(t >= toDateTime(1740823200) AND t <= toDateTime(1740830400))"),
    ("$__dt(d,t)", "(d >= toDate('2025-03-01') AND d <= toDate('2025-03-01')) AND "
                   "(t >= toDateTime(1740823200) AND t <= toDateTime(1740830400))"),
    ("$__timeInterval(ts)", "toStartOfInterval(toDateTime(ts), INTERVAL 30 second)"),
    ("$__timeInterval_ms(ts)", "toStartOfInterval(toDateTime64(ts, 3), INTERVAL 30900 millisecond)"),
    ("$__interval_s", "30"),
    ("$__timeInterval(toDateTime(ts, 'UTC'))",
     "toStartOfInterval(toDateTime(toDateTime(ts, 'UTC')), INTERVAL 30 second)"),
])
def test_macros_expand_like_the_plugin(sql: str, want: str) -> None:
    assert expand_macros(sql, CTX) == want


def test_interval_is_at_least_one_second() -> None:
    ctx = QueryContext(FROM, TO, interval_s=0.2)
    assert expand_macros("$__interval_s $__timeInterval(ts)", ctx) == \
        "1 toStartOfInterval(toDateTime(ts), INTERVAL 1 second)"


@pytest.mark.parametrize("sql, error", [
    ("$__nope(ts)", "unknown macro"),
    ("$__timeFilter(a, b)", "expected 1 argument"),
    ("$__timeFilter", "expected 1 argument"),
    ("$__dt(a)", "expected 2 arguments"),
    ("$__timeFilter(ts", "unbalanced"),
])
def test_bad_macros_fail_loudly(sql: str, error: str) -> None:
    with pytest.raises(MacroError, match=error):
        expand_macros(sql, CTX)


def test_variables_are_formatted_like_grafana() -> None:
    values = {"series": ["GET /a", "POST /b's"], "one": ["x"]}
    assert expand_variables("IN (${series:singlequote})", values) == "IN ('GET /a','POST /b\\'s')"
    assert expand_variables('${series:doublequote}', values) == '"GET /a","POST /b\'s"'
    assert expand_variables("${series:csv}", values) == "GET /a,POST /b's"
    assert expand_variables("$one ${one} ${one:raw}", values) == "x x x"
    assert expand_variables("$__timeFilter(ts)", values) == "$__timeFilter(ts)"  # left to the macros
    with pytest.raises(MacroError, match="2 values"):
        expand_variables("$series", values)
    with pytest.raises(MacroError, match="no value"):
        expand_variables("${missing:csv}", values)


def test_expand_refuses_leftovers_but_not_regex_anchors() -> None:
    sql = r"SELECT match(x, '^a$') FROM t WHERE $__timeFilter(ts)"
    assert expand(sql, CTX).startswith("SELECT match(x, '^a$') FROM t WHERE ts >= toDateTime(")
    with pytest.raises(MacroError):
        expand("SELECT $$oops", CTX)


def test_context_needs_aware_ordered_times() -> None:
    with pytest.raises(ValueError):
        QueryContext(FROM.replace(tzinfo=None), TO)
    with pytest.raises(ValueError):
        QueryContext(TO, FROM)
