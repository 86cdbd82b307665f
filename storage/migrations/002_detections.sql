-- Detector findings: one row per gatewatch.events.Detection (schema v1).
-- evidence is the JSON text of Detection.evidence. Deduplicated on detection_id
-- (part of the sort key) with FINAL.
CREATE TABLE IF NOT EXISTS detections
(
    v                UInt8,
    detection_id     String,
    ts               DateTime64(3, 'UTC'),
    detector         LowCardinality(String),
    scope            LowCardinality(String),
    value            String,
    severity         LowCardinality(String),
    score            Float64,
    summary          String,
    evidence         String,
    sample_event_ids Array(String),
    inserted_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (detector, scope, value, ts, detection_id);
