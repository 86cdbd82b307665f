-- RequestEvent schema v1 gained two optional fields, filled by a geo-IP lookup:
-- asn (autonomous system number) and country (ISO 3166-1 alpha-2). Rows written
-- before this migration read as NULL.
ALTER TABLE requests ADD COLUMN IF NOT EXISTS asn Nullable(UInt32) AFTER decision_id;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS country LowCardinality(Nullable(String)) AFTER asn
