"""Geo enrichment: the client's country and ASN, recorded once per request.

Runs in ``requestheaders`` right after :class:`inline.routes.Routes` has
settled the client address; writes ``facts.country`` and ``facts.asn``,
which decision enforcement (``asn``/``country`` scopes) and the request
event read. Data: the DB-IP Lite country ``.mmdb`` and the ASN ranges that
``gatewatch geo install`` puts in ``settings.geo.dir`` (see
:mod:`gatewatch.geoip`); the country file is used rather than the city
files to keep each gateway process ~100 MB smaller (memory-mapped pages
count in RSS). A lookup costs a few microseconds.

Fail-open: without the data files the addon warns once at start-up and
records nothing (no country/ASN in events, asn/country decisions fall back
to the geo hook of :mod:`inline.enforcement`, if any). Loopback and private
addresses have no location.

Options: ``gatewatch_geo_dir`` (directory of the data), ``gatewatch_geo_enabled``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mitmproxy import ctx, http

from gatewatch.geoip import GeoDataError, GeoIp
from gatewatch.settings import load_settings
from inline.flowstate import get_facts

logger = logging.getLogger(__name__)


class GeoEnrichment:
    """Addon: look the client address up once and record country and ASN in the flow's facts."""

    def __init__(self) -> None:
        self.db: GeoIp | None = None
        self.lookups = 0

    def load(self, loader) -> None:
        s = load_settings()
        loader.add_option("gatewatch_geo_dir", str, str(s.geo.dir),
                          "Directory of the geo-IP data (`gatewatch geo install`).")
        loader.add_option("gatewatch_geo_enabled", bool, s.geo.gateway_enabled,
                          "Record the client's country and ASN (needed for asn/country decisions).")

    def configure(self, updated: set[str]) -> None:
        if not updated & {"gatewatch_geo_dir", "gatewatch_geo_enabled"}:
            return
        if self.db is not None:
            self.db.close()
            self.db = None
        if not ctx.options.gatewatch_geo_enabled:
            return
        try:
            self.db = GeoIp(Path(ctx.options.gatewatch_geo_dir), detail="country", with_as_org=False)
        except GeoDataError as exc:
            # Warning, not error: an error log during start-up makes mitmdump exit.
            logger.warning("geo enrichment off: %s", exc)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        facts = get_facts(flow)
        if self.db is None or facts is None or not facts.client_ip:
            return
        info = self.db.lookup(facts.client_ip)
        self.lookups += 1
        if info is not None:
            facts.asn, facts.country = info.asn, info.country

    def done(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
