-- Per-minute rollup of detections per detector and scope, fed by a materialized view on
-- every insert into `detections`. `detections` holds uniqExactState(detection_id): a
-- redelivered detection (same id, same minute) is counted once by uniqExactMerge, so this
-- rollup agrees with `detections FINAL` (detections are few; the exact state stays small).
CREATE TABLE IF NOT EXISTS detections_per_minute
(
    minute     DateTime('UTC'),
    detector   LowCardinality(String),
    scope      LowCardinality(String),
    severity   LowCardinality(String),
    detections AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (minute, detector, scope, severity);

CREATE MATERIALIZED VIEW IF NOT EXISTS detections_per_minute_mv TO detections_per_minute AS
SELECT toStartOfMinute(toDateTime(ts, 'UTC')) AS minute, detector, scope, severity,
       uniqExactState(detection_id) AS detections
FROM detections
GROUP BY minute, detector, scope, severity;

-- Detections stored before this migration.
INSERT INTO detections_per_minute
SELECT toStartOfMinute(toDateTime(ts, 'UTC')) AS minute, detector, scope, severity,
       uniqExactState(detection_id)
FROM detections FINAL
GROUP BY minute, detector, scope, severity
