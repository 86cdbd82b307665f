"""Panel builders over named queries, and :func:`assemble` for a whole dashboard.

Each helper takes the name of a :mod:`dashboards.panels` query, so a panel's
SQL is never written here. Helpers check that a time-series panel gets a
time-series query and the other panels get table queries, so a mismatch
fails at build time rather than in Grafana.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import geomap as geomap_b
from grafana_foundation_sdk.builders import stat as stat_b
from grafana_foundation_sdk.builders import table as table_b
from grafana_foundation_sdk.builders import timeseries as ts_b
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import common, dashboard
from grafana_foundation_sdk.models import geomap as geomap_m

from dashboards import panels
from dashboards.clickhouse import Format, SqlTarget, datasource_ref

Panel = cogbuilder.Builder[dashboard.Panel]
P = TypeVar("P", ts_b.Panel, table_b.Panel, stat_b.Panel)

#: Grafana's built-in gazetteer of countries, keyed by ISO 3166-1 alpha-2 code.
COUNTRIES_GAZETTEER = "public/gazetteer/countries.json"
TAGS = ["gatewatch"]


def target(name: str, ref_id: str = "A", want: Format | None = None) -> SqlTarget:
    """The ClickHouse target running query ``name`` (checked against ``want``)."""
    query = panels.get(name)
    if want is not None and query.format != want:
        raise ValueError(f"query {name} has format {query.format.name}, the panel needs {want.name}")
    return SqlTarget(query.sql, query.format, ref_id)


def _describe(name: str, description: str | None) -> str:
    return description if description is not None else panels.get(name).description


def _interval(panel: P, name: str) -> P:
    """The query's smallest bucket as the panel's min interval (rollup queries: 1m)."""
    minimum = panels.get(name).min_interval
    return panel.interval(minimum) if minimum else panel  # type: ignore[attr-defined]


def timeseries(name: str, title: str, *, unit: str = "short", stacked: bool = False,
               bars: bool = False, width: int = 12, height: int = 8,
               description: str | None = None) -> ts_b.Panel:
    """A time-series panel over query ``name`` (one series per label value)."""
    panel = (ts_b.Panel().title(title).description(_describe(name, description))
             .datasource(datasource_ref()).with_target(target(name, want=Format.TIME_SERIES))
             .unit(unit).span(width).height(height).line_width(1).fill_opacity(25 if stacked else 10)
             .show_points(common.VisibilityMode.NEVER).span_nulls(False)
             .legend(cb.VizLegendOptions().show_legend(True).display_mode(common.LegendDisplayMode.LIST)
                     .placement(common.LegendPlacement.BOTTOM).calcs([]))
             .tooltip(cb.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI)
                      .sort(common.SortOrder.DESCENDING)))
    if bars:
        panel = panel.draw_style(common.GraphDrawStyle.BARS).fill_opacity(80)
    if stacked:
        panel = panel.stacking(cb.StackingConfig().mode(common.StackingMode.NORMAL).group("A"))
    return _interval(panel, name)


def table(name: str, title: str, *, width: int = 12, height: int = 8, unit: str | None = None,
          description: str | None = None) -> table_b.Panel:
    """A table panel over query ``name``."""
    panel = (table_b.Panel().title(title).description(_describe(name, description))
             .datasource(datasource_ref()).with_target(target(name, want=Format.TABLE))
             .span(width).height(height).show_header(True).filterable(True).cell_height(common.TableCellHeight.SM)
             .footer(cb.TableFooterOptions().show(False).reducer(["sum"]).count_rows(False)))
    if unit:
        panel = panel.unit(unit)
    return _interval(panel, name)


def stat(name: str, title: str, *, width: int = 24, height: int = 4, unit: str = "short",
         description: str | None = None) -> stat_b.Panel:
    """A stat panel showing every numeric column of the one-row query ``name``."""
    return _interval(
        stat_b.Panel().title(title).description(_describe(name, description))
        .datasource(datasource_ref()).with_target(target(name, want=Format.TABLE))
        .span(width).height(height).unit(unit)
        .graph_mode(common.BigValueGraphMode.NONE).color_mode(common.BigValueColorMode.VALUE)
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False).fields("/.*/")), name)


@dataclass(frozen=True)
class MapLayer:
    """A marker layer of a geomap: query ``name`` (a table with a ``country`` column),
    markers sized by ``size_field`` in ``color``."""

    name: str
    title: str
    size_field: str
    color: str


def geomap(layers: Sequence[MapLayer], title: str, *, width: int = 24, height: int = 14,
           description: str = "") -> geomap_b.Panel:
    """A world map: one marker layer per query, placed by looking the ``country``
    column up in Grafana's countries gazetteer (location mode ``lookup``)."""
    panel = (geomap_b.Panel().title(title).description(description).datasource(datasource_ref())
             .span(width).height(height)
             .view(geomap_b.MapViewConfig().id("zero").lat(20).lon(0).zoom(1))
             .controls(geomap_b.ControlsOptions().show_zoom(True).mouse_wheel_zoom(False)
                       .show_attribution(True))
             .basemap(cb.MapLayerOptions().type("default").name("Basemap"))
             .tooltip(geomap_b.TooltipOptions().mode(geomap_m.TooltipMode.DETAILS)))
    map_layers = []
    for i, layer in enumerate(layers):
        ref_id = chr(ord("A") + i)
        query = panels.get(layer.name)
        if "country" not in query.names("country"):
            raise ValueError(f"query {layer.name} has no country column for the gazetteer lookup")
        panel = panel.with_target(target(layer.name, ref_id, want=Format.TABLE))
        map_layers.append(
            cb.MapLayerOptions().type("markers").name(layer.title).tooltip(True)
            .location(cb.FrameGeometrySource().mode(common.FrameGeometrySourceMode.LOOKUP)
                      .lookup("country").gazetteer(COUNTRIES_GAZETTEER))
            .filter_data({"id": "byRefId", "options": ref_id})
            .config({"showLegend": True,
                     "style": {"color": {"fixed": layer.color}, "opacity": 0.5,
                               "size": {"field": layer.size_field, "fixed": 5, "min": 4, "max": 30},
                               "symbol": {"fixed": "img/icons/marker/circle.svg", "mode": "fixed"},
                               "rotation": {"fixed": 0, "mode": "mod", "min": -360, "max": 360},
                               "symbolAlign": {"horizontal": "center", "vertical": "center"}}}))
    return panel.layers(map_layers)


@dataclass
class Row:
    """A titled row of panels."""

    title: str
    panels: list[Panel]


def assemble(uid: str, title: str, description: str, rows: Sequence[Row], *,
             variables: Sequence[cogbuilder.Builder[dashboard.VariableModel]] = (),
             time_from: str = "now-6h", refresh: str = "1m") -> dashboard.Dashboard:
    """Build a dashboard: rows in order, panel ids 1..n in reading order, UTC time,
    the ``gatewatch`` tag and links to the other gatewatch dashboards."""
    board = (db.Dashboard(title).uid(uid).description(description).tags(TAGS).timezone("utc")
             .time(time_from, "now").refresh(refresh).editable()
             .tooltip(dashboard.DashboardCursorSync.CROSSHAIR)
             .link(db.DashboardLink("gatewatch").type(dashboard.DashboardLinkType.DASHBOARDS)
                   .tags(TAGS).as_dropdown(True).keep_time(True).include_vars(False)
                   .target_blank(False).icon("external link").tooltip("").url("")))
    board = board.annotation(  # Grafana's own "Annotations & Alerts", as a new dashboard has it
        db.AnnotationQuery().name("Annotations & Alerts").built_in(1).enable(True).hide(True)
        .icon_color("rgba(0, 211, 255, 1)").type("dashboard")
        .datasource(dashboard.DataSourceRef(type_val="grafana", uid="-- Grafana --")))
    for variable in variables:
        board = board.with_variable(variable)
    panel_id = 0
    for row in rows:
        panel_id += 1
        board = board.with_row(db.Row(row.title).id(panel_id))
        for panel in row.panels:
            panel_id += 1
            board = board.with_panel(panel.id(panel_id))  # type: ignore[attr-defined]
    return board.build()
