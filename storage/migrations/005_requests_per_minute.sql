-- Per-minute rollup of requests per route template (and method and answering party), fed
-- by a materialized view on every insert into `requests`: request count, status classes,
-- 401/403/429 counts and latency quantile states (ClickHouse docs, "AggregatingMergeTree":
-- read with sum() and quantilesMerge(...)(latency_ms), grouped by the key).
--
-- Duplicates: a materialized view sees every inserted block, not the deduplicated table.
-- The sink is at-least-once, so requests redelivered after a worker crash or a rebalance
-- (those since the last committed offset) count twice here, while `requests FINAL` counts
-- them once. Trend panels (rates, status mix, p95 per route) read this rollup; exact
-- figures (totals, top offenders, alert rules) read `requests FINAL`.
--
-- latency_ms: quantilesState keeps a reservoir of 8192 values per state (ClickHouse docs,
-- "quantile"): exact below that many requests per group, approximate above.
CREATE TABLE IF NOT EXISTS requests_per_minute
(
    minute      DateTime('UTC'),
    method      LowCardinality(String),
    route       LowCardinality(String),
    answered_by LowCardinality(String),
    requests    SimpleAggregateFunction(sum, UInt64),
    status_1xx  SimpleAggregateFunction(sum, UInt64),
    status_2xx  SimpleAggregateFunction(sum, UInt64),
    status_3xx  SimpleAggregateFunction(sum, UInt64),
    status_4xx  SimpleAggregateFunction(sum, UInt64),
    status_5xx  SimpleAggregateFunction(sum, UInt64),
    status_401  SimpleAggregateFunction(sum, UInt64),
    status_403  SimpleAggregateFunction(sum, UInt64),
    status_429  SimpleAggregateFunction(sum, UInt64),
    latency_ms  AggregateFunction(quantiles(0.5, 0.9, 0.95, 0.99), Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (minute, method, route, answered_by);

CREATE MATERIALIZED VIEW IF NOT EXISTS requests_per_minute_mv TO requests_per_minute AS
SELECT toStartOfMinute(toDateTime(ts, 'UTC')) AS minute, method, route, answered_by,
       count() AS requests,
       countIf(status < 200) AS status_1xx,
       countIf(status >= 200 AND status < 300) AS status_2xx,
       countIf(status >= 300 AND status < 400) AS status_3xx,
       countIf(status >= 400 AND status < 500) AS status_4xx,
       countIf(status >= 500) AS status_5xx,
       countIf(status = 401) AS status_401,
       countIf(status = 403) AS status_403,
       countIf(status = 429) AS status_429,
       quantilesState(0.5, 0.9, 0.95, 0.99)(latency_ms) AS latency_ms
FROM requests
GROUP BY minute, method, route, answered_by;

-- Requests stored before this migration: rolled up once from the deduplicated table.
INSERT INTO requests_per_minute
SELECT toStartOfMinute(toDateTime(ts, 'UTC')) AS minute, method, route, answered_by,
       count(), countIf(status < 200), countIf(status >= 200 AND status < 300),
       countIf(status >= 300 AND status < 400), countIf(status >= 400 AND status < 500),
       countIf(status >= 500), countIf(status = 401), countIf(status = 403), countIf(status = 429),
       quantilesState(0.5, 0.9, 0.95, 0.99)(latency_ms)
FROM requests FINAL
GROUP BY minute, method, route, answered_by
