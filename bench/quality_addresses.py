"""Client addresses for the quality harness: real public IPv4 addresses, picked from a seed
in a given country and (optionally) autonomous system.

The harness simulates clients with ``X-Forwarded-For`` from a trusted proxy, so
the addresses it sends must be ones the geo data places somewhere: the gateway
records their country and ASN, and the worker's geo detector locates them with
the city database. Both files come from ``gatewatch geo install`` (DB-IP Lite
city ``.mmdb``, CC-BY-4.0, IP Geolocation by DB-IP; ASN ranges from the npm
package ``@ip-location-db/asn``). An address is drawn from a random ASN range
(of the wanted ASN, or of any), then kept only if the city database locates it
(coordinates present) in the wanted country; each address and each /24 is
handed out once, so no two actors share a network unless asked to.
"""

from __future__ import annotations

import csv
import ipaddress
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from gatewatch.geoip import GeoDataError, GeoIp

#: Draws before :meth:`AddressBook.pick` gives up on a (country, ASN).
MAX_DRAWS = 50_000


@dataclass(frozen=True)
class Address:
    """A located public address: ``ip`` text, ISO country, city, ``lat``/``lon`` (degrees), ASN."""

    ip: str
    country: str
    city: str | None
    lat: float
    lon: float
    asn: int


class AddressBook:
    """Seeded picker of located IPv4 addresses (see the module docstring).

    ``geo_dir``: the directory of ``gatewatch geo install``. Raises
    :class:`gatewatch.geoip.GeoDataError` when the city database or the IPv4
    ASN ranges are missing or unreadable.
    """

    def __init__(self, geo_dir: Path, seed: int) -> None:
        geo_dir = Path(geo_dir).expanduser()
        self.geo = GeoIp(geo_dir, with_asn=False)
        self.rng = random.Random(seed)
        self.ranges: list[tuple[int, int, int]] = []  # (first, last, asn), integer addresses
        self.by_asn: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
        path = geo_dir / "asn-ipv4-num.csv"
        try:
            with open(path, newline="") as fh:
                for first, last, asn, _org in csv.reader(fh):
                    row = (int(first), int(last), int(asn))
                    self.ranges.append(row)
                    self.by_asn[row[2]].append(row)
        except (OSError, ValueError) as exc:
            raise GeoDataError(f"cannot read ASN ranges {path} ({exc}); run `gatewatch geo install`") from exc
        self._used_nets: set[int] = set()

    def pick(self, country: str | None = None, asn: int | None = None) -> Address:
        """An address in a /24 not handed out before, located in ``country`` (any when None)
        within ``asn`` (any when None). Raises ``LookupError`` when
        :data:`MAX_DRAWS` draws find none (an ASN without ranges, or one the
        city database places elsewhere).
        """
        pool = self.by_asn.get(asn, []) if asn is not None else self.ranges
        if not pool:
            raise LookupError(f"no IPv4 ranges for AS{asn}")
        for _ in range(MAX_DRAWS):
            first, last, range_asn = self.rng.choice(pool)
            n = self.rng.randint(first, last)
            net = n >> 8
            if net in self._used_nets or n & 0xFF in (0, 255):
                continue
            addr = ipaddress.IPv4Address(n)
            if not addr.is_global:
                continue
            info = self.geo.lookup(str(addr))
            if info is None or info.lat is None or info.lon is None or info.country is None:
                continue
            if country is not None and info.country != country:
                continue
            self._used_nets.add(net)
            return Address(str(addr), info.country, info.city, info.lat, info.lon, range_asn)
        raise LookupError(f"no address in {country or 'any country'} / AS{asn or 'any'} "
                          f"after {MAX_DRAWS} draws")

    def close(self) -> None:
        """Release the memory-mapped city database."""
        self.geo.close()
