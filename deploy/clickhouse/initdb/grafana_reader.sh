#!/bin/bash
# First start of the ClickHouse server (an empty data volume) only: the read-only user of the
# Grafana datasource (dashboards/provisioning/datasources/clickhouse.yaml). readonly = 2 lets
# the plugin set max_execution_time and nothing can be written (plugin docs, "Configure the
# ClickHouse data source": use a read-only user). The password must not contain a quote.
set -euo pipefail
clickhouse client --user "${CLICKHOUSE_USER:-default}" --password "${CLICKHOUSE_PASSWORD}" --multiquery <<EOSQL
CREATE USER IF NOT EXISTS grafana IDENTIFIED WITH sha256_password BY '${GRAFANA_CLICKHOUSE_PASSWORD}'
    SETTINGS readonly = 2;
GRANT SELECT ON ${CLICKHOUSE_DB:-gatewatch}.* TO grafana;
EOSQL
