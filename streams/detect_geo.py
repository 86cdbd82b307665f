"""Agent: geo anomalies per principal (impossible travel, new country, country policy)
over requests re-keyed by principal (``topic_requests_by_principal``), so one
principal's history lives on one worker. The I/O of locating an address (the
DB-IP city ``.mmdb``, :mod:`gatewatch.geoip`) happens here; the detector
(:mod:`detectors.geo`) stays pure. Without geo data the agent counts
``geo_unavailable`` and detects nothing (``gatewatch geo install`` fixes it).
"""

from __future__ import annotations

import logging
from datetime import datetime

from detectors.geo import GeoAnomalyDetector, GeoPoint
from gatewatch.events import Detection, RequestEvent
from gatewatch.geoip import GeoDataError, GeoIp
from streams import counters
from streams.app import app, settings
from streams.decide import publish
from streams.merged import MergedInput
from streams.topics import by_principal_topic

log = logging.getLogger(__name__)


class LocatedGeoDetector:
    """Adapter with the ``process(event, now)`` shape of the other detectors: locates the
    client address (city database) and hands the point to the pure detector."""

    def __init__(self, detector: GeoAnomalyDetector, db: GeoIp | None) -> None:
        self.detector, self.db = detector, db

    def process(self, event: RequestEvent, now: datetime) -> list[Detection]:
        """Detections for ``event``; none without a principal, a location or geo data."""
        if self.db is None or not event.principal or event.answered_by != "upstream":
            return []
        info = self.db.lookup(event.client_ip)
        point = None if info is None or info.lat is None else GeoPoint(info.lat, info.lon, info.country)
        return self.detector.process(event, point, now=event.ts)


def _open_geo() -> GeoIp | None:
    if not settings.geo_anomaly.enabled:
        return None
    try:
        return GeoIp(settings.geo.dir, settings.geo.city_mmdb, with_asn=False)
    except GeoDataError as exc:
        counters.incr("geo_unavailable")
        log.warning("geo anomaly detection off: %s", exc)
        return None


detector = LocatedGeoDetector(GeoAnomalyDetector.from_settings(settings.geo_anomaly), _open_geo())
by_principal_geo = MergedInput("by_principal_geo")


@app.agent(by_principal_topic)
async def detect_geo(stream):  # type: ignore[no-untyped-def]
    """Consume batches of principals' requests; emit geo-anomaly detections."""
    async for batch in stream.take_events(settings.detector_batch_size,
                                          within=settings.detector_batch_within_s):
        await publish(by_principal_geo.detect(batch, detector))
