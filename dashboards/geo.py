"""The Geo dashboard: a world map of requests and detections by client country."""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard

from dashboards.layout import MapLayer, Row, assemble, geomap, table

UID = "gatewatch-geo"


def build() -> dashboard.Dashboard:
    """Build the Geo dashboard."""
    return assemble(UID, "gatewatch · Geo", "Where requests and detections come from (client country).", [
        Row("Map", [
            geomap([MapLayer("geo_requests_by_country", "Requests", "requests", "green"),
                    MapLayer("geo_detections_by_country", "Detections", "detections", "red")],
                   "Requests and detections by country",
                   description=("Marker size: requests (green) and detections (red) per client country, "
                                "placed with Grafana's countries gazetteer.")),
        ]),
        Row("By country", [
            table("geo_requests_by_country", "Requests by country"),
            table("geo_detections_by_country", "Detections by country"),
        ]),
    ])
