"""The gatewatch gateway: the mitmdump script that loads the addons, in order.

Started by :func:`gatewatch.commands.gateway_command` as
``mitmdump --mode reverse:UPSTREAM@HOST:PORT -s inline/gateway.py``. Every
option is named ``gatewatch_*`` and defaults to the ``GATEWATCH_*``
environment settings (:func:`gatewatch.settings.load_settings`); ``--set
gatewatch_x=...`` overrides one.

Order matters. mitmproxy runs each hook through the chain in list order,
and all ``requestheaders`` hooks run before any ``request`` hook:

before any hook
    SizeLimits (431/414 for an oversized HTTP/1 head, answered before a
    flow exists; 413 for a body above the limit, through mitmproxy's
    ``body_size_limit``, then the ``error`` hooks run).
``request``, first
    Framing (a de-chunked body goes upstream with ``Content-Length``).

``requestheaders``
    Routes (client IP through trusted proxies, normalized path, route,
    event id) → GeoEnrichment (country, ASN) → Authentication (identify
    the principal; does not answer yet).
``request`` — the first addon that answers wins; later ones skip the flow
    Routes (400 bad path) → Lists (403 deny-list; marks allow-listed
    clients) → Enforcement (403 ban / 429 throttle on ip, prefix, principal,
    asn, country) → RateLimit (429 per IP, then per principal) →
    Authentication (401) → Login (username hash on login routes) →
    Enforcement's login stage (username decisions) → CircuitBreaker (503
    while the route's upstream circuit is open).
``response`` / ``error``
    Login (outcome) → CircuitBreaker (records the upstream's outcome) →
    Metrics (counts) → EventShipper (``X-Request-Id``, one event per
    request; last, so every other addon has recorded its facts).

So a banned or flooding client gets 403/429 whatever key it sends, and
cannot use the gateway to test keys; allow-listed clients skip decisions
and rate limits but not authentication.

To add an addon, put it in :data:`addons` where its hooks must run
relative to the others; nothing else needs to change.
"""

from __future__ import annotations

from inline.authentication import Authentication
from inline.circuit_breaker import CircuitBreaker
from inline.enforcement import Enforcement
from inline.events_shipper import EventShipper
from inline.framing import Framing
from inline.geo import GeoEnrichment
from inline.lists import Lists
from inline.login import Login
from inline.metrics import Metrics
from inline.ratelimit import RateLimit
from inline.routes import Routes
from inline.size_limits import SizeLimits

enforcement = Enforcement()

addons = [
    SizeLimits(),
    Framing(),
    Routes(),
    GeoEnrichment(),
    Lists(),
    enforcement,
    RateLimit(),
    Authentication(),
    Login(),
    enforcement.after_login,
    CircuitBreaker(),
    Metrics(),
    EventShipper(),
]
