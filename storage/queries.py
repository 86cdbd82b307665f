"""Named read queries, kept in one place so the CLI, the demo, dashboards and
tests reuse them instead of writing SQL again.

:data:`QUERIES` maps a name to a :class:`NamedQuery` (SQL with ClickHouse
server-side parameters such as ``{ip:IPv6}``, and a typed spec per parameter).
:func:`run_query` checks the parameters, runs the SQL and returns
``{"columns": [...], "rows": [[...], ...]}`` with JSON-safe values:
timestamps as ISO 8601 UTC text, IPv4-mapped addresses as plain IPv4 text,
``evidence`` columns as the stored JSON text.

Queries that count rows read with ``FINAL`` (or count distinct ids) so that a
redelivered record counts once; ``event_id_counts`` deliberately reads the
physical rows to show duplicates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from clickhouse_connect.driver.client import Client


class UnknownQuery(KeyError):
    """No query has that name."""


class QueryParamError(ValueError):
    """A parameter is missing, unknown or has a bad value."""


def _ip(raw: Any) -> str:
    try:
        return str(ipaddress.ip_address(str(raw).strip()))
    except ValueError:
        raise QueryParamError(f"not an IP address: {raw!r}") from None


def _limit(raw: Any) -> int:
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise QueryParamError(f"not an integer: {raw!r}") from None
    if not 1 <= value <= 10_000:
        raise QueryParamError(f"limit {value} out of range 1..10000")
    return value


@dataclass(frozen=True)
class Param:
    """A query parameter: ``parse`` turns the raw value (e.g. URL text) into the
    bound value or raises :class:`QueryParamError`; ``default`` None means required."""

    parse: Callable[[Any], Any]
    default: Any = None
    help: str = ""


@dataclass(frozen=True)
class NamedQuery:
    """SQL, the names of the columns it returns, its typed parameters and a description.

    ``columns`` is declared because chDB returns no column names for an empty result.
    """

    sql: str
    columns: tuple[str, ...]
    description: str
    params: Mapping[str, Param] = field(default_factory=dict)


def _text(raw: Any) -> str:
    value = str(raw).strip()
    if not value or len(value) > 512:
        raise QueryParamError("expected 1..512 characters")
    return value


def _ids(raw: Any) -> list[str]:
    ids = [i.strip() for i in (raw if isinstance(raw, (list, tuple)) else str(raw).split(",")) if i.strip()]
    if not 1 <= len(ids) <= 1000 or any(len(i) > 128 for i in ids):
        raise QueryParamError("expected 1..1000 comma-separated ids")
    return ids


def _when(raw: Any) -> dt.datetime:
    if isinstance(raw, dt.datetime):
        value = raw
    else:
        try:
            value = dt.datetime.fromisoformat(str(raw).strip().replace("Z", "+00:00"))
        except ValueError:
            raise QueryParamError(f"not an ISO 8601 time: {raw!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).replace(tzinfo=None)  # naive UTC for DateTime64(3, 'UTC')


def _rows(raw: Any) -> int:
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise QueryParamError(f"not an integer: {raw!r}") from None
    if not 1 <= value <= 5_000_000:
        raise QueryParamError(f"limit {value} out of range 1..5000000")
    return value


_IP = Param(_ip, help="client IP address, IPv4 or IPv6")
_SINCE = Param(_when, help="start time, ISO 8601 (UTC if no offset)")
_UNTIL = Param(_when, help="end time (exclusive), ISO 8601")
_TARGET = Param(_text, help="a decision id, detection id, or a scope value (IP, key id, ...)")
_IDS = Param(_ids, help="comma-separated ids (at most 1000)")
_LIMIT = Param(_limit, default=20, help="number of rows, 1..10000 (default 20)")

_REQUEST_EVENT_COLUMNS = ("event_id", "ts", "client_ip", "method", "host", "path", "route", "status",
                          "latency_ms", "bytes_in", "bytes_out", "principal", "auth", "answered_by",
                          "user_agent", "login", "username_hash", "decision_id", "asn", "country")


def _request_events(description: str, condition: str = "1") -> NamedQuery:
    """Stored requests with since <= ts < until and SQL ``condition``, in event-time order,
    as the RequestEvent fields (at most ``limit`` rows)."""
    return NamedQuery(
        columns=_REQUEST_EVENT_COLUMNS, description=description,
        params={"since": _SINCE, "until": _UNTIL, "limit": Param(_rows, default=1_000_000,
                                                                   help="rows at most (default 1e6)")},
        sql=f"""
            SELECT {", ".join(_REQUEST_EVENT_COLUMNS)}
            FROM requests FINAL
            WHERE ts >= {{since:DateTime64(3, 'UTC')}} AND ts < {{until:DateTime64(3, 'UTC')}}
              AND ({condition})
            ORDER BY ts, event_id
            LIMIT {{limit:UInt32}}
        """,
    )


QUERIES: dict[str, NamedQuery] = {
    "table_counts": NamedQuery(
        columns=("table", "rows"),
        description="Rows per table, deduplicated by id. Columns: table, rows.",
        sql="""
            SELECT table, rows FROM (
                SELECT 'requests' AS table, uniqExact(event_id) AS rows FROM requests
                UNION ALL SELECT 'detections', uniqExact(detection_id) FROM detections
                UNION ALL SELECT 'decisions', uniqExact(id) FROM decisions
            ) ORDER BY table
        """,
    ),
    "ip_timeline": NamedQuery(
        columns=("requests", "first_ts", "first_blocked_ts", "requests_before_block", "blocked"),
        description=("One row for an IP: requests, first_ts, first_blocked_ts (first request "
                     "answered_by='decision', null if none), requests_before_block (all "
                     "requests when never blocked), blocked (answered_by='decision')."),
        params={"ip": _IP},
        sql="""
            WITH
                {ip:IPv6} AS target,
                (SELECT minIfOrNull(ts, answered_by = 'decision')
                 FROM requests FINAL WHERE client_ip = target) AS first_block
            SELECT
                count() AS requests,
                minOrNull(ts) AS first_ts,
                first_block AS first_blocked_ts,
                countIf(first_block IS NULL OR ts < first_block) AS requests_before_block,
                countIf(answered_by = 'decision') AS blocked
            FROM requests FINAL
            WHERE client_ip = target
        """,
    ),
    "blocked_excluding_ip": NamedQuery(
        columns=("blocked", "clients"),
        description=("Requests answered_by='decision' from any client but ip. "
                     "Columns: blocked, clients (distinct client IPs)."),
        params={"ip": _IP},
        sql="""
            SELECT count() AS blocked, uniqExact(client_ip) AS clients
            FROM requests FINAL
            WHERE answered_by = 'decision' AND client_ip != {ip:IPv6}
        """,
    ),
    "event_id_counts": NamedQuery(
        columns=("event_id", "count"),
        description=("Physical rows per event_id (no FINAL): a count above 1 is a stored "
                     "duplicate. Columns: event_id, count."),
        sql="""
            SELECT event_id, count() AS count
            FROM requests
            GROUP BY event_id
            ORDER BY event_id
        """,
    ),
    "recent_decisions": NamedQuery(
        columns=("id", "created_at", "expires_at", "scope", "value", "action", "reason", "detector",
                 "origin", "detection_id", "evidence"),
        description="Latest decisions first (deduplicated by id).",
        params={"limit": _LIMIT},
        sql="""
            SELECT id, created_at, expires_at, scope, value, action, reason, detector,
                   origin, detection_id, evidence
            FROM decisions FINAL
            ORDER BY created_at DESC, id
            LIMIT {limit:UInt32}
        """,
    ),
    "detection_counts": NamedQuery(
        columns=("detector", "scope", "detections", "last_ts"),
        description=("Detections per detector and scope (deduplicated by detection_id). "
                     "Columns: detector, scope, detections, last_ts."),
        sql="""
            SELECT detector, scope, uniqExact(detection_id) AS detections, max(ts) AS last_ts
            FROM detections FINAL
            GROUP BY detector, scope
            ORDER BY detector, scope
        """,
    ),
    "decisions_for": NamedQuery(
        columns=("id", "created_at", "expires_at", "scope", "value", "action", "reason", "detector",
                 "origin", "detection_id", "evidence"),
        description=("Decisions (active or expired) whose id, detection id or value is target, "
                     "newest first (for `gatewatch explain`)."),
        params={"target": _TARGET, "limit": _LIMIT},
        sql="""
            SELECT id, created_at, expires_at, scope, value, action, reason, detector,
                   origin, detection_id, evidence
            FROM decisions FINAL
            WHERE id = {target:String} OR value = {target:String} OR detection_id = {target:String}
            ORDER BY created_at DESC, id
            LIMIT {limit:UInt32}
        """,
    ),
    "detections_for": NamedQuery(
        columns=("detection_id", "ts", "detector", "scope", "value", "severity", "score", "summary",
                 "evidence", "sample_event_ids"),
        description="Detections whose id or value is target, newest first (for `gatewatch explain`).",
        params={"target": _TARGET, "limit": _LIMIT},
        sql="""
            SELECT detection_id, ts, detector, scope, value, severity, score, summary,
                   evidence, sample_event_ids
            FROM detections FINAL
            WHERE detection_id = {target:String} OR value = {target:String}
            ORDER BY ts DESC, detection_id
            LIMIT {limit:UInt32}
        """,
    ),
    "requests_by_ids": NamedQuery(
        columns=("event_id", "ts", "client_ip", "method", "path", "route", "status", "principal",
                 "auth", "answered_by", "login", "country", "decision_id"),
        description="Stored requests with the given event ids, oldest first (evidence samples).",
        params={"ids": _IDS},
        sql="""
            SELECT event_id, ts, client_ip, method, path, route, status, principal,
                   auth, answered_by, login, country, decision_id
            FROM requests FINAL
            WHERE event_id IN {ids:Array(String)}
            ORDER BY ts, event_id
        """,
    ),
    "requests_between": _request_events(
        "Every stored request with since <= ts < until, in event-time order, with the "
        "RequestEvent fields (for `gatewatch replay`)."),
    "principal_requests_between": _request_events(
        "Upstream answers to authenticated principals with since <= ts < until, in event-time "
        "order, with the RequestEvent fields (for `gatewatch train`: the behaviour model's input).",
        "answered_by = 'upstream' AND principal != ''"),
    "geo_history": NamedQuery(
        columns=("principal", "first_s", "located", "countries"),
        description=("Per principal, its upstream-answered requests with a country and since <= ts < "
                     "until: first_s (epoch s of the first), located (how many; no FINAL, so a row "
                     "stored twice counts twice), countries (distinct ISO codes). The geo detector's "
                     "history after a restart (streams/detect_geo.py)."),
        params={"since": _SINCE, "until": _UNTIL},
        sql="""
            SELECT principal, toUnixTimestamp64Milli(min(ts)) / 1000 AS first_s, count() AS located,
                   arraySort(groupUniqArray(assumeNotNull(country))) AS countries
            FROM requests
            WHERE ts >= {since:DateTime64(3, 'UTC')} AND ts < {until:DateTime64(3, 'UTC')}
              AND principal != '' AND answered_by = 'upstream' AND country IS NOT NULL AND country != ''
            GROUP BY principal
            ORDER BY principal
        """,
    ),
    "bola_given": NamedQuery(
        columns=("scope", "value", "route", "path", "last_s"),
        description=("Per caller (scope 'principal' and the principal, or 'ip' and the client address "
                     "of an anonymous caller, as IPv6 text: IPv4 clients IPv4-mapped), the distinct "
                     "paths of its 2xx upstream answers on routes with a {parameter}, outside login "
                     "attempts, with since <= ts < until: last_s (epoch s of the latest), the `known` "
                     "(default 10,000) latest paths of each caller. The ids the BOLA detector restores "
                     "as given after a restart (streams/detect_bola.py)."),
        params={"since": _SINCE, "until": _UNTIL,
                "known": Param(_rows, default=10_000, help="paths per caller, 1..5000000")},
        sql="""
            SELECT if(principal != '', 'principal', 'ip') AS scope,
                   if(principal != '', principal, IPv6NumToString(client_ip)) AS value,
                   route, path, toUnixTimestamp64Milli(max(ts)) / 1000 AS last_s
            FROM requests
            WHERE ts >= {since:DateTime64(3, 'UTC')} AND ts < {until:DateTime64(3, 'UTC')}
              AND login IS NULL AND answered_by = 'upstream'
              AND status >= 200 AND status < 300 AND position(route, '{') > 0
            GROUP BY scope, value, route, path
            ORDER BY scope, value, last_s DESC, path
            LIMIT {known:UInt32} BY scope, value
        """,
    ),
    "latency_raised": NamedQuery(
        columns=("series", "raised_at", "severity", "baseline_p95_ms", "baseline_p50_ms"),
        description=("Latency series whose last stored latency_regression detection with since <= ts < "
                     "until is a regression (no recovery after it): when, its severity and baseline. "
                     "The latency detector's raised routes after a restart (streams/detect_latency.py)."),
        params={"since": _SINCE, "until": _UNTIL},
        sql="""
            SELECT value AS series, max(ts) AS raised_at, argMax(severity, ts) AS severity,
                   JSONExtractFloat(argMax(evidence, ts), 'baseline_p95_ms') AS baseline_p95_ms,
                   JSONExtractFloat(argMax(evidence, ts), 'baseline_p50_ms') AS baseline_p50_ms
            FROM detections
            WHERE detector = 'latency_regression' AND scope = 'route'
              AND ts >= {since:DateTime64(3, 'UTC')} AND ts < {until:DateTime64(3, 'UTC')}
            GROUP BY value
            HAVING JSONExtractString(argMax(evidence, ts), 'state') = 'regression'
            ORDER BY series
        """,
    ),
    "latency_windows": NamedQuery(
        columns=("series", "start_s", "samples", "p50_ms", "p95_ms"),
        description=("Per latency series ('METHOD /route') and window of `window_ms` (default 60,000) "
                     "aligned on the epoch, with since <= ts < until: its start (epoch s), the upstream "
                     "answers' count and their exact p50 and p95 latency (ms, linear interpolation, as "
                     "numpy's percentile; redelivered duplicates counted once). The latency detector's "
                     "windows before its replay after a restart (streams/detect_latency.py). At most 10 s "
                     "of work: the embedded store runs one call at a time, so a longer one would hold "
                     "back the inserts."),
        params={"since": _SINCE, "until": _UNTIL,
                "window_ms": Param(_rows, default=60_000, help="window length in ms, 1..5000000")},
        sql="""
            SELECT concat(method, ' ', route) AS series,
                   intDiv(toUnixTimestamp64Milli(ts), {window_ms:UInt32}) * {window_ms:UInt32} / 1000 AS start_s,
                   count() AS samples,
                   quantileExactInclusive(0.5)(latency_ms) AS p50_ms,
                   quantileExactInclusive(0.95)(latency_ms) AS p95_ms
            FROM requests FINAL
            WHERE ts >= {since:DateTime64(3, 'UTC')} AND ts < {until:DateTime64(3, 'UTC')}
              AND answered_by = 'upstream' AND latency_ms >= 0 AND isFinite(latency_ms)
            GROUP BY series, start_s
            ORDER BY series, start_s
            SETTINGS max_execution_time = 10
        """,
    ),
    "decisions_between": NamedQuery(
        columns=("id", "created_at", "expires_at", "scope", "value", "action", "reason", "detector",
                 "origin", "detection_id", "evidence"),
        description=("Decisions created with since <= created_at < until (live, for `gatewatch replay`); "
                     "deletion records (no lifetime, see gatewatch.decision_feed.lift) and allow "
                     "entries left out."),
        params={"since": _SINCE, "until": _UNTIL},
        sql="""
            SELECT id, created_at, expires_at, scope, value, action, reason, detector,
                   origin, detection_id, evidence
            FROM decisions FINAL
            WHERE created_at >= {since:DateTime64(3, 'UTC')} AND created_at < {until:DateTime64(3, 'UTC')}
              AND expires_at > created_at AND action != 'allow'
            ORDER BY created_at, id
        """,
    ),
    "recent_detections": NamedQuery(
        columns=("detection_id", "ts", "detector", "scope", "value", "severity", "score", "summary",
                 "evidence", "sample_event_ids"),
        description="Latest detections first (deduplicated by detection_id).",
        params={"limit": _LIMIT},
        sql="""
            SELECT detection_id, ts, detector, scope, value, severity, score, summary,
                   evidence, sample_event_ids
            FROM detections FINAL
            ORDER BY ts DESC, detection_id
            LIMIT {limit:UInt32}
        """,
    ),
}


# ------------------------------------------------------------------ gatewatch report
# The queries behind `gatewatch report` (gatewatch/report.py): one time window
# [since, until), time series in buckets of `step` seconds.


def _step(raw: Any) -> int:
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise QueryParamError(f"not an integer: {raw!r}") from None
    if not 1 <= value <= 7 * 86_400:
        raise QueryParamError(f"step {value} out of range 1..604800 seconds")
    return value


_STEP = Param(_step, default=300, help="bucket width in seconds, 1..604800 (default 300)")
_WINDOW = {"since": _SINCE, "until": _UNTIL}
_IN_WINDOW = "ts >= {since:DateTime64(3, 'UTC')} AND ts < {until:DateTime64(3, 'UTC')}"
_BUCKET = "toStartOfInterval(ts, toIntervalSecond({step:UInt32}))"
# The latest decision per scope:value created before the end of the window, and whether
# it is in force then (a later decision for the same key replaces the earlier one; a
# deletion record, gatewatch.decision_feed.lift, is a later decision with no lifetime).
# Allow entries (action 'allow') have keys of their own: kept apart from the decisions.
_LATEST_DECISIONS_AT_UNTIL = """
    SELECT id, scope, value, action, created_at, expires_at,
           expires_at > {until:DateTime64(3, 'UTC')} AS in_force
    FROM decisions FINAL
    WHERE created_at < {until:DateTime64(3, 'UTC')}
    ORDER BY created_at DESC, id DESC
    LIMIT 1 BY scope, value, action = 'allow'"""
_SUSPICIOUS = "status IN (401, 403, 429) OR login = 'failure'"
_OFFENDER_COUNTS = f"""uniqExact(client_ip), count(), countIf({_SUSPICIOUS}),
           countIf(login = 'failure'), countIf(answered_by = 'decision')
    FROM requests FINAL
    WHERE {_IN_WINDOW}"""

QUERIES.update({
    "report_totals": NamedQuery(
        columns=("requests", "clients", "blocked", "rate_limited", "auth_failures", "server_errors",
                 "failed_logins", "detections", "decisions", "active_decisions"),
        description=("Summary of a window: requests, distinct client IPs, blocked (answered_by="
                     "'decision'), rate_limited, auth_failures (auth missing/invalid), server_errors "
                     "(5xx), failed_logins; detections and decisions created in the window (deletion "
                     "records and allow entries left out); "
                     "active_decisions (latest per scope:value, in force at until; allow entries left out)."),
        params=_WINDOW,
        sql=f"""
            SELECT count() AS requests, uniqExact(client_ip) AS clients,
                   countIf(answered_by = 'decision') AS blocked,
                   countIf(answered_by = 'rate_limit') AS rate_limited,
                   countIf(auth IN ('missing', 'invalid')) AS auth_failures,
                   countIf(status >= 500) AS server_errors,
                   countIf(login = 'failure') AS failed_logins,
                   (SELECT uniqExact(detection_id) FROM detections FINAL WHERE {_IN_WINDOW}) AS detections,
                   (SELECT uniqExact(id) FROM decisions FINAL
                    WHERE created_at >= {{since:DateTime64(3, 'UTC')}}
                      AND created_at < {{until:DateTime64(3, 'UTC')}}
                      AND expires_at > created_at AND action != 'allow') AS decisions,
                   (SELECT countIf(in_force AND action != 'allow')
                    FROM ({_LATEST_DECISIONS_AT_UNTIL})) AS active_decisions
            FROM requests FINAL
            WHERE {_IN_WINDOW}
        """,
    ),
    "report_traffic": NamedQuery(
        columns=("time", "answered_by", "requests"),
        description="Requests per bucket (start time) and answering party (upstream, auth, rate_limit, decision, ...).",
        params={**_WINDOW, "step": _STEP},
        sql=f"""
            SELECT {_BUCKET} AS time, answered_by, count() AS requests
            FROM requests FINAL
            WHERE {_IN_WINDOW}
            GROUP BY time, answered_by
            ORDER BY time, answered_by
        """,
    ),
    "report_blocks": NamedQuery(
        columns=("time", "blocked_by", "requests"),
        description=("Requests blocked or throttled by a decision per bucket and kind of decision: "
                     "'<action> <scope> (<detector>)' from the stored decision, 'decision (not stored)' "
                     "when its id is unknown."),
        params={**_WINDOW, "step": _STEP},
        sql=f"""
            SELECT r.time AS time,
                   if(ifNull(d.id, '') = '', 'decision (not stored)',
                      concat(d.action, ' ', d.scope, ' (', if(d.detector = '', 'manual', d.detector), ')'))
                       AS blocked_by,
                   count() AS requests
            FROM (
                SELECT {_BUCKET} AS time, ifNull(decision_id, '') AS decision_id
                FROM requests FINAL
                WHERE {_IN_WINDOW} AND answered_by = 'decision'
            ) AS r
            LEFT JOIN (SELECT id, action, scope, detector FROM decisions FINAL) AS d
                ON r.decision_id = d.id
            GROUP BY time, blocked_by
            ORDER BY time, blocked_by
        """,
    ),
    "report_detections_by_detector": NamedQuery(
        columns=("time", "detector", "detections"),
        description="Detections per bucket and detector (deduplicated by detection_id).",
        params={**_WINDOW, "step": _STEP},
        sql=f"""
            SELECT {_BUCKET} AS time, detector, uniqExact(detection_id) AS detections
            FROM detections FINAL
            WHERE {_IN_WINDOW}
            GROUP BY time, detector
            ORDER BY time, detector
        """,
    ),
    "report_top_offenders": NamedQuery(
        columns=("kind", "offender", "country", "asn", "ips", "requests", "suspicious", "failed_logins",
                 "blocked"),
        description=("The `limit` worst offenders of each kind (ip, prefix: /24 or /64, asn: 'AS<n>', "
                     "principal) by suspicious requests (401/403/429 or a failed login), then requests. "
                     "country/asn: the most frequent ('' / 0 when unknown)."),
        params={**_WINDOW, "limit": Param(_limit, default=10, help="rows per kind (default 10)")},
        sql=f"""
            SELECT kind, offender, country, asn, ips, requests, suspicious, failed_logins, blocked
            FROM (
                SELECT 'ip' AS kind,
                       replaceRegexpOne(toString(client_ip), '^::ffff:([0-9.]+)$', '\\\\1') AS offender,
                       toString(ifNull(anyLast(country), '')) AS country,
                       toUInt32(ifNull(anyLast(asn), 0)) AS asn,
                       uniqExact(client_ip) AS ips, count() AS requests, countIf({_SUSPICIOUS}) AS suspicious,
                       countIf(login = 'failure') AS failed_logins, countIf(answered_by = 'decision') AS blocked
                FROM requests FINAL
                WHERE {_IN_WINDOW}
                GROUP BY client_ip
                UNION ALL
                SELECT 'prefix',
                       if(match(toString(client_ip), '^::ffff:[0-9.]+$'),
                          concat(replaceRegexpOne(cutIPv6(client_ip, 0, 1), '^::ffff:', ''), '/24'),
                          concat(cutIPv6(client_ip, 8, 0), '/64')) AS prefix,
                       toString(ifNull(topK(1)(country)[1], '')), toUInt32(ifNull(topK(1)(asn)[1], 0)),
                       {_OFFENDER_COUNTS}
                GROUP BY prefix
                UNION ALL
                SELECT 'asn', concat('AS', toString(asn)) AS asn_text,
                       toString(ifNull(topK(1)(country)[1], '')), toUInt32(ifNull(any(asn), 0)),
                       {_OFFENDER_COUNTS} AND asn IS NOT NULL
                GROUP BY asn_text
                UNION ALL
                SELECT 'principal', principal,
                       toString(ifNull(topK(1)(country)[1], '')), toUInt32(ifNull(topK(1)(asn)[1], 0)),
                       {_OFFENDER_COUNTS} AND principal != ''
                GROUP BY principal
            )
            WHERE suspicious > 0
            ORDER BY kind, suspicious DESC, requests DESC, offender
            LIMIT {{limit:UInt32}} BY kind
        """,
    ),
    "report_detections_by_country": NamedQuery(
        columns=("country", "detections"),
        description=("Detections in the window per country (ISO 3166-1 alpha-2): the countries of each "
                     "detection's sample requests (looked up to an hour before the window, any scope "
                     "but route and country), or the value of a country-scoped detection."),
        params=_WINDOW,
        sql=f"""
            SELECT country, uniqExact(detection_id) AS detections
            FROM (
                SELECT d.detection_id AS detection_id, assumeNotNull(r.country) AS country
                FROM (
                    SELECT detection_id, arrayJoin(sample_event_ids) AS event_id
                    FROM detections FINAL
                    WHERE {_IN_WINDOW} AND scope NOT IN ('route', 'country')
                ) AS d
                INNER JOIN (
                    SELECT event_id, country
                    FROM requests FINAL
                    WHERE ts >= {{since:DateTime64(3, 'UTC')}} - INTERVAL 1 HOUR
                      AND ts < {{until:DateTime64(3, 'UTC')}}
                      AND country IS NOT NULL AND country != ''
                ) AS r ON d.event_id = r.event_id
                UNION ALL
                SELECT detection_id, value AS country
                FROM detections FINAL
                WHERE {_IN_WINDOW} AND scope = 'country'
            )
            GROUP BY country
            ORDER BY detections DESC, country
        """,
    ),
    "report_decisions": NamedQuery(
        columns=("id", "created_at", "expires_at", "scope", "value", "action", "reason", "detector",
                 "origin", "detection_id", "in_force"),
        description=("Decisions created in the window, newest first; in_force: the latest decision "
                     "for its scope:value at until and not expired then."),
        params={**_WINDOW, "limit": _LIMIT},
        sql=f"""
            SELECT d.id AS id, d.created_at AS created_at, d.expires_at AS expires_at, d.scope AS scope,
                   d.value AS value, d.action AS action, d.reason AS reason, d.detector AS detector,
                   d.origin AS origin, d.detection_id AS detection_id,
                   d.id IN (SELECT id FROM ({_LATEST_DECISIONS_AT_UNTIL}) WHERE in_force) AS in_force
            FROM decisions AS d FINAL
            WHERE d.created_at >= {{since:DateTime64(3, 'UTC')}} AND d.created_at < {{until:DateTime64(3, 'UTC')}}
            ORDER BY d.created_at DESC, d.id
            LIMIT {{limit:UInt32}}
        """,
    ),
})


def bind_params(name: str, raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check ``raw`` against the spec of query ``name`` and return the bound values.

    Raises :class:`UnknownQuery` for an unknown name and :class:`QueryParamError`
    for a missing, unknown or malformed parameter.
    """
    query = QUERIES.get(name)
    if query is None:
        raise UnknownQuery(name)
    raw = dict(raw or {})
    unknown = sorted(set(raw) - set(query.params))
    if unknown:
        raise QueryParamError(f"unknown parameter(s) for {name}: {', '.join(unknown)}")
    bound: dict[str, Any] = {}
    for pname, spec in query.params.items():
        if pname in raw:
            bound[pname] = spec.parse(raw[pname])
        elif spec.default is not None:
            bound[pname] = spec.default
        else:
            raise QueryParamError(f"missing parameter {pname!r} for {name} ({spec.help})")
    return bound


def json_safe(value: Any) -> Any:
    """Convert a value returned by ``clickhouse_connect`` into JSON-safe data.

    Datetimes become ISO 8601 text in UTC (naive ones are taken as UTC, the
    columns are ``DateTime64(3, 'UTC')``); IPv4-mapped IPv6 addresses become
    IPv4 text; NaN/inf floats become None; bytes are decoded as UTF-8.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, ipaddress.IPv6Address):
        return str(value.ipv4_mapped or value)
    if isinstance(value, (ipaddress.IPv4Address, uuid.UUID)):
        return str(value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    return str(value)


def run_query(client: Client, name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run the named query and return ``{"columns": [str], "rows": [[value]]}`` (JSON-safe).

    Raises :class:`UnknownQuery` / :class:`QueryParamError` (see :func:`bind_params`);
    engine errors propagate.
    """
    bound = bind_params(name, params)
    result = client.query(QUERIES[name].sql, parameters=bound)
    return {
        "columns": list(result.column_names) or list(QUERIES[name].columns),
        "rows": [[json_safe(v) for v in row] for row in result.result_rows],
    }
