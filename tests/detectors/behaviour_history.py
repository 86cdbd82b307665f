"""Synthetic API traffic of principals for the behaviour model, from a seed.

Benign principals each have a profile — a usual request rate (log-normal
across principals, 1–20 req/min), a few routes, their own object ids, an
error rate of 0–8 %, a home country (a few also travel to a second one) —
and a day shape (busier in the middle of the range). Attack principals are
what the model exists for: a scraper walking foreign object ids at attack-tool
speed from a new country, and a principal flooding one route with errors.

Used by the detector tests (training fixture of the shared check suite), the
``gatewatch train`` test (seeded into a real chDB store) and the worker test.
"""

from __future__ import annotations

import functools
import math
import random
from datetime import datetime, timedelta, timezone

from detectors.behaviour_features import windows_of
from detectors.behaviour_model import BehaviourModel, fit_model
from gatewatch.events import RequestEvent

T0 = datetime(2025, 3, 1, 0, 0, tzinfo=timezone.utc)
ROUTES = [("GET", "/orders/{id}"), ("GET", "/orders"), ("GET", "/users/{id}"), ("POST", "/orders"),
          ("GET", "/items/{id}"), ("GET", "/health"), ("PUT", "/users/{id}"), ("GET", "/books/{title}")]
COUNTRIES = ["FR", "DE", "GB", "US", "ES", "IT", "NL", "SE"]
SCRAPER, FLOODER = "key-scraper", "key-flooder"


def _path(route: str, oid: int) -> str:
    return route.replace("{id}", str(oid)).replace("{title}", f"title-{oid}")


def _event(principal: str, ip: str, ts: datetime, method: str, route: str, oid: int, status: int,
           country: str, eid: str) -> RequestEvent:
    return RequestEvent(event_id=eid, ts=ts, client_ip=ip, method=method, host="api.example",
                        path=_path(route, oid), route=route, status=status, latency_ms=8.0,
                        principal=principal, auth="ok", country=country)


def benign_history(seed: int = 7, principals: int = 12, hours: float = 6.0, start: datetime = T0,
                   traffic_seed: int | None = None) -> list[RequestEvent]:
    """Requests of ``principals`` benign principals over ``hours`` from ``start``, in time order.
    The principals' profiles come from ``seed``, their requests from ``traffic_seed`` (default
    ``seed``): the same principals on another day is another ``traffic_seed``."""
    profiles = random.Random(seed)
    rng = random.Random(seed if traffic_seed is None else traffic_seed)
    out: list[RequestEvent] = []
    windows = int(hours * 12)
    for p in range(principals):
        principal, ip = f"key-b{p:02d}", f"198.51.100.{10 + p}"
        rate = min(20.0, max(1.0, profiles.lognormvariate(math.log(4.0), 0.6)))  # req/min
        routes = profiles.sample(ROUTES, profiles.randint(2, 5))
        own = profiles.sample(range(1000, 9999), profiles.randint(5, 40))
        error_rate = profiles.uniform(0.0, 0.08)
        home = COUNTRIES[p % len(COUNTRIES)]
        away = COUNTRIES[(p + 3) % len(COUNTRIES)] if p % 4 == 0 else None
        for w in range(windows):
            shape = 0.5 + math.sin(math.pi * (w + 0.5) / windows)  # busier mid-range
            n = _poisson(rng, rate * 5 * shape)
            country = away if away and rng.random() < 0.1 else home
            for i in range(n):
                ts = start + timedelta(milliseconds=300_000 * w + rng.randrange(300_000))  # ms: as stored
                method, route = rng.choice(routes)
                status = rng.choice([403, 404, 500]) if rng.random() < error_rate else 200
                out.append(_event(principal, ip, ts, method, route, rng.choice(own), status, country,
                                  f"b{seed}.{traffic_seed}-{p}-{w}-{i}"))
    out.sort(key=lambda e: (e.ts, e.event_id))
    return out


def scraper(start: datetime, seed: int = 1, seconds: float = 290.0, rate_per_s: float = 7.0,
            principal: str = SCRAPER, country: str = "KP") -> list[RequestEvent]:
    """A principal walking foreign order ids at ``rate_per_s`` from a new country: mostly 403/404."""
    rng = random.Random(seed)
    n = int(seconds * rate_per_s)
    return [_event(principal, "203.0.113.80", start + timedelta(seconds=i / rate_per_s), "GET", "/orders/{id}",
                   20_000 + i, 200 if rng.random() < 0.3 else rng.choice([403, 404]), country, f"scr-{i:05d}")
            for i in range(n)]


def flooder(start: datetime, seconds: float = 290.0, rate_per_s: float = 4.0) -> list[RequestEvent]:
    """A principal hammering one route with bad input (all 400/422), from its usual country."""
    n = int(seconds * rate_per_s)
    return [_event(FLOODER, "203.0.113.81", start + timedelta(seconds=i / rate_per_s), "POST", "/orders",
                   0, 400 if i % 2 else 422, "FR", f"fld-{i:05d}") for i in range(n)]


@functools.cache
def trained_model() -> BehaviourModel:
    """The model of the detector and worker tests: a day of the 12 principals of seed 7
    from :data:`T0`, forest seed 0 (the same as ``gatewatch train`` fits)."""
    until = T0 + timedelta(days=1)
    return fit_model(windows_of(benign_history(seed=7, hours=24)), since=T0.timestamp(),
                     until=until.timestamp(), trained_at=until.isoformat(), seed=0)


def _poisson(rng: random.Random, lam: float) -> int:
    # Knuth's method; fine for the small means used here.
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1
