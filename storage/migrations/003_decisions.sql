-- Decisions published on gatewatch.decisions: one row per gatewatch.events.Decision
-- (schema v1). evidence is the JSON text of Decision.evidence. Deduplicated on id
-- (part of the sort key) with FINAL. A later decision for the same scope:value has
-- a new id and is a new row: this table is the history, not the current state.
CREATE TABLE IF NOT EXISTS decisions
(
    v            UInt8,
    id           String,
    scope        LowCardinality(String),
    value        String,
    action       LowCardinality(String),
    reason       String,
    detector     LowCardinality(String),
    evidence     String,
    created_at   DateTime64(3, 'UTC'),
    expires_at   DateTime64(3, 'UTC'),
    origin       LowCardinality(String),
    detection_id Nullable(String),
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(created_at)
ORDER BY (scope, value, created_at, id);
