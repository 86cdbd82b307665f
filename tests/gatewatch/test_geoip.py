"""Geo-IP lookups on the real DB-IP Lite data (installed by `gatewatch geo install`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatewatch import geoip
from gatewatch.settings import load_settings


@pytest.fixture(scope="module")
def geo() -> geoip.GeoIp:
    geo_dir = load_settings().geo.dir.expanduser()
    if not geoip.installed(geo_dir):
        geoip.install(geo_dir)  # fails loudly (GeoDataError) when npm cannot fetch it
    return geoip.GeoIp(geo_dir)


@pytest.mark.parametrize("ip,country,asn", [
    ("8.8.8.8", "US", 15169),
    ("81.2.69.160", "GB", 20712),
    ("1.1.1.1", "AU", 13335),
    ("::ffff:1.1.1.1", "AU", 13335),  # IPv4-mapped IPv6, as ClickHouse stores IPv4
    ("2a02:26f0::1", "SG", 20940),
])
def test_public_addresses_resolve(geo: geoip.GeoIp, ip: str, country: str, asn: int) -> None:
    info = geo.lookup(ip)
    assert info is not None and info.country == country and info.asn == asn
    assert info.lat is not None and -90 <= info.lat <= 90 and -180 <= info.lon <= 180


@pytest.mark.parametrize("ip", ["127.0.0.1", "10.1.2.3", "192.168.0.1", "::1", "fe80::1", "garbage", ""])
def test_non_global_or_malformed_addresses_have_no_location(geo: geoip.GeoIp, ip: str) -> None:
    assert geo.lookup(ip) is None


def test_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(geoip.GeoDataError, match="gatewatch geo install"):
        geoip.GeoIp(tmp_path)


def test_asn_ranges_reject_unsorted_files(tmp_path: Path) -> None:
    (tmp_path / "v4.csv").write_text('200,300,2,"B"\n100,150,1,A\n')
    (tmp_path / "v6.csv").write_text("")
    with pytest.raises(geoip.GeoDataError, match="not sorted"):
        geoip.AsnRanges.from_csv(tmp_path / "v4.csv", tmp_path / "v6.csv")
