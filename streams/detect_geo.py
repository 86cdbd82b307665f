"""Geo anomalies per principal (impossible travel, new country, country policy) over
requests re-keyed by principal (``topic_requests_by_principal``), so one principal's
history lives on one worker: one detector per by-principal partition
(:mod:`streams.rekeyed_consumer`). The I/O of locating an address (the DB-IP city
``.mmdb``, :mod:`gatewatch.geoip`, opened once) happens here; the detector
(:mod:`detectors.geo`) stays pure. Without geo data it counts ``geo_unavailable``
and detects nothing (``gatewatch geo install`` fixes it).

After a restart the by-principal partition's replay (the longest span of its
detectors, see :mod:`streams.detect_bola`) rebuilds a principal's history from
the replayed requests only: its last location, if it called within the span
(impossible travel is then judged as without the restart). **Not exact** — a
principal's history spans ``geo_anomaly.state_ttl_s`` (30 days), far beyond any
replay: its learning period (``learning_s``, 7 days) starts over, so new
countries are not reported for it until it has been learned again, and its
countries seen before are forgotten. :data:`REPLAY_S` is 0: geo adds nothing to
the span.
"""

from __future__ import annotations

import logging
from datetime import datetime

from detectors.geo import GeoAnomalyDetector, GeoPoint
from gatewatch.events import Detection, ObservedRequest
from gatewatch.geoip import GeoDataError, GeoIp
from streams import counters
from streams.app import settings
from streams.merged import EventStage

log = logging.getLogger(__name__)


class LocatedGeoDetector:
    """Adapter with the ``process(event, now)`` shape of the other detectors: locates the
    client address (city database) and hands the point to the pure detector."""

    def __init__(self, detector: GeoAnomalyDetector, db: GeoIp | None) -> None:
        self.detector, self.db = detector, db

    def process(self, event: ObservedRequest, now: datetime) -> list[Detection]:
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


#: Seconds of event time geo needs replayed: none (see the module docstring).
REPLAY_S = 0.0
_db = _open_geo()


def stages() -> list[EventStage]:
    """The geo detector of one by-principal partition (the city database is shared); none
    without geo data."""
    if _db is None:
        return []
    return [EventStage(LocatedGeoDetector(GeoAnomalyDetector.from_settings(settings.geo_anomaly), _db), "geo")]
