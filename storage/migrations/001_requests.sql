-- Requests seen by the gateway: one row per gatewatch.events.RequestEvent (schema v1).
-- ReplacingMergeTree on the full sort key (client_ip, ts, event_id): a redelivered
-- event (same event_id, same ts, same client) collapses into one row in queries
-- that read with FINAL; physical duplicates stay visible without FINAL until a merge.
-- client_ip is IPv6; IPv4 clients are stored IPv4-mapped (::ffff:a.b.c.d).
CREATE TABLE IF NOT EXISTS requests
(
    v            UInt8,
    event_id     String,
    ts           DateTime64(3, 'UTC'),
    client_ip    IPv6,
    method       LowCardinality(String),
    host         LowCardinality(String),
    path         String,
    route        LowCardinality(String),
    status       UInt16,
    latency_ms   Float64,
    bytes_in     UInt64,
    bytes_out    UInt64,
    principal    LowCardinality(String),
    auth         LowCardinality(String),
    answered_by  LowCardinality(String),
    user_agent   String,
    login        LowCardinality(Nullable(String)),
    username_hash Nullable(String),
    decision_id  Nullable(String),
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(ts)
ORDER BY (client_ip, ts, event_id);
