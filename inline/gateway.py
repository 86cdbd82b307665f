"""The gatewatch gateway: the mitmdump script that loads the addons, in order.

Started by :func:`gatewatch.commands.gateway_command` as
``mitmdump --mode reverse:UPSTREAM@HOST:PORT -s inline/gateway.py``. Every
option is named ``gatewatch_*`` and defaults to the ``GATEWATCH_*``
environment settings (:func:`gatewatch.settings.load_settings`); ``--set
gatewatch_x=...`` overrides one.

Order matters. mitmproxy runs each hook through the chain in list order,
and all ``requestheaders`` hooks run before any ``request`` hook:

``requestheaders``
    Routes (client IP, normalized path, route, event id) →
    Authentication (identify the principal; does not answer yet).
``request`` — the first addon that answers wins; later ones skip the flow
    Routes (400 bad path) → Enforcement (403 ban on ip/prefix/principal) →
    RateLimit (429 per IP, then per principal) → Authentication (401) →
    Login (username hash on login routes).
``response`` / ``error``
    Login (outcome) → EventShipper (``X-Request-Id``, one event per request).

So a banned or flooding client gets 403/429 whatever key it sends, and
cannot use the gateway to test keys.
"""

from __future__ import annotations

from inline.authentication import Authentication
from inline.enforcement import Enforcement
from inline.events_shipper import EventShipper
from inline.login import Login
from inline.ratelimit import RateLimit
from inline.routes import Routes

addons = [
    Routes(),
    Enforcement(),
    RateLimit(),
    Authentication(),
    Login(),
    EventShipper(),
]
