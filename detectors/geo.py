"""Geo anomalies per principal: impossible travel, a new country, a per-key country policy.

What it detects
    * **Impossible travel**: two requests of one principal from places farther
      apart than ``min_distance_km`` with an implied ground speed above
      ``max_speed_kmh`` (haversine great-circle distance over elapsed time).
      The default, 900 km/h, is about the cruise speed of a jet airliner:
      faster than any real trip between two cities. Travel is judged between
      requests from *located* networks only: a request whose ``event.asn`` is
      in ``anonymizer_asns`` (VPN providers, hosting/VPS networks) neither
      raises nor anchors it, so turning a VPN on or off is not travel, and a
      request from a real network is judged against the principal's last one
      from a real network (see "VPN and hosting networks" below).
    * **New country**: after a principal's ``learning_s`` learning period (and
      at least ``min_learning_events`` located requests), a request from a
      country it was never seen in. Alerted once per country.
    * **Country policy** (optional): a principal listed in ``allowed_countries``
      calling from any other country.

What it will not catch
    * Anything from addresses without a location (private, loopback, unknown).
    * An attacker in the same city or country as the victim.
    * Distances under ``min_distance_km``: city-level IP geolocation is often
      off by tens to hundreds of km (MaxMind publishes an accuracy radius per
      record for this reason), so shorter jumps — a phone changing cells, a
      commuter — are never "travel".
    * Anyone whose requests come from an anonymizer network (VPN provider,
      VPS): an attacker who rents a server in one of ``anonymizer_asns``, or
      buys a commercial VPN, is never judged for travel, whatever the
      distance — only their requests from other networks are. An attacker
      always on such a network while the victim calls from home passes
      unseen here; new-country and the country policy still see those
      requests (their country is the exit's), and an operator who wants
      them flagged can put an ``asn`` decision (challenge) on those networks.
      A VPN exit or a cloud network missing from the list still looks like
      travel, and so does a corporate VPN's own network.
    This detector raises detections for people to review (or for a
    ``challenge``), it is not meant to ban on its own.

VPN and hosting networks
    The location of a VPN exit or a rented server says where the server is, not
    where the person is: a user at home in France who turns on a VPN with a US
    exit "moves" 6000 km in a second. Microsoft Defender for Cloud Apps'
    impossible-travel detection "ignores obvious false positives contributing
    to the impossible travel conditions, such as VPNs and locations regularly
    used by other users in the organization"
    (https://learn.microsoft.com/en-us/defender-cloud-apps/anomaly-detection-policy#impossible-travel),
    and reports anonymous-proxy addresses as a separate, lower-confidence
    detection ("Activity from anonymous IP addresses"). Here the network comes
    from the request itself (``event.asn``, recorded by the gateway's geo
    lookup; None when unknown, then the request counts as located): a request
    from one of ``anonymizer_asns`` is left out of travel in both roles — it is
    never the second end of a travel, and it does not replace the principal's
    last located request as the first end. So a user who turns a VPN on is not
    flagged, and an attacker on a residential network while the victim is on a
    VPN is still judged against where the victim last was without it (over the
    time since then, so a long VPN session leaves an attacker more slack). No
    separate detection is raised for anonymizer use: it is common and benign
    for API clients (developers on VPNs, servers in clouds); a team that wants
    it can use ``asn`` decisions. The default list
    (:data:`gatewatch.settings.DEFAULT_ANONYMIZER_ASNS`) names well-known VPN
    and hosting networks, each with its source.

Parameters (units in names): ``max_speed_kmh`` (900), ``min_distance_km``
(500), ``learning_s`` (7 days), ``min_learning_events`` (20), ``state_ttl_s``
(30 days: a principal silent that long is forgotten), ``anonymizer_asns``
(autonomous system numbers left out of travel; default
:data:`gatewatch.settings.DEFAULT_ANONYMIZER_ASNS`, empty to judge every network),
``history`` (a lookup of what is known of a principal from before this detector
started, :class:`GeoHistory`, or None: a principal it has no state for starts from
that history — its learning period and countries go on — instead of from nothing).

Example::

    >>> from datetime import datetime, timezone, timedelta
    >>> from gatewatch.events import RequestEvent
    >>> det = GeoAnomalyDetector(learning_s=0, min_learning_events=0)
    >>> t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    >>> def ev(ts):
    ...     return RequestEvent(event_id=str(ts), ts=ts, client_ip="192.0.2.1", method="GET",
    ...                         host="api", path="/", route="/", status=200, principal="key_a")
    >>> det.process(ev(t0), GeoPoint(51.5, -0.12, "GB"), now=t0)
    []
    >>> [d.evidence["kind"] for d in det.process(ev(t0 + timedelta(minutes=30)),
    ...                                           GeoPoint(40.7, -74.0, "US"), now=t0 + timedelta(minutes=30))]
    ['impossible_travel', 'new_country']
    >>> vpn = ev(t0 + timedelta(minutes=31)).model_copy(update={"asn": 9009})  # M247, a VPN host
    >>> det.process(vpn, GeoPoint(51.5, -0.12, "GB"), now=vpn.ts)  # New York -> London exit: no travel
    []

References: R. W. Sinnott, "Virtues of the Haversine", Sky & Telescope 68(2), 1984;
IUGG mean Earth radius 6371.0088 km (Moritz, Geodetic Reference System 1980).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gatewatch.events import Detection, ObservedRequest
from gatewatch.settings import DEFAULT_ANONYMIZER_ASNS

DETECTOR = "geo"
#: IUGG mean Earth radius, km.
EARTH_RADIUS_KM = 6371.0088


@dataclass(frozen=True, slots=True)
class GeoPoint:
    """A located request: ``lat``/``lon`` in degrees (WGS 84), ISO country code."""

    lat: float
    lon: float
    country: str | None = None


def haversine_km(a: GeoPoint, b: GeoPoint) -> float:
    """Great-circle distance between ``a`` and ``b`` in km (haversine formula, Sinnott 1984)."""
    p1, p2 = math.radians(a.lat), math.radians(b.lat)
    dp, dl = p2 - p1, math.radians(b.lon - a.lon)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


@dataclass(frozen=True, slots=True)
class GeoHistory:
    """What was known of a principal before: its first located request (``first_ts``,
    epoch s), how many located requests it made (``located_events``), the countries
    (ISO codes) they came from."""

    first_ts: float
    located_events: int
    countries: frozenset[str]


@dataclass(slots=True)
class _Seen:
    first_ts: float
    last_ts: float  # of the last request from a located (non-anonymizer) network; first_ts if none
    last_point: GeoPoint | None  # None until the principal calls from a located network
    last_ip: str
    last_event_id: str
    located_events: int = 0
    countries: set[str] = field(default_factory=set)


class GeoAnomalyDetector:
    """Online detector of geo anomalies per principal; see the module docstring.

    :meth:`process` takes one event, its location (or None) and the clock
    (event time), and returns 0..3 detections. The event's ``asn`` (int or None)
    is matched against ``anonymizer_asns`` (an iterable of autonomous system
    numbers). State: one small record per principal, dropped after
    ``state_ttl_s`` of silence.
    """

    def __init__(self, max_speed_kmh: float = 900.0, min_distance_km: float = 500.0,
                 learning_s: float = 7 * 86400.0, min_learning_events: int = 20,
                 allowed_countries: dict[str, frozenset[str]] | None = None,
                 state_ttl_s: float = 30 * 86400.0,
                 anonymizer_asns: Iterable[int] = DEFAULT_ANONYMIZER_ASNS,
                 history: Callable[[str], GeoHistory | None] | None = None) -> None:
        self.max_speed_kmh = max_speed_kmh
        self.min_distance_km = min_distance_km
        self.learning_s = learning_s
        self.min_learning_events = min_learning_events
        self.allowed_countries = dict(allowed_countries or {})
        self.state_ttl_s = state_ttl_s
        self.anonymizer_asns = frozenset(anonymizer_asns)
        self.history = history
        self._seen: dict[str, _Seen] = {}
        self._last_sweep = 0.0

    @classmethod
    def from_settings(cls, cfg: Any, history: Callable[[str], GeoHistory | None] | None = None
                      ) -> "GeoAnomalyDetector":
        """From a :class:`gatewatch.settings.GeoAnomalySettings` (and a ``history`` lookup)."""
        return cls(max_speed_kmh=cfg.max_speed_kmh, min_distance_km=cfg.min_distance_km,
                   learning_s=cfg.learning_s, min_learning_events=cfg.min_learning_events,
                   allowed_countries={k: frozenset(v) for k, v in cfg.allowed_countries.items()},
                   state_ttl_s=cfg.state_ttl_s, anonymizer_asns=cfg.anonymizer_asns, history=history)

    def process(self, event: ObservedRequest, point: GeoPoint | None, now: datetime) -> list[Detection]:
        """Learn from ``event`` located at ``point`` and return the detections it raises.

        Events without a principal or a location change nothing. An event from one of
        ``anonymizer_asns`` is left out of impossible travel (see the module docstring).
        """
        if not event.principal or point is None:
            return []
        t = now.timestamp()
        self._sweep(t)
        seen = self._seen.get(event.principal)
        out: list[Detection] = []
        if point.country and event.principal in self.allowed_countries \
                and point.country not in self.allowed_countries[event.principal]:
            out.append(self._detection(event, now, "ip", event.client_ip, "country_policy", "high",
                                       f"{event.principal} called from {point.country}, outside its "
                                       f"allowed countries", {
                                           "country": point.country,
                                           "allowed": sorted(self.allowed_countries[event.principal])}))
        # A VPN exit or a rented server locates the server, not the person: such a request is
        # left out of travel in both roles (module docstring, "VPN and hosting networks").
        anonymized = event.asn is not None and event.asn in self.anonymizer_asns
        if seen is None:
            known = self.history(event.principal) if self.history is not None else None
            if known is None:
                self._seen[event.principal] = _Seen(t, t, None if anonymized else point, event.client_ip,
                                                    event.event_id, 1, {point.country} if point.country else set())
                return out
            # Known from before (e.g. the store, after a restart): no place to travel from yet,
            # but the learning period and the countries go on.
            seen = self._seen[event.principal] = _Seen(min(known.first_ts, t), t, None, event.client_ip,
                                                       event.event_id, known.located_events,
                                                       set(known.countries))
        last_point = seen.last_point
        # Events of one principal can arrive out of order (they come from several
        # partitions): the pair is judged in event-time order, whichever came first.
        earlier_is_new = t < seen.last_ts
        if not anonymized and last_point is not None:
            # Most requests of a principal come from where its last one came from: 0 km, as the
            # formula gives for equal coordinates, without its seven trigonometric calls.
            same_place = point.lat == last_point.lat and point.lon == last_point.lon
            distance = 0.0 if same_place else haversine_km(last_point, point)
            elapsed_h = max(abs(t - seen.last_ts), 1.0) / 3600.0  # 1 s floor: same-second hops
            speed = distance / elapsed_h
            if distance >= self.min_distance_km and speed > self.max_speed_kmh:
                last = {"ip": seen.last_ip, "lat": last_point.lat, "lon": last_point.lon,
                        "country": last_point.country}
                this = {"ip": event.client_ip, "lat": point.lat, "lon": point.lon, "country": point.country}
                first, second = (this, last) if earlier_is_new else (last, this)
                samples = ([event.event_id, seen.last_event_id] if earlier_is_new
                           else [seen.last_event_id, event.event_id])
                # Stamped when the pair is complete in event time: the later of the two.
                known_at = max(now, datetime.fromtimestamp(seen.last_ts, tz=now.tzinfo))
                out.append(self._detection(event, known_at, "principal", event.principal, "impossible_travel",
                                           "high", f"{event.principal} moved {distance:.0f} km in "
                                           f"{elapsed_h * 60:.1f} min ({speed:.0f} km/h)", {
                                               "distance_km": round(distance, 1),
                                               "elapsed_s": round(abs(t - seen.last_ts), 3),
                                               "speed_kmh": round(speed, 1),
                                               "max_speed_kmh": self.max_speed_kmh,
                                               "min_distance_km": self.min_distance_km,
                                               "from": first, "to": second,
                                           }, samples))
        learned = (t - seen.first_ts >= self.learning_s
                   and seen.located_events >= self.min_learning_events)
        if point.country and point.country not in seen.countries:
            if learned:
                out.append(self._detection(event, now, "principal", event.principal, "new_country", "medium",
                                           f"{event.principal} seen in {point.country} for the first time", {
                                               "country": point.country,
                                               "known_countries": sorted(seen.countries),
                                               "learning_s": self.learning_s,
                                               "located_events": seen.located_events,
                                           }))
            seen.countries.add(point.country)
        # The anchor of travel: the principal's newest request (event time) from a located network.
        if not anonymized and (last_point is None or not earlier_is_new):
            seen.last_ts, seen.last_point = t, point
            seen.last_ip, seen.last_event_id = event.client_ip, event.event_id
        seen.located_events += 1
        return out

    def _detection(self, event: ObservedRequest, now: datetime, scope: str, value: str, kind: str,
                   severity: str, summary: str, evidence: dict, samples: list[str] | None = None
                   ) -> Detection:
        return Detection(detection_id=f"{DETECTOR}:{kind}:{event.event_id}", ts=now, detector=DETECTOR,
                         scope=scope, value=value, severity=severity, summary=summary,
                         evidence={"kind": kind, **evidence},
                         sample_event_ids=samples or [event.event_id])

    def _sweep(self, t: float) -> None:
        # Forget principals silent for state_ttl_s; at most once per hour of event time.
        if t - self._last_sweep < 3600.0:
            return
        self._last_sweep = t
        cutoff = t - self.state_ttl_s
        for principal in [p for p, s in self._seen.items() if s.last_ts < cutoff]:
            del self._seen[principal]

    def __len__(self) -> int:
        """Principals currently remembered."""
        return len(self._seen)
