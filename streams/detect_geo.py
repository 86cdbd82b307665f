"""Geo anomalies per principal (impossible travel, new country, country policy) over
requests re-keyed by principal (``topic_requests_by_principal``), so one principal's
history lives on one worker: one detector per by-principal partition
(:mod:`streams.rekeyed_consumer`). The I/O of locating an address (the DB-IP city
``.mmdb``, :mod:`gatewatch.geoip`, opened once) happens here; the detector
(:mod:`detectors.geo`) stays pure. Without geo data it counts ``geo_unavailable``
and detects nothing (``gatewatch geo install`` fixes it).

After a restart a principal's history comes back from two places:

* **the store**: before a by-principal partition is placed (:func:`load_history`,
  the consumer's assignment hook), every principal's located requests of the last
  ``geo_anomaly.state_ttl_s`` (30 days) are summed up by the store (named query
  ``geo_history``: first one, how many, which countries) and handed to the
  detectors as :class:`detectors.geo.GeoHistory`; a principal they have no state
  for starts from it, so its learning period and its countries go on, and a new
  country is reported as without the restart;
* **the replay** of the partition (:data:`REPLAY_S`, or the behaviour detector's span if
  longer): its last location, if it called within the span (impossible travel is then
  judged as without the restart).

Not exact: the countries in the store are the gateway's (the DB-IP country file),
the detector's come from the city file (both from one ``gatewatch geo install``,
the same source); a request stored twice, or both stored and replayed (the
replay span's requests are in both), counts twice towards
``min_learning_events``; a principal whose last located request is older than
the replay span has no place to travel from until its next one; the store keeps what
``requests_ttl_days`` keeps. If the store cannot answer (counted as
``geo_history_errors``), detection goes on without the history: learning starts
over, as before.
"""

from __future__ import annotations

import logging
from datetime import datetime

from detectors.geo import GeoAnomalyDetector, GeoHistory, GeoPoint
from gatewatch.events import Detection, ObservedRequest
from gatewatch.geoip import GeoDataError, GeoIp
from streams import counters
from streams.app import settings, store
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


#: Seconds of event time replayed for geo: a quarter of an hour, for the last location of a
#: principal that called within it (every by-principal row of the span is read at a restart).
REPLAY_S = 900.0
_db = _open_geo()
#: Longest wait for the store's answer, s: it runs while the group's assignment is handled.
STORE_READ_TIMEOUT_S = 20.0
#: Principal -> its history in the store, as of the last :func:`load_history`.
_history: dict[str, GeoHistory] = {}


def history_of(principal: str) -> GeoHistory | None:
    """The stored history of ``principal`` (the detectors' ``history`` lookup)."""
    return _history.get(principal)


async def load_history(now: datetime | None = None) -> int:
    """Read the geo history of every principal from the store: located requests answered
    by the upstream over the ``geo_anomaly.state_ttl_s`` seconds before ``now`` (default:
    the current time). Returns how many principals it holds; on a store error the previous
    history stays (counted as ``geo_history_errors``). Nothing without geo data."""
    global _history
    if _db is None:
        return 0
    try:
        rows = await store.query_last("geo_history", settings.geo_anomaly.state_ttl_s, STORE_READ_TIMEOUT_S, now)
        _history = {str(principal): GeoHistory(float(first_s), int(located), frozenset(map(str, countries)))
                    for principal, first_s, located, countries in rows}
    except Exception as exc:   # the store down or failing: go on without (module docstring)
        counters.incr("geo_history_errors")
        log.warning("geo history not read from the store (%s: %s): learning starts over for "
                    "principals not seen since", type(exc).__name__, exc)
        return len(_history)
    counters.incr("geo_history_loads")
    log.info("geo history of %d principals read from the store", len(_history))
    return len(_history)


def stages() -> list[EventStage]:
    """The geo detector of one by-principal partition (the city database is shared); none
    without geo data."""
    if _db is None:
        return []
    return [EventStage(LocatedGeoDetector(GeoAnomalyDetector.from_settings(settings.geo_anomaly, history_of),
                                          _db), "geo")]
