"""Per-principal window features of the behaviour model: the one place they are computed.

Both the worker (:class:`detectors.behaviour.BehaviourDetector`) and ``gatewatch
train`` (:func:`windows_of`) turn request events into these features with
:class:`BehaviourWindows`, so that the model scores exactly what it was trained on.

Windows are tumbling, :data:`WINDOW_S` (300 s) long and aligned on the epoch
(``[k·300, (k+1)·300)`` in event time), one per principal with traffic in it.
Only upstream answers to an authenticated principal count (what the worker's
by-principal topic carries; gateway answers — 401, 429, a decision's 403 — do
not). The features (:data:`FEATURES`):

* ``request_rate_per_min`` — requests in the window / 5;
* ``distinct_routes`` — distinct ``METHOD /route/template`` pairs;
* ``distinct_object_ids`` — distinct (route, object id) pairs on routes with a
  ``{parameter}`` (the id read from the path as :func:`detectors.bola.object_id`
  does), at most :data:`MAX_DISTINCT` counted per window;
* ``error_share`` — share of answers with status >= 400 (0..1);
* ``new_country`` — 1.0 when the window holds a country (the event's
  ``country``, located by the gateway) that none of the principal's earlier
  windows held, 0.0 otherwise; a principal's first window, or one with no
  located request, is 0.0.

A window closes when ``now`` (event time, or the low watermark of a merged
stream) passes its end plus ``allowed_lateness_s``; an event for a window
already closed is counted in ``late_events`` and dropped. Pure: no clock, no
I/O; state is bounded by the principals active within ``state_ttl_s``.

Example::

    >>> from datetime import datetime, timedelta, timezone
    >>> from gatewatch.events import RequestEvent
    >>> t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    >>> def get(i, status=200):
    ...     return RequestEvent(event_id=f"e{i}", ts=t0 + timedelta(seconds=i), client_ip="192.0.2.1",
    ...         method="GET", host="api", path=f"/orders/{i}", route="/orders/{id}", status=status,
    ...         principal="key-1", country="FR")
    >>> [w.values for w in windows_of([get(1), get(2, 404), get(3), get(400)])]
    [(0.6, 1.0, 3.0, 0.3333333333333333, 0.0), (0.2, 1.0, 1.0, 0.0, 0.0)]
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from math import floor

from detectors.bola import object_id
from gatewatch.events import ObservedRequest

#: Length of a behaviour window, seconds (tumbling, aligned on the epoch).
WINDOW_S = 300.0
#: The features, in the order of :attr:`WindowFeatures.values` and of the model's columns.
FEATURES: tuple[str, ...] = ("request_rate_per_min", "distinct_routes", "distinct_object_ids",
                             "error_share", "new_country")
#: Distinct object ids counted per window at most (bounds memory under a flood).
MAX_DISTINCT = 10_000
#: Event ids kept per window as samples for the evidence.
MAX_SAMPLES = 10
#: Countries remembered per principal for ``new_country`` (oldest forgotten first).
MAX_COUNTRIES = 64


@dataclass(frozen=True, slots=True)
class WindowFeatures:
    """One closed window of one principal: ``start``/``end`` in epoch seconds,
    ``requests`` counted, ``values`` in :data:`FEATURES` order, first event ids."""

    principal: str
    start: float
    end: float
    requests: int
    values: tuple[float, ...]
    sample_event_ids: tuple[str, ...]

    def as_dict(self) -> dict[str, float]:
        """Feature name -> value."""
        return dict(zip(FEATURES, self.values))

    @property
    def start_dt(self) -> datetime:
        return datetime.fromtimestamp(self.start, tz=timezone.utc)

    @property
    def end_dt(self) -> datetime:
        return datetime.fromtimestamp(self.end, tz=timezone.utc)


@dataclass(slots=True)
class _Window:
    requests: int = 0
    errors: int = 0
    routes: set[str] = field(default_factory=set)
    objects: set[str] = field(default_factory=set)
    countries: set[str] = field(default_factory=set)
    samples: list[str] = field(default_factory=list)

    def add(self, event: ObservedRequest) -> None:
        self.requests += 1
        if event.status >= 400:
            self.errors += 1
        self.routes.add(f"{event.method} {event.route}")
        if len(self.objects) < MAX_DISTINCT:
            values = object_id(event.path, event.route)
            if values is not None:
                self.objects.add(f"{event.route}|{'/'.join(values)}")
        if event.country:
            self.countries.add(event.country)
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(event.event_id)


@dataclass(slots=True)
class _Principal:
    last_ts: float
    windows: dict[float, _Window] = field(default_factory=dict)
    countries: OrderedDict[str, None] = field(default_factory=OrderedDict)


def window_start(epoch_s: float, window_s: float = WINDOW_S) -> float:
    """Start (epoch seconds) of the window holding ``epoch_s``."""
    return floor(epoch_s / window_s) * window_s


class BehaviourWindows:
    """Open windows per principal and the features of those that close (module docstring).

    ``window_s`` (s), ``allowed_lateness_s`` (s after a window's end before it closes),
    ``state_ttl_s`` (s: a principal idle that long is forgotten, countries included;
    at least ``window_s + allowed_lateness_s``). Raises ``ValueError`` otherwise.
    """

    def __init__(self, window_s: float = WINDOW_S, allowed_lateness_s: float = 5.0,
                 state_ttl_s: float = 7 * 86_400.0) -> None:
        if window_s <= 0 or allowed_lateness_s < 0 or state_ttl_s < window_s + allowed_lateness_s:
            raise ValueError("need window_s > 0, allowed_lateness_s >= 0, "
                             "state_ttl_s >= window_s + allowed_lateness_s")
        self.window_s = float(window_s)
        self.allowed_lateness_s = float(allowed_lateness_s)
        self.state_ttl_s = float(state_ttl_s)
        self.late_events = 0
        self._principals: OrderedDict[str, _Principal] = OrderedDict()
        self._open: dict[float, set[str]] = {}  # window start -> principals with that window open

    def __len__(self) -> int:
        """Principals held in state."""
        return len(self._principals)

    @property
    def open_windows(self) -> int:
        return sum(len(p) for p in self._open.values())

    def add(self, event: ObservedRequest, now: datetime) -> bool:
        """Count ``event`` in its principal's window; False when it does not count (not an
        upstream answer to a principal) or is late (its window closed by ``now``)."""
        if not event.principal or event.answered_by != "upstream":
            return False
        t = event.ts.timestamp()
        start = window_start(t, self.window_s)
        if self._closes_by(start, now.timestamp()):
            self.late_events += 1
            return False
        state = self._principals.get(event.principal)
        if state is None:
            state = self._principals[event.principal] = _Principal(t)
        else:
            self._principals.move_to_end(event.principal)
            state.last_ts = max(state.last_ts, t)
        window = state.windows.get(start)
        if window is None:
            window = state.windows[start] = _Window()
            self._open.setdefault(start, set()).add(event.principal)
        window.add(event)
        return True

    def close(self, now: datetime) -> list[WindowFeatures]:
        """Close every window that ends by ``now`` minus the allowed lateness; return their
        features, ordered by window start then principal. Forgets idle principals."""
        t = now.timestamp()
        out: list[WindowFeatures] = []
        for start in sorted(s for s in self._open if self._closes_by(s, t)):
            for principal in sorted(self._open.pop(start)):
                out.append(self._features(principal, start))
        self._evict(t)
        return out

    def close_all(self) -> list[WindowFeatures]:
        """Close every open window (end of a training range)."""
        out: list[WindowFeatures] = []
        for start in sorted(self._open):
            for principal in sorted(self._open[start]):
                out.append(self._features(principal, start))
        self._open.clear()
        return out

    def _closes_by(self, start: float, t: float) -> bool:
        return start + self.window_s + self.allowed_lateness_s <= t

    def _features(self, principal: str, start: float) -> WindowFeatures:
        state = self._principals[principal]
        w = state.windows.pop(start)
        known = state.countries
        new_country = 1.0 if known and any(c not in known for c in w.countries) else 0.0
        for country in sorted(w.countries):
            known.pop(country, None)
            known[country] = None
            if len(known) > MAX_COUNTRIES:
                known.popitem(last=False)
        values = (w.requests / (self.window_s / 60.0), float(len(w.routes)), float(len(w.objects)),
                  w.errors / w.requests, new_country)
        return WindowFeatures(principal, start, start + self.window_s, w.requests, values, tuple(w.samples))

    def _evict(self, t: float) -> None:
        horizon = t - self.state_ttl_s
        principals = self._principals
        while principals:
            principal, state = next(iter(principals.items()))
            if state.last_ts > horizon or state.windows:
                break
            del principals[principal]


def windows_of(events: Iterable[ObservedRequest], window_s: float = WINDOW_S) -> Iterator[WindowFeatures]:
    """Features of every window of ``events`` (in event-time order, e.g. read from the
    store), each event's time as the clock, every window closed at the end. Lazy: a
    window is yielded once an event past its end was read."""
    windows = BehaviourWindows(window_s, allowed_lateness_s=0.0, state_ttl_s=max(7 * 86_400.0, window_s))
    for event in events:
        windows.add(event, now=event.ts)
        yield from windows.close(event.ts)
    yield from windows.close_all()
