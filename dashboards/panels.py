r"""Every panel's, variable's and alert rule's SQL, named and kept in this one module.

A :class:`PanelQuery` is ClickHouse SQL for Grafana's ClickHouse plugin, with
the plugin's macros (``$__timeFilter(ts)``, ``$__timeInterval(ts)``,
``$__fromTime``, ``$__toTime``, ``$__interval_s``; see :mod:`dashboards.macros`)
and Grafana template variables (``${series:singlequote}``), plus what the panel
expects back: the ordered columns and the role of each (:class:`Col`). The
dashboard modules refer to queries by name; the tests run every one of them
against the real schema in chDB and check the declared columns and roles.

Conventions:

* Tables are read with ``FINAL``: the tables are ReplacingMergeTree and the sink
  is at-least-once, so a redelivered row must not count twice (see
  ``storage/migrations``).
* Trend panels (rates, status mix, p95 per route, latency baselines) read the
  per-minute rollups ``requests_per_minute`` / ``detections_per_minute``
  (migrations 005, 006) instead of every request: cheap over days, but a
  request batch redelivered after a worker crash counts twice there (a
  materialized view sees every insert). Exact figures (totals, top offenders,
  alert rules) stay on ``requests FINAL``. Rollup queries declare
  ``min_interval="1m"``: Grafana never asks them for finer buckets than the
  rollup holds. :data:`ROLLUP_RANGE` selects the minutes of the range
  (the minute the range starts in included).
* Time series return ``time`` first, sorted by time, in long format (label
  columns, then values); the plugin turns long frames into one series per label.
* ``client_ip`` is IPv6 with IPv4 stored IPv4-mapped: :data:`IP_TEXT` shows
  IPv4 clients as plain ``a.b.c.d``; :data:`PREFIX_TEXT` is the client's /24
  (IPv4) or /64 (IPv6) in the same text form as ``prefix`` decisions.
* Aliases never shadow a column that the WHERE clause filters on: ClickHouse
  resolves names in WHERE to SELECT aliases first (``assumeNotNull(x) AS x``
  would turn ``x IS NOT NULL`` into "always true").
* A route is shown as a *series* ``"METHOD /template"``, the key of the latency
  detector.
* Alert queries return exactly one numeric column (string columns become alert
  labels): Grafana's server-side expressions turn such a table into one number
  per label set.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Literal

from dashboards.clickhouse import Format

Role = Literal["time", "timestamp", "value", "label", "country"]


@dataclass(frozen=True)
class Col:
    """A result column and its role: ``time`` (the x axis of a time series),
    ``timestamp`` (a date-time shown in a table), ``value`` (numeric), ``label``
    (text) or ``country`` (ISO 3166-1 alpha-2 code, looked up by the geomap)."""

    name: str
    role: Role


def _cols(spec: str) -> tuple[Col, ...]:
    # "time:time series:label p95_ms:value" -> (Col("time","time"), ...)
    return tuple(Col(*item.split(":")) for item in spec.split())  # type: ignore[arg-type]


@dataclass(frozen=True)
class PanelQuery:
    """Named SQL for one panel target, variable or alert rule, and the columns it returns."""

    name: str
    format: Format
    sql: str
    columns: tuple[Col, ...]
    description: str = ""
    #: Smallest bucket Grafana may ask for (the panel's "min interval"), e.g. ``"1m"``.
    min_interval: str | None = None

    def __post_init__(self) -> None:
        # Stored dedented, so the SQL reads the same in the JSON as in this file.
        object.__setattr__(self, "sql", textwrap.dedent(self.sql).strip())

    def names(self, role: Role | None = None) -> list[str]:
        """Column names, all or only those with ``role``."""
        return [c.name for c in self.columns if role is None or c.role == role]


#: A client address as text: IPv4 clients (stored IPv4-mapped) as ``a.b.c.d``.
IP_TEXT = r"replaceRegexpOne(toString(client_ip), '^::ffff:([0-9.]+)$', '\\1')"
#: The client's network as text: ``a.b.c.0/24`` for IPv4, ``x:x:x:x::/64`` for IPv6.
PREFIX_TEXT = (r"if(match(toString(client_ip), '^::ffff:[0-9.]+$'), "
               r"concat(replaceRegexpOne(cutIPv6(client_ip, 0, 1), '^::ffff:', ''), '/24'), "
               r"concat(cutIPv6(client_ip, 8, 0), '/64'))")
#: A request that looks like abuse: refused credentials, a failed login, a block or a limit.
SUSPICIOUS = "(status IN (401, 403, 429) OR login = 'failure')"

# The latest decision per scope:value and whether it is in force at the end of the
# dashboard's range. A later decision for the same key replaces the earlier one
# (decision protocol). The sink does not store tombstones: `gatewatch decisions delete`
# also publishes a deletion record (gatewatch.decision_feed.lift), a decision whose
# expires_at equals its created_at, so a deleted decision's key ends with a row that is
# never in force. Allow entries (action 'allow', `gatewatch allowlist`) have keys of their
# own (allow:scope:value): the latest allow entry and the latest decision of a value are
# kept apart.
_LATEST_DECISIONS = """
        SELECT id, scope, value, action, detector, reason, origin, created_at, expires_at
        FROM decisions FINAL
        WHERE created_at <= $__toTime
        ORDER BY created_at DESC, id DESC
        LIMIT 1 BY scope, value, action = 'allow'"""

_TS, _TABLE = Format.TIME_SERIES, Format.TABLE
#: The rollups' minutes in the dashboard's range.
ROLLUP_RANGE = "minute >= toStartOfMinute($__fromTime) AND minute <= $__toTime"
#: p95 (ms) of a rollup group: the third of the levels the rollup's quantile state is built with.
ROLLUP_P95 = "quantilesMerge(0.5, 0.9, 0.95, 0.99)(latency_ms)[3]"
_MINUTE = "1m"

_QUERIES: list[PanelQuery] = [
    # ---------------------------------------------------------------- Overview
    PanelQuery(
        "overview_totals", _TABLE, description="Totals over the range (stat panel).",
        columns=_cols("requests:value blocked:value rate_limited:value auth_failures:value "
                      "server_errors:value"),
        sql="""
        SELECT count() AS requests,
               countIf(answered_by = 'decision') AS blocked,
               countIf(answered_by = 'rate_limit') AS rate_limited,
               countIf(auth IN ('missing', 'invalid')) AS auth_failures,
               countIf(status >= 500) AS server_errors
        FROM requests FINAL
        WHERE $__timeFilter(ts)
        """),
    PanelQuery(
        "overview_traffic", _TS, description="Requests per second by who answered them.",
        columns=_cols("time:time answered_by:label requests_per_s:value"), min_interval=_MINUTE,
        sql=f"""
        SELECT $__timeInterval(minute) AS time, answered_by, sum(requests) / $__interval_s AS requests_per_s
        FROM requests_per_minute
        WHERE {ROLLUP_RANGE}
        GROUP BY time, answered_by
        ORDER BY time, answered_by
        """),
    PanelQuery(
        "overview_status_mix", _TS, description="Requests per status class (2xx, 4xx, ...).",
        columns=_cols("time:time status_class:label requests:value"), min_interval=_MINUTE,
        sql=f"""
        SELECT time, status_class, requests
        FROM (
            SELECT $__timeInterval(minute) AS time,
                   arrayJoin([('1xx', sum(status_1xx)), ('2xx', sum(status_2xx)), ('3xx', sum(status_3xx)),
                              ('4xx', sum(status_4xx)), ('5xx', sum(status_5xx))]) AS class_count,
                   class_count.1 AS status_class, class_count.2 AS requests
            FROM requests_per_minute
            WHERE {ROLLUP_RANGE}
            GROUP BY time
        )
        WHERE requests > 0
        ORDER BY time, status_class
        """),
    PanelQuery(
        "overview_denials", _TS, description="401, 403 and 429 answers over time.",
        columns=_cols("time:time unauthorized_401:value forbidden_403:value too_many_429:value"),
        min_interval=_MINUTE,
        sql=f"""
        SELECT $__timeInterval(minute) AS time,
               sum(status_401) AS unauthorized_401,
               sum(status_403) AS forbidden_403,
               sum(status_429) AS too_many_429
        FROM requests_per_minute
        WHERE {ROLLUP_RANGE}
        GROUP BY time
        ORDER BY time
        """),
    PanelQuery(
        "overview_p95_by_route", _TS, description="p95 upstream latency per route (ms).",
        columns=_cols("time:time series:label p95_ms:value"), min_interval=_MINUTE,
        sql=f"""
        SELECT $__timeInterval(minute) AS time, concat(method, ' ', route) AS series,
               {ROLLUP_P95} AS p95_ms
        FROM requests_per_minute
        WHERE {ROLLUP_RANGE} AND answered_by = 'upstream'
        GROUP BY time, series
        ORDER BY time, series
        """),
    PanelQuery(
        "overview_routes", _TABLE, description="Busiest routes: volume, refusals, errors, p95.",
        columns=_cols("series:label requests:value denied:value server_errors:value p95_ms:value"),
        sql=f"""
        SELECT concat(method, ' ', route) AS series, sum(requests) AS requests,
               sum(status_401) + sum(status_403) + sum(status_429) AS denied,
               sum(status_5xx) AS server_errors,
               quantilesMergeIf(0.5, 0.9, 0.95, 0.99)(latency_ms, answered_by = 'upstream')[3] AS p95_ms
        FROM requests_per_minute
        WHERE {ROLLUP_RANGE}
        GROUP BY series
        ORDER BY requests DESC, series
        LIMIT 20
        """),
    # ------------------------------------------------------------------- Abuse
    PanelQuery(
        "abuse_totals", _TABLE, description="Detections in range, decisions in force at its end.",
        columns=_cols("detections:value offenders:value active_decisions:value"),
        sql=f"""
        SELECT
            (SELECT uniqExact(detection_id) FROM detections FINAL WHERE $__timeFilter(ts)) AS detections,
            (SELECT uniqExact(scope, value) FROM detections FINAL
             WHERE $__timeFilter(ts) AND scope NOT IN ('route', 'global')) AS offenders,
            (SELECT count() FROM ({_LATEST_DECISIONS}
             ) WHERE expires_at > $__toTime AND action != 'allow') AS active_decisions
        """),
    PanelQuery(
        "abuse_detections_by_detector", _TS, description="Detections over time per detector.",
        columns=_cols("time:time detector:label detections:value"), min_interval=_MINUTE,
        # Exact despite redelivery: the rollup keeps uniqExact states of detection ids.
        sql=f"""
        SELECT $__timeInterval(minute) AS time, detector, uniqExactMerge(detections) AS detections
        FROM detections_per_minute
        WHERE {ROLLUP_RANGE}
        GROUP BY time, detector
        ORDER BY time, detector
        """),
    PanelQuery(
        "abuse_top_ips", _TABLE, description="Client IPs with the most suspicious requests.",
        columns=_cols("ip:label country:country asn:value requests:value suspicious:value "
                      "failed_logins:value blocked:value"),
        sql=f"""
        SELECT {IP_TEXT} AS ip, anyLast(country) AS country, anyLast(asn) AS asn,
               count() AS requests, countIf({SUSPICIOUS}) AS suspicious,
               countIf(login = 'failure') AS failed_logins, countIf(answered_by = 'decision') AS blocked
        FROM requests FINAL
        WHERE $__timeFilter(ts)
        GROUP BY client_ip
        HAVING suspicious > 0
        ORDER BY suspicious DESC, requests DESC, ip
        LIMIT 20
        """),
    PanelQuery(
        "abuse_top_prefixes", _TABLE, description="Networks (/24, /64) with the most suspicious requests.",
        columns=_cols("prefix:label ips:value requests:value suspicious:value failed_logins:value "
                      "blocked:value"),
        sql=f"""
        SELECT {PREFIX_TEXT} AS prefix, uniqExact(client_ip) AS ips, count() AS requests,
               countIf({SUSPICIOUS}) AS suspicious, countIf(login = 'failure') AS failed_logins,
               countIf(answered_by = 'decision') AS blocked
        FROM requests FINAL
        WHERE $__timeFilter(ts)
        GROUP BY prefix
        HAVING suspicious > 0
        ORDER BY suspicious DESC, requests DESC, prefix
        LIMIT 20
        """),
    PanelQuery(
        "abuse_top_asns", _TABLE, description="Autonomous systems with the most suspicious requests.",
        columns=_cols("asn:value country:country ips:value requests:value suspicious:value "
                      "blocked:value"),
        sql=f"""
        SELECT asn, topK(1)(country)[1] AS country, uniqExact(client_ip) AS ips,
               count() AS requests, countIf({SUSPICIOUS}) AS suspicious,
               countIf(answered_by = 'decision') AS blocked
        FROM requests FINAL
        WHERE $__timeFilter(ts) AND asn IS NOT NULL
        GROUP BY asn
        HAVING suspicious > 0
        ORDER BY suspicious DESC, requests DESC, asn
        LIMIT 20
        """),
    PanelQuery(
        "abuse_top_principals", _TABLE, description="API keys / token subjects with the most refusals.",
        columns=_cols("principal:label ips:value countries:value requests:value denied:value "
                      "blocked:value"),
        sql="""
        SELECT principal, uniqExact(client_ip) AS ips, uniqExact(country) AS countries,
               count() AS requests, countIf(status IN (401, 403, 429)) AS denied,
               countIf(answered_by = 'decision') AS blocked
        FROM requests FINAL
        WHERE $__timeFilter(ts) AND principal != ''
        GROUP BY principal
        ORDER BY denied DESC, requests DESC, principal
        LIMIT 20
        """),
    PanelQuery(
        "abuse_active_decisions", _TABLE,
        description="Decisions and allow entries (action 'allow') in force at the end of the range.",
        columns=_cols("created_at:timestamp expires_at:timestamp scope:label value:label action:label "
                      "detector:label origin:label reason:label id:label"),
        sql=f"""
        SELECT created_at, expires_at, scope, value, action, detector, origin, reason, id
        FROM ({_LATEST_DECISIONS}
        )
        WHERE expires_at > $__toTime
        ORDER BY created_at DESC, id
        LIMIT 200
        """),
    PanelQuery(
        "abuse_recent_detections", _TABLE, description="Latest detections in the range.",
        columns=_cols("ts:timestamp detector:label scope:label value:label severity:label score:value "
                      "summary:label"),
        sql="""
        SELECT ts, detector, scope, value, severity, score, summary
        FROM detections FINAL
        WHERE $__timeFilter(ts)
        ORDER BY ts DESC, detection_id
        LIMIT 100
        """),
    # --------------------------------------------------------------------- Geo
    PanelQuery(
        "geo_requests_by_country", _TABLE, description="Requests per client country (geomap lookup).",
        columns=_cols("country:country requests:value suspicious:value blocked:value clients:value"),
        sql=f"""
        SELECT country, count() AS requests, countIf({SUSPICIOUS}) AS suspicious,
               countIf(answered_by = 'decision') AS blocked, uniqExact(client_ip) AS clients
        FROM requests FINAL
        WHERE $__timeFilter(ts) AND country IS NOT NULL AND country != ''
        GROUP BY country
        ORDER BY requests DESC, country
        """),
    PanelQuery(
        "geo_detections_by_country", _TABLE,
        description=("Detections per country: the countries of each detection's sample requests "
                     "(any scope but route), or the value of a country-scoped detection."),
        columns=_cols("country:country detections:value"),
        # Samples precede their detection by up to a detector window: the request side
        # looks one hour further back than the range.
        sql="""
        SELECT country, uniqExact(detection_id) AS detections
        FROM (
            SELECT d.detection_id AS detection_id, assumeNotNull(r.country) AS country
            FROM (
                SELECT detection_id, arrayJoin(sample_event_ids) AS event_id
                FROM detections FINAL
                WHERE $__timeFilter(ts) AND scope NOT IN ('route', 'country')
            ) AS d
            INNER JOIN (
                SELECT event_id, country
                FROM requests FINAL
                WHERE ts >= $__fromTime - INTERVAL 1 HOUR AND ts <= $__toTime
                  AND country IS NOT NULL AND country != ''
            ) AS r ON d.event_id = r.event_id
            UNION ALL
            SELECT detection_id, value AS country
            FROM detections FINAL
            WHERE $__timeFilter(ts) AND scope = 'country'
        )
        GROUP BY country
        ORDER BY detections DESC, country
        """),
    # ----------------------------------------------------------------- Latency
    PanelQuery(
        "latency_series", _TABLE, description="Template variable: routes answered by the upstream.",
        columns=_cols("series:label"),
        sql=f"""
        SELECT DISTINCT concat(method, ' ', route) AS series
        FROM requests_per_minute
        WHERE {ROLLUP_RANGE} AND answered_by = 'upstream'
        ORDER BY series
        """),
    PanelQuery(
        "latency_p95_vs_baseline", _TS,
        description=("p95 per interval against its baseline: the median of the route's interval "
                     "p95s over the trailing hour (a regression must last ~30 min to become normal)."),
        columns=_cols("time:time series:label p95_ms:value baseline_p95_ms:value"), min_interval=_MINUTE,
        sql=f"""
        SELECT time, series, p95_ms, if(isFinite(baseline), baseline, NULL) AS baseline_p95_ms
        FROM (
            SELECT time, series, p95_ms,
                   quantileExact(0.5)(p95_ms) OVER (
                       PARTITION BY series ORDER BY toUInt32(time)
                       RANGE BETWEEN 3600 PRECEDING AND 1 PRECEDING) AS baseline
            FROM (
                SELECT $__timeInterval(minute) AS time, concat(method, ' ', route) AS series,
                       {ROLLUP_P95} AS p95_ms
                FROM requests_per_minute
                WHERE minute >= toStartOfMinute($__fromTime - INTERVAL 1 HOUR) AND minute <= $__toTime
                  AND answered_by = 'upstream'
                  AND concat(method, ' ', route) IN (${{series:singlequote}})
                GROUP BY time, series
            )
        )
        WHERE time >= $__fromTime
        ORDER BY time, series
        """),
    PanelQuery(
        "latency_change_by_route", _TABLE,
        description="p95 per route in the range against the same length of time just before it.",
        columns=_cols("series:label requests:value p95_ms:value previous_p95_ms:value ratio:value"),
        sql="""
        WITH toStartOfMinute($__fromTime) AS t0, $__toTime AS t1,
             t0 - toIntervalSecond(dateDiff('second', t0, t1)) AS t_prev
        SELECT concat(method, ' ', route) AS series,
               sumIf(requests, minute >= t0) AS requests,
               quantilesMergeIf(0.5, 0.9, 0.95, 0.99)(latency_ms, minute >= t0)[3] AS p95_ms,
               quantilesMergeIf(0.5, 0.9, 0.95, 0.99)(latency_ms, minute < t0)[3] AS previous_p95_ms,
               if(previous_p95_ms > 0, round(p95_ms / previous_p95_ms, 2), NULL) AS ratio
        FROM requests_per_minute
        WHERE minute >= t_prev AND minute <= t1 AND answered_by = 'upstream'
        GROUP BY series
        HAVING requests > 0
        ORDER BY ratio DESC, series
        """),
    PanelQuery(
        "latency_regressions", _TABLE, description="Latency-regression detections with their figures.",
        columns=_cols("ts:timestamp series:label state:label severity:label baseline_p95_ms:value "
                      "current_p95_ms:value summary:label"),
        sql="""
        SELECT ts, value AS series, JSONExtractString(evidence, 'state') AS state, severity,
               JSONExtractFloat(evidence, 'baseline_p95_ms') AS baseline_p95_ms,
               JSONExtractFloat(evidence, 'current_p95_ms') AS current_p95_ms, summary
        FROM detections FINAL
        WHERE $__timeFilter(ts) AND detector = 'latency_regression'
        ORDER BY ts DESC, detection_id
        LIMIT 100
        """),
    # -------------------------------------------------------------------- Auth
    PanelQuery(
        "auth_failures_by_reason", _TS,
        description="Refused credentials over time by the auth result (missing, invalid, unavailable).",
        columns=_cols("time:time auth:label requests:value"),
        sql="""
        SELECT $__timeInterval(ts) AS time, auth, count() AS requests
        FROM requests FINAL
        WHERE $__timeFilter(ts) AND auth IN ('missing', 'invalid', 'unavailable')
        GROUP BY time, auth
        ORDER BY time, auth
        """),
    PanelQuery(
        "auth_outcomes", _TABLE, description="Requests per auth result, answering party and status.",
        columns=_cols("auth:label answered_by:label status:value requests:value share_pct:value"),
        sql="""
        SELECT auth, answered_by, status, count() AS requests,
               round(100 * requests / sum(requests) OVER (), 2) AS share_pct
        FROM requests FINAL
        WHERE $__timeFilter(ts)
        GROUP BY auth, answered_by, status
        ORDER BY requests DESC, auth, answered_by, status
        """),
    PanelQuery(
        "auth_logins", _TS, description="Login attempts by outcome on the configured login routes.",
        columns=_cols("time:time outcome:label attempts:value"),
        sql="""
        SELECT $__timeInterval(ts) AS time, toString(assumeNotNull(login)) AS outcome, count() AS attempts
        FROM requests FINAL
        WHERE $__timeFilter(ts) AND login IS NOT NULL
        GROUP BY time, outcome
        ORDER BY time, outcome
        """),
    PanelQuery(
        "auth_failures_by_route", _TABLE, description="Refused credentials and failed logins per route.",
        columns=_cols("series:label missing:value invalid:value unavailable:value failed_logins:value"),
        sql="""
        SELECT concat(method, ' ', route) AS series,
               countIf(auth = 'missing') AS missing, countIf(auth = 'invalid') AS invalid,
               countIf(auth = 'unavailable') AS unavailable, countIf(login = 'failure') AS failed_logins
        FROM requests FINAL
        WHERE $__timeFilter(ts)
        GROUP BY series
        HAVING missing + invalid + unavailable + failed_logins > 0
        ORDER BY missing + invalid + failed_logins DESC, series
        """),
    PanelQuery(
        "auth_top_failing_clients", _TABLE, description="Clients with the most refused credentials.",
        columns=_cols("ip:label country:country principals:value missing:value invalid:value "
                      "failed_logins:value"),
        sql=f"""
        SELECT {IP_TEXT} AS ip, anyLast(country) AS country, uniqExactIf(principal, principal != '') AS principals,
               countIf(auth = 'missing') AS missing, countIf(auth = 'invalid') AS invalid,
               countIf(login = 'failure') AS failed_logins
        FROM requests FINAL
        WHERE $__timeFilter(ts)
        GROUP BY client_ip
        HAVING missing + invalid + failed_logins > 0
        ORDER BY missing + invalid + failed_logins DESC, ip
        LIMIT 20
        """),
    # ------------------------------------------------------------------ Alerts
    PanelQuery(
        "alert_credential_stuffing", _TABLE,
        description="Alert: credential-stuffing detections per scope in the evaluated window.",
        columns=_cols("scope:label detections:value"),
        sql="""
        SELECT scope, uniqExact(detection_id) AS detections
        FROM detections FINAL
        WHERE $__timeFilter(ts) AND detector = 'credential_stuffing'
        GROUP BY scope
        ORDER BY scope
        """),
    PanelQuery(
        "alert_blocked_spike", _TABLE,
        description=("Alert: requests blocked by decisions in the last 5 minutes of the window, "
                     "as a multiple of the average 5 minutes before them (floor 10)."),
        columns=_cols("spike_ratio:value"),
        sql="""
        SELECT countIf(ts > $__toTime - INTERVAL 5 MINUTE) /
               greatest(countIf(ts <= $__toTime - INTERVAL 5 MINUTE)
                        / greatest(dateDiff('second', $__fromTime, $__toTime) / 300 - 1, 1), 10)
               AS spike_ratio
        FROM requests FINAL
        WHERE $__timeFilter(ts) AND answered_by = 'decision'
        """),
    PanelQuery(
        "alert_latency_regression", _TABLE,
        description="Alert: routes with a latency-regression detection (not a recovery) in the window.",
        columns=_cols("series:label regressions:value"),
        sql="""
        SELECT value AS series, uniqExact(detection_id) AS regressions
        FROM detections FINAL
        WHERE $__timeFilter(ts) AND detector = 'latency_regression'
          AND JSONExtractString(evidence, 'state') = 'regression'
        GROUP BY series
        ORDER BY series
        """),
]

#: Every named query, by name.
QUERIES: dict[str, PanelQuery] = {q.name: q for q in _QUERIES}
if len(QUERIES) != len(_QUERIES):  # pragma: no cover - a typo in this file
    raise RuntimeError("two panel queries share a name")


def get(name: str) -> PanelQuery:
    """The query named ``name``; ``KeyError`` with the known names if there is none."""
    try:
        return QUERIES[name]
    except KeyError:
        raise KeyError(f"no panel query {name!r}; known: {', '.join(sorted(QUERIES))}") from None
