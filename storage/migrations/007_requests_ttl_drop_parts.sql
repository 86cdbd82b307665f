-- `requests` is partitioned by day: when its TTL (settings.requests_ttl_days, applied by
-- storage/retention.py) expires a whole day, ClickHouse drops that day's parts instead of
-- rewriting them row by row (ClickHouse docs, MergeTree setting ttl_only_drop_parts).
ALTER TABLE requests MODIFY SETTING ttl_only_drop_parts = 1
