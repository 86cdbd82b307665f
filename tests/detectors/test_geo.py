"""The geo-anomaly detector: impossible travel, new country, country policy."""

from __future__ import annotations

import csv
import pickle
from datetime import datetime, timedelta, timezone
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from detectors.geo import GeoAnomalyDetector, GeoHistory, GeoPoint, haversine_km
from gatewatch import geoip
from gatewatch.events import RequestEvent
from gatewatch.settings import DEFAULT_ANONYMIZER_ASNS, GeoAnomalySettings, load_settings

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=timezone.utc)
LONDON, NEW_YORK = GeoPoint(51.5074, -0.1278, "GB"), GeoPoint(40.7128, -74.0060, "US")
PARIS, WOKING = GeoPoint(48.8566, 2.3522, "FR"), GeoPoint(51.3190, -0.5580, "GB")
SAO_PAULO = GeoPoint(-23.5505, -46.6333, "BR")
#: Orange (a French home line), M247 (a VPN host, in the default list), Comcast (US homes),
#: Claro (Brazilian homes and phones).
ORANGE, M247, COMCAST, CLARO = 3215, 9009, 7922, 28573


def ev(minutes: float, principal: str = "key_a", ip: str = "192.0.2.10", asn: int | None = None) -> RequestEvent:
    ts = T0 + timedelta(minutes=minutes)
    return RequestEvent(event_id=f"e{minutes}", ts=ts, client_ip=ip, method="GET", host="api",
                        path="/users/1", route="/users/{id}", status=200, principal=principal, asn=asn)


def run_from(det: GeoAnomalyDetector, steps: list[tuple[float, GeoPoint, int | None]]):
    """Like :func:`run`, each request also naming its network (``event.asn``)."""
    out = []
    for minutes, point, asn in steps:
        e = ev(minutes, asn=asn)
        out += det.process(e, point, now=e.ts)
    return out


def run(det: GeoAnomalyDetector, steps: list[tuple[float, GeoPoint | None]], principal: str = "key_a"):
    out = []
    for minutes, point in steps:
        e = ev(minutes, principal)
        out += det.process(e, point, now=e.ts)
    return out


def kinds(detections) -> list[str]:
    return [d.evidence["kind"] for d in detections]


def test_haversine_known_distance() -> None:
    # London–New York great-circle distance is about 5570 km.
    assert haversine_km(LONDON, NEW_YORK) == pytest.approx(5570, rel=0.01)
    assert haversine_km(PARIS, PARIS) == 0.0


def test_impossible_travel_fires_on_speed_above_limit() -> None:
    det = GeoAnomalyDetector(learning_s=0, min_learning_events=0)
    found = run(det, [(0, LONDON), (30, NEW_YORK)])
    travel = [d for d in found if d.evidence["kind"] == "impossible_travel"]
    assert len(travel) == 1 and travel[0].scope == "principal" and travel[0].value == "key_a"
    assert travel[0].evidence["speed_kmh"] > 900 and travel[0].sample_event_ids == ["e0", "e30"]


def test_a_real_flight_is_not_impossible() -> None:
    det = GeoAnomalyDetector(learning_s=0, min_learning_events=0)
    assert "impossible_travel" not in kinds(run(det, [(0, LONDON), (8 * 60, NEW_YORK)]))


def test_short_hops_within_geolocation_error_are_ignored() -> None:
    det = GeoAnomalyDetector()
    # A phone changing cells: ~40 km in one minute is 2400 km/h, but under min_distance_km.
    assert run(det, [(0, LONDON), (1, WOKING), (2, LONDON)]) == []


def test_new_country_only_after_learning_and_once() -> None:
    det = GeoAnomalyDetector(learning_s=3600, min_learning_events=3, max_speed_kmh=1e9)
    steps = [(0, LONDON), (10, LONDON), (20, PARIS)]  # learning: Paris is learned, not alerted
    steps += [(61 + i, LONDON) for i in range(3)]
    steps += [(120, NEW_YORK), (130, NEW_YORK), (140, PARIS)]
    assert kinds(run(det, steps)) == ["new_country"]


def test_history_from_before_keeps_the_learning_and_the_countries() -> None:
    """After a restart the detector starts empty; with the principal's history from before
    (:class:`GeoHistory`, e.g. read from the store) its first request is judged as it
    would have been without the restart."""
    known = {"key_a": GeoHistory(first_ts=(T0 - timedelta(hours=2)).timestamp(), located_events=5,
                                 countries=frozenset({"GB"}))}
    det = GeoAnomalyDetector(learning_s=3600, min_learning_events=3, max_speed_kmh=1e9, history=known.get)
    found = run(det, [(0, NEW_YORK), (1, NEW_YORK), (2, LONDON)])
    assert kinds(found) == ["new_country"] and found[0].evidence["known_countries"] == ["GB"]
    assert found[0].evidence["located_events"] == 5
    forgetful = GeoAnomalyDetector(learning_s=3600, min_learning_events=3, max_speed_kmh=1e9)
    assert run(forgetful, [(0, NEW_YORK)]) == []   # without it: learning starts over
    det = GeoAnomalyDetector(learning_s=3600, min_learning_events=3, max_speed_kmh=1e9, history=known.get)
    assert run(det, [(0, LONDON), (1, NEW_YORK)], principal="key_b") == []   # no history: learning
    still_learning = {"key_a": GeoHistory(T0.timestamp() - 600, 50, frozenset({"GB"}))}
    det = GeoAnomalyDetector(learning_s=3600, min_learning_events=3, history=still_learning.get)
    assert run(det, [(0, NEW_YORK)]) == []


def test_country_policy_names_the_ip() -> None:
    det = GeoAnomalyDetector(allowed_countries={"key_a": frozenset({"GB"})}, learning_s=1e9)
    found = run(det, [(0, LONDON), (600, PARIS)])
    assert [(d.evidence["kind"], d.scope, d.value) for d in found] == [("country_policy", "ip", "192.0.2.10")]


def test_missing_principal_or_location_changes_nothing() -> None:
    det = GeoAnomalyDetector(learning_s=0, min_learning_events=0)
    assert run(det, [(0, None), (1, LONDON)], principal="") == []
    assert run(det, [(0, LONDON), (1, None), (2, LONDON)]) == [] and len(det) == 1


def test_state_pickles_and_resumes() -> None:
    det = GeoAnomalyDetector(learning_s=0, min_learning_events=0)
    run(det, [(0, LONDON)])
    restored = pickle.loads(pickle.dumps(det))
    assert "impossible_travel" in kinds(run(restored, [(20, NEW_YORK)]))


def test_silent_principals_are_forgotten() -> None:
    det = GeoAnomalyDetector(state_ttl_s=86400)
    run(det, [(0, LONDON)], principal="old")
    run(det, [(3 * 24 * 60, LONDON)], principal="new")
    assert len(det) == 1


def test_located_by_the_real_geo_database_ipv4_and_ipv6() -> None:
    geo_dir = load_settings().geo.dir.expanduser()
    if not geoip.installed(geo_dir):
        geoip.install(geo_dir)
    db = geoip.GeoIp(geo_dir, with_asn=False)

    def point(ip: str) -> GeoPoint:
        info = db.lookup(ip)
        assert info is not None and info.lat is not None
        return GeoPoint(info.lat, info.lon, info.country)

    det = GeoAnomalyDetector(learning_s=0, min_learning_events=0)
    first, second = ev(0, ip="81.2.69.160"), ev(10, ip="2a02:26f0::1")  # London, then Singapore
    assert det.process(first, point(first.client_ip), now=first.ts) == []
    assert "impossible_travel" in kinds(det.process(second, point(second.client_ip), now=second.ts))


def test_out_of_order_pair_is_judged_in_event_time_order() -> None:
    det = GeoAnomalyDetector(learning_s=0, min_learning_events=0)
    later, earlier = ev(30), ev(0)
    det.process(later, NEW_YORK, now=later.ts)
    found = det.process(earlier, LONDON, now=earlier.ts)
    travel = [d for d in found if d.evidence["kind"] == "impossible_travel"]
    assert travel[0].evidence["from"]["country"] == "GB" and travel[0].evidence["to"]["country"] == "US"
    assert travel[0].sample_event_ids == ["e0", "e30"]
    assert travel[0].ts == later.ts, "stamped when the pair is complete, in event time"
    # The newest point stays the reference: a later hop from New York is judged from there.
    nxt = ev(40)
    assert det.process(nxt, NEW_YORK, now=nxt.ts) == []


# -- VPN and hosting networks -----------------------------------------------------------------


def test_turning_a_vpn_on_and_off_is_not_travel() -> None:
    """The quality harness's VPN user: at home in France, then a US exit of M247, then home."""
    det = GeoAnomalyDetector(learning_s=0, min_learning_events=0)
    assert M247 in DEFAULT_ANONYMIZER_ASNS
    steps = [(0, PARIS, ORANGE), (1, PARIS, ORANGE), (2, NEW_YORK, M247), (3, NEW_YORK, M247), (9, PARIS, ORANGE)]
    assert "impossible_travel" not in kinds(run_from(det, steps))


def test_the_same_hop_from_a_home_network_is_still_travel() -> None:
    det = GeoAnomalyDetector(learning_s=0, min_learning_events=0)
    found = run_from(det, [(0, PARIS, ORANGE), (2, NEW_YORK, COMCAST)])
    assert kinds(found) == ["impossible_travel", "new_country"]


def test_an_attacker_at_home_is_judged_from_where_the_victim_was_before_the_vpn() -> None:
    det = GeoAnomalyDetector(learning_s=0, min_learning_events=0)
    steps = [(0, PARIS, ORANGE), (5, NEW_YORK, M247), (20, NEW_YORK, M247), (30, SAO_PAULO, CLARO)]
    [travel] = [d for d in run_from(det, steps) if d.evidence["kind"] == "impossible_travel"]
    assert travel.evidence["from"]["country"] == "FR" and travel.evidence["to"]["country"] == "BR"
    assert travel.sample_event_ids == ["e0", "e30"] and travel.evidence["elapsed_s"] == 30 * 60


def test_a_first_request_from_a_vpn_anchors_nothing() -> None:
    det = GeoAnomalyDetector(learning_s=0, min_learning_events=0)
    steps = [(0, NEW_YORK, M247), (1, PARIS, ORANGE), (2, PARIS, ORANGE), (3, SAO_PAULO, CLARO)]
    found = [d for d in run_from(det, steps) if d.evidence["kind"] == "impossible_travel"]
    assert [d.sample_event_ids for d in found] == [["e2", "e3"]]


def test_the_anonymizer_networks_are_a_setting() -> None:
    steps = [(0, PARIS, ORANGE), (2, NEW_YORK, M247)]
    every_network = GeoAnomalyDetector(learning_s=0, min_learning_events=0, anonymizer_asns=())
    assert "impossible_travel" in kinds(run_from(every_network, steps))
    cfg = GeoAnomalySettings(learning_s=0, min_learning_events=0, anonymizer_asns=[COMCAST])
    assert GeoAnomalyDetector.from_settings(cfg).anonymizer_asns == frozenset({COMCAST})
    assert "impossible_travel" in kinds(run_from(GeoAnomalyDetector.from_settings(cfg), steps))
    assert "impossible_travel" not in kinds(run_from(GeoAnomalyDetector.from_settings(cfg),
                                                     [(0, PARIS, ORANGE), (2, NEW_YORK, COMCAST)]))
    assert GeoAnomalySettings().anonymizer_asns == list(DEFAULT_ANONYMIZER_ASNS)


def _address_in(geo_dir: Path, db: geoip.GeoIp, asn: int, country: str) -> str:
    """The first address of a range of ``asn`` that the city database places in ``country``."""
    with open(geo_dir / "asn-ipv4-num.csv", newline="") as fh:
        for first, _last, range_asn, _org in csv.reader(fh):
            if int(range_asn) != asn:
                continue
            ip = str(IPv4Address(int(first) + 1))
            info = db.lookup(ip)
            if info is not None and info.lat is not None and info.country == country:
                return ip
    raise LookupError(f"no AS{asn} address in {country}")


def test_vpn_user_located_and_attributed_by_the_real_geo_data() -> None:
    """Addresses drawn from the real ASN ranges, located and attributed (ASN) by the real geo
    data as the gateway and the worker do: the VPN exit is left out, a US home line is not."""
    geo_dir = load_settings().geo.dir.expanduser()
    if not geoip.installed(geo_dir):
        geoip.install(geo_dir)
    db = geoip.GeoIp(geo_dir, with_asn=True)
    home, exit_, us_home = (_address_in(geo_dir, db, asn, cc)
                            for asn, cc in ((ORANGE, "FR"), (M247, "US"), (COMCAST, "US")))

    def request(minutes: float, ip: str):
        info = db.lookup(ip)
        assert info is not None and info.lat is not None
        event = ev(minutes, ip=ip, asn=info.asn)
        return event, GeoPoint(info.lat, info.lon, info.country)

    det = GeoAnomalyDetector(learning_s=0, min_learning_events=0)
    found = []
    for minutes, ip in ((0, home), (2, exit_), (4, exit_), (6, us_home)):
        event, point = request(minutes, ip)
        found += [(minutes, d.evidence["kind"]) for d in det.process(event, point, now=event.ts)]
    assert (2, "impossible_travel") not in found and (4, "impossible_travel") not in found
    assert (6, "impossible_travel") in found
