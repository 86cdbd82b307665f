"""The query model of Grafana's ClickHouse plugin (``grafana-clickhouse-datasource``, v4).

``grafana-foundation-sdk`` ships no ClickHouse query type, so this module adds
one as a cog "dataquery variant": :class:`ClickHouseQuery` serialises to the
JSON the plugin stores in a panel's ``targets`` and is registered with the
SDK's runtime (:func:`register`) so that dashboards load back through
``Dashboard.from_json``.

The v4 model (plugin source ``src/types/sql.ts`` and ``src/data/migration.ts``):
``editorType`` ``"sql"`` with ``rawSql``; ``format`` is Grafana's
``sqlutil.FormatQueryOption`` (0 time series, 1 table) read by the backend;
``queryType`` ``"timeseries"`` or ``"table"`` picks the editor's display;
``pluginVersion`` ≥ 4.0.0 — a query without it (or with the v3 ``queryType``
``"sql"``/``"builder"``) is treated as a v3 query and migrated on load.
"""

from __future__ import annotations

import enum
from typing import Any, Self

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import dashboard

#: Plugin id, the ``type`` of the datasource and of every query's datasource ref.
DATASOURCE_TYPE = "grafana-clickhouse-datasource"
#: uid of the datasource in ``provisioning/datasources/clickhouse.yaml``.
DATASOURCE_UID = "gatewatch-clickhouse"
#: Plugin release the query model is written for (also pinned in the Grafana image).
PLUGIN_VERSION = "4.11.2"


class Format(enum.IntEnum):
    """``format`` of a query: how the plugin's backend shapes the result frame."""

    TIME_SERIES = 0
    TABLE = 1


#: ``queryType`` (editor display) that goes with each format.
QUERY_TYPES = {Format.TIME_SERIES: "timeseries", Format.TABLE: "table"}


def datasource_ref(uid: str = DATASOURCE_UID) -> dashboard.DataSourceRef:
    """The ClickHouse datasource reference used by panels and targets."""
    return dashboard.DataSourceRef(type_val=DATASOURCE_TYPE, uid=uid)


class ClickHouseQuery(cogvariants.Dataquery):
    """One raw-SQL query of the ClickHouse plugin (a panel target or an alert query model)."""

    def __init__(self, ref_id: str = "A", raw_sql: str = "", format: Format = Format.TABLE,
                 datasource_uid: str = DATASOURCE_UID, hide: bool | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        self.ref_id = ref_id
        self.raw_sql = raw_sql
        self.format = Format(format)
        self.datasource_uid = datasource_uid
        self.hide = hide
        #: Fields this class does not model, kept so a loaded dashboard dumps unchanged.
        self.extra = dict(extra or {})

    def to_json(self) -> dict[str, object]:
        """The target as the plugin stores it."""
        payload: dict[str, object] = {
            "refId": self.ref_id,
            "datasource": {"type": DATASOURCE_TYPE, "uid": self.datasource_uid},
            "pluginVersion": PLUGIN_VERSION,
            "editorType": "sql",
            "queryType": QUERY_TYPES[self.format],
            "format": int(self.format),
            "rawSql": self.raw_sql,
        }
        if self.hide is not None:
            payload["hide"] = self.hide
        payload.update(self.extra)
        return payload

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        """Parse a stored target; raises ``ValueError`` if it is not a raw-SQL v4 query."""
        if data.get("editorType") != "sql" or "rawSql" not in data:
            raise ValueError(f"not a raw-SQL ClickHouse query: {sorted(data)}")
        known = {"refId", "datasource", "pluginVersion", "editorType", "queryType", "format",
                 "rawSql", "hide"}
        fmt = Format(data.get("format", Format.TABLE))
        if data.get("queryType", QUERY_TYPES[fmt]) != QUERY_TYPES[fmt]:
            raise ValueError(f"queryType {data.get('queryType')!r} does not match format {int(fmt)}")
        return cls(ref_id=data.get("refId", "A"), raw_sql=data["rawSql"], format=fmt,
                   datasource_uid=(data.get("datasource") or {}).get("uid", DATASOURCE_UID),
                   hide=data.get("hide"), extra={k: v for k, v in data.items() if k not in known})


class SqlTarget(cogbuilder.Builder[cogvariants.Dataquery]):
    """Builder of a :class:`ClickHouseQuery`, for ``Panel.with_target`` and alert queries."""

    def __init__(self, raw_sql: str, format: Format, ref_id: str = "A",
                 datasource_uid: str = DATASOURCE_UID) -> None:
        self._query = ClickHouseQuery(ref_id, raw_sql, format, datasource_uid)

    def build(self) -> ClickHouseQuery:
        """The built query."""
        return self._query


def register() -> None:
    """Register the SDK's own panel/query types and :class:`ClickHouseQuery`, so that
    ``Dashboard.from_json`` parses ClickHouse targets (idempotent)."""
    register_default_plugins()
    cogruntime.register_dataquery_variant(
        cogruntime.DataqueryConfig(identifier=DATASOURCE_TYPE, from_json_hook=ClickHouseQuery.from_json))
