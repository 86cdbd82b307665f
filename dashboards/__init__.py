"""Grafana dashboards and alert rules as code, for the ClickHouse tables of ``storage/``.

* :mod:`dashboards.panels` — every panel's and alert rule's SQL, named, in one place;
* :mod:`dashboards.clickhouse` — the ``grafana-clickhouse-datasource`` query model;
* :mod:`dashboards.layout` — panel builders (time series, table, stat, geomap);
* :mod:`dashboards.overview`, :mod:`~dashboards.abuse`, :mod:`~dashboards.geo`,
  :mod:`~dashboards.latency`, :mod:`~dashboards.auth` — one module per dashboard;
* :mod:`dashboards.alerts` — Grafana-managed alert rules (provisioning YAML);
* :mod:`dashboards.generate` — writes ``dashboards/json/*.json`` and the alert rules file;
* :mod:`dashboards.push` — uploads dashboards through Grafana's HTTP API (``grafana-client``);
* :mod:`dashboards.macros` — the plugin's SQL macros, expanded as the plugin does (tests).

``gatewatch dashboards build|push`` is the command line (``gatewatch/cli_dashboards.py``).
"""
