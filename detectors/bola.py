"""BOLA enumeration: a principal walking through object ids it has no right to.

Broken Object Level Authorization (OWASP API Security Top 10 2023, API1) is
exploited by substituting other users' object ids into a route such as
``/orders/{id}``. This detector watches, per principal (the API-key id, or the
client IP when anonymous) and route template, within ``window_s`` (300 s):

* the distinct object ids requested (the path matched against the route
  template: ``/orders/123`` vs ``/orders/{id}`` gives ``123``; several
  parameters give ``7/123``) — numeric ids, UUIDs and name-like ids alike;
* the *denied* ids: answered 403 or 404 by the upstream **and** never given
  to this principal, i.e. never part of a 2xx answer it received (an id it
  saw in an earlier 2xx path, even on another route, is "given": a 404 on its
  own deleted object is not probing);
* the current run of sequential numeric ids (each within
  ``sequential_max_step`` of the previous one).

It fires when the window holds at least ``min_distinct_ids`` (20) distinct ids
and ``min_denied_ids`` (5) denied ones, and either the denied share (denied /
distinct) reaches ``min_denied_share`` (0.5), or a sequential run of at least
``min_sequential_run`` (10) ids comes with a denied share of at least
``sequential_denied_share`` (0.1) — enumeration of a partly vulnerable API
mostly gets 200s, with 404s on the gaps.

**Volume alone never fires**: every rule needs refused answers. A client
syncing hundreds of its own objects (all 200) is not a suspect, whatever its
rate or the order of its ids; CrowdSec's ``http-crawl-non_statics`` (40
requests at 2/s from one IP) bans exactly such clients. The decision bans the
principal (scope ``principal``), or the IP for anonymous callers.

What it will not catch:

* an enumeration the API answers only with 200s (a fully vulnerable API with
  dense ids, or leaked UUIDs of real objects): nothing is refused, and the
  event carries no response body to tell whose object came back;
* fewer than ``min_distinct_ids`` ids per window (slow enumeration), or
  spreading over many principals/keys;
* object ids outside the path (query string, body).

Sources: OWASP API Security Top 10 2023, API1 Broken Object Level
Authorization (https://owasp.org/API-Security/editions/2023/en/0xa1-broken-object-level-authorization/);
CrowdSec hub ``crowdsecurity/http-probing`` (403/404/400 answers with
``distinct`` paths per IP: capacity 10, leak 10 s) for refused answers as the
signal, and ``crowdsecurity/http-crawl-non_statics`` as the volume-only rule
this detector avoids.

State: per principal, the windows of its routes and the ids it was given
(at most ``known_ids_max``, oldest forgotten first); a principal idle for
``state_ttl_s`` (3600 s) is forgotten. After firing, a principal stays quiet
for ``ban_ttl_s``.

Example::

    >>> from datetime import datetime, timedelta, timezone
    >>> from gatewatch.events import RequestEvent
    >>> det = BolaDetector(min_distinct_ids=5, min_denied_ids=3)
    >>> t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    >>> def get(i, status):
    ...     return RequestEvent(event_id=f"e{i}", ts=t0 + timedelta(seconds=i), client_ip="198.51.100.4",
    ...         method="GET", host="api", path=f"/orders/{100 + i}", route="/orders/{id}",
    ...         status=status, principal="key-9")
    >>> [[d.value for d in det.process(get(i, 403), now=t0 + timedelta(seconds=i))] for i in range(6)]
    [[], [], [], [], ['key-9'], []]
"""

from __future__ import annotations

import bisect
import re
import uuid
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any

from gatewatch.events import Detection, ObservedRequest
from gatewatch.settings import BolaSettings

NAME = "bola"
MAX_SAMPLE_EVENT_IDS = 10
MAX_SAMPLE_OBJECT_IDS = 10
_DENIED = (403, 404)
_ID_NAMESPACE = uuid.UUID("2b7e1516-28ae-4d2a-a6ab-f7158809cf4f")


def object_id(path: str, route: str) -> tuple[str, ...] | None:
    """The values of ``route``'s ``{params}`` in ``path`` (query string ignored), or None
    when the path does not match the template or the route has no parameter.

    Segment by segment: the path up to its first ``?`` or ``#``, trailing ``/``
    stripped from path and template alike, must have as many ``/``-separated
    segments as the template; a ``{param}`` segment takes any non-empty value,
    every other segment must be equal. Each template is compiled once into a
    regular expression (:func:`_route_pattern`).

    >>> object_id("/users/7/orders/123?x=1", "/users/{uid}/orders/{oid}")
    ('7', '123')
    >>> object_id("/books/Dune", "/books/{title}"), object_id("/health", "/health")
    (('Dune',), None)
    """
    if "{" not in route:
        return None
    pattern = _ROUTE_PATTERNS.get(route, _UNSEEN)
    if pattern is _UNSEEN:
        pattern = _route_pattern(route)
    if pattern is None:
        return None
    match = pattern.match(path)
    return match.groups() if match is not None else None


#: Compiled :func:`object_id` patterns by route template; emptied when it holds
#: :data:`MAX_ROUTE_PATTERNS` (route templates come from the gateway's
#: configuration, so a few dozen in practice).
_ROUTE_PATTERNS: dict[str, re.Pattern[str] | None] = {}
MAX_ROUTE_PATTERNS = 4096
_UNSEEN = object()


def _route_pattern(route: str) -> re.Pattern[str] | None:
    """The regular expression :func:`object_id` matches paths of ``route`` with (one group
    per ``{param}`` segment), or None for a template no path matches with a value: no
    parameter segment, or a literal segment holding ``?`` or ``#`` (cut off every path)."""
    parts = []
    params = 0
    for segment in route.rstrip("/").split("/"):
        if segment.startswith("{") and segment.endswith("}"):
            parts.append("([^/?#]+)")
            params += 1
        elif "?" in segment or "#" in segment:
            params = 0
            break
        else:
            parts.append(re.escape(segment))
    # the path may end with any number of "/", then its end, its query string or fragment
    pattern = re.compile("/".join(parts) + r"/*(?:[?#]|\Z)") if params else None
    if len(_ROUTE_PATTERNS) >= MAX_ROUTE_PATTERNS:
        _ROUTE_PATTERNS.clear()
    _ROUTE_PATTERNS[route] = pattern
    return pattern


#: One access in a route window: ``(ts, object id, denied, status, event_id)`` — a plain
#: tuple, built for every counted event (a NamedTuple's ``__new__`` is Python code).
_Access = tuple[datetime, str, bool, int, str]


class _RouteWindow:
    """Accesses of one principal to one route template within the window, oldest first,
    with the number of accesses per object id and per denied object id."""

    __slots__ = ("accesses", "ids", "denied", "last_num", "run", "run_first", "run_ts")

    def __init__(self) -> None:
        self.accesses: deque[_Access] = deque()
        self.ids: dict[str, int] = {}
        self.denied: dict[str, int] = {}
        self.last_num: int | None = None
        self.run = 0
        self.run_first: int | None = None
        self.run_ts: datetime | None = None

    def add(self, ts: datetime, oid: str, denied: bool, status: int, event_id: str,
            window: timedelta) -> bool:
        """Count the access (the fields of :data:`_Access`) and expire what left the window
        (``window`` up to the newest access); False, counting nothing, for an access
        already out of it (late). Accesses stay sorted by time whatever the arrival order."""
        accesses = self.accesses
        if not accesses or ts >= accesses[-1][0]:  # in order: the common case
            accesses.append((ts, oid, denied, status, event_id))
            horizon = ts - window
        else:
            horizon = accesses[-1][0] - window
            if ts <= horizon:
                return False
            accesses.insert(bisect.bisect_right(accesses, ts, key=_access_ts),
                            (ts, oid, denied, status, event_id))
        ids = self.ids
        ids[oid] = ids.get(oid, 0) + 1
        if denied:
            self.denied[oid] = self.denied.get(oid, 0) + 1
        if accesses[0][0] <= horizon:
            self.expire(horizon)
        return True

    def expire(self, horizon: datetime) -> None:
        """Drop the accesses at or before ``horizon``."""
        accesses, ids = self.accesses, self.ids
        while accesses and accesses[0][0] <= horizon:
            _, oid, denied, _, _ = accesses.popleft()
            _decrement(ids, oid)
            if denied:
                _decrement(self.denied, oid)

    def statuses(self) -> dict[int, int]:
        """Accesses per HTTP status in the window."""
        return Counter(status for _, _, _, status, _ in self.accesses)

    def step(self, value: str, ts: datetime, max_step: int, window: timedelta) -> None:
        """Extend or restart the run of sequential numeric ids with ``value``, the last
        parameter of the access at ``ts``: a number when all decimal digits (at most 18)."""
        if not (value.isdecimal() and len(value) <= 18):
            self.last_num, self.run, self.run_first = None, 0, None
            return
        num = int(value)
        last, run_ts = self.last_num, self.run_ts
        stale = run_ts is None or ts - run_ts > window
        if not stale and last is not None and 0 < abs(num - last) <= max_step:
            self.run += 1
        elif num != last or stale:
            self.run, self.run_first = 1, num
        self.last_num, self.run_ts = num, ts


_access_ts = itemgetter(0)


def _decrement(counts: dict[Any, int], key: Any) -> None:
    """One less ``key`` in ``counts`` (present, count >= 1); gone at zero."""
    left = counts[key] - 1
    if left > 0:
        counts[key] = left
    else:
        del counts[key]


@dataclass(slots=True)
class _Principal:
    routes: dict[str, _RouteWindow]
    given: OrderedDict[str, None]  # parameter values seen in 2xx answers to this principal
    last_seen: datetime


class BolaDetector:
    """BOLA enumeration detector (see the module docstring for the rule and sources).

    Parameters, as in :class:`gatewatch.settings.BolaSettings`: ``window_s`` (s),
    ``min_distinct_ids``, ``min_denied_ids`` (counts), ``min_denied_share``,
    ``sequential_denied_share`` (0..1), ``min_sequential_run``, ``sequential_max_step``
    (ids), ``known_ids_max`` (ids per principal), ``state_ttl_s`` and ``ban_ttl_s`` (s).

    Raises ``ValueError`` on out-of-range parameters.
    """

    def __init__(self, **params: Any) -> None:
        cfg = BolaSettings(**params)
        if cfg.window_s <= 0 or cfg.state_ttl_s < cfg.window_s:
            raise ValueError("need window_s > 0 and state_ttl_s >= window_s")
        if min(cfg.min_distinct_ids, cfg.min_denied_ids, cfg.min_sequential_run,
               cfg.sequential_max_step, cfg.known_ids_max) < 1:
            raise ValueError("counts must be >= 1")
        if not (0 < cfg.min_denied_share <= 1 and 0 < cfg.sequential_denied_share <= 1):
            raise ValueError("shares must be in (0, 1]")
        self.cfg = cfg
        self._window = timedelta(seconds=cfg.window_s)
        self._ttl = timedelta(seconds=cfg.state_ttl_s)
        self._quiet_delta = timedelta(seconds=cfg.ban_ttl_s)
        # read for every event: held apart from cfg
        self._max_step, self._known_ids_max = cfg.sequential_max_step, cfg.known_ids_max
        self._min_distinct, self._min_denied = cfg.min_distinct_ids, cfg.min_denied_ids
        # least recently seen first; ``_oldest`` is the first value (None when empty), so
        # that _evict needs no iterator for every event
        self._principals: OrderedDict[tuple[str, str], _Principal] = OrderedDict()
        self._oldest: _Principal | None = None
        # end of the quiet period by principal, in the order they fired; ``_quiet_first``
        # is the first value (None when empty)
        self._quiet: OrderedDict[tuple[str, str], datetime] = OrderedDict()
        self._quiet_first: datetime | None = None

    @classmethod
    def from_settings(cls, settings: BolaSettings) -> BolaDetector:
        """Build from the ``bola`` section of the settings."""
        return cls(**settings.model_dump())

    @property
    def tracked_principals(self) -> int:
        """Principals (or anonymous IPs) currently held in state."""
        return len(self._principals)

    @property
    def state_size(self) -> int:
        return len(self._principals) + len(self._quiet)

    def process(self, event: ObservedRequest, now: datetime) -> list[Detection]:
        """Learn from one event; return the detection it completes (0 or 1).

        Windows and quiet periods are judged at the event's own ``ts``; ``now``
        only lets the detector forget principals idle since ``now - state_ttl_s``
        and quiet periods over by ``now`` (on a stream merged from several
        sources, pass a low watermark). Only upstream answers on routes with a
        ``{parameter}`` count.
        """
        self._evict(now)
        if event.answered_by != "upstream":
            return []
        route = event.route
        if "{" not in route:
            return []
        values = object_id(event.path, route)
        if values is None:
            return []
        ts = event.ts
        who = ("principal", event.principal) if event.principal else ("ip", event.client_ip)
        state = self._state(who, ts)
        status = event.status
        if 200 <= status < 300:
            self._give(state.given, values)
        if self._quiet_first is not None:
            until = self._quiet.get(who)
            if until is not None and ts < until:
                return []
        last = values[-1]
        denied = status in _DENIED and last not in state.given
        window = state.routes.get(route)
        if window is None:
            window = state.routes[route] = _RouteWindow()
        if not window.add(ts, "/".join(values), denied, status, event.event_id, self._window):
            return []
        window.step(last, ts, self._max_step, self._window)
        if len(window.ids) < self._min_distinct or len(window.denied) < self._min_denied:
            return []
        return self._check(who, event, window)

    def give(self, scope: str, value: str, path: str, route: str, ts: datetime) -> bool:
        """Remember the object id of ``path`` (matched against ``route``) as given to the
        caller ``scope``/``value`` (``"principal"`` and its id, or ``"ip"`` and the address
        text of an anonymous caller, as :meth:`process` keys them) at ``ts``, as a 2xx
        upstream answer would, judging nothing: how a worker restores, from the store, the
        ids given before its replay span. Call it on a fresh detector, all callers' ids in
        one ``ts`` order, oldest first, before any :meth:`process` (the order callers are
        forgotten in follows it). Returns False if ``path`` holds no object id of
        ``route``; raises ValueError for another ``scope``."""
        if scope not in ("principal", "ip"):
            raise ValueError(f"scope must be 'principal' or 'ip', got {scope!r}")
        values = object_id(path, route) if "{" in route else None
        if values is None:
            return False
        self._give(self._state((scope, value), ts).given, values)
        return True

    def _state(self, who: tuple[str, str], ts: datetime) -> _Principal:
        """The state of ``who``, created if new, moved to the most recently seen end."""
        principals = self._principals
        state = principals.get(who)
        if state is None:
            state = principals[who] = _Principal({}, OrderedDict(), ts)
            if self._oldest is None:
                self._oldest = state
            return state
        principals.move_to_end(who)
        if state is self._oldest:
            self._oldest = next(iter(principals.values()))
        if ts > state.last_seen:
            state.last_seen = ts
        return state

    def _give(self, given: OrderedDict[str, None], values: tuple[str, ...]) -> None:
        """Remember ``values`` as given to a principal (most recent last), at most
        ``known_ids_max`` of them."""
        for value in values:
            if value in given:
                given.move_to_end(value)
            else:
                given[value] = None
                if len(given) > self._known_ids_max:
                    given.popitem(last=False)

    def _check(self, who: tuple[str, str], event: ObservedRequest, window: _RouteWindow) -> list[Detection]:
        """The detection ``event`` completes in ``window``, which holds at least
        ``min_distinct_ids`` distinct and ``min_denied_ids`` denied ids (``process`` checks)."""
        cfg = self.cfg
        share = len(window.denied) / len(window.ids)
        sequential = window.run >= cfg.min_sequential_run
        if share >= cfg.min_denied_share:
            rule = "denied_share"
        elif sequential and share >= cfg.sequential_denied_share:
            rule = "sequential_ids"
        else:
            return []
        quiet = self._quiet
        quiet.pop(who, None)
        quiet[who] = event.ts + self._quiet_delta
        self._quiet_first = next(iter(quiet.values()))
        return [self._detection(who, rule, event, window, share)]

    def _detection(self, who: tuple[str, str], rule: str, trigger: ObservedRequest,
                   window: _RouteWindow, share: float) -> Detection:
        cfg = self.cfg
        denied_events = [event_id for _, _, denied, _, event_id in window.accesses
                         if denied][-MAX_SAMPLE_EVENT_IDS:]
        denied_ids = list(window.denied)[:MAX_SAMPLE_OBJECT_IDS]
        scope, value = who
        evidence: dict[str, Any] = {
            "rule": rule,
            "route": trigger.route,
            "window_s": cfg.window_s,
            "distinct_ids": len(window.ids),
            "denied_ids": len(window.denied),
            "denied_share": round(share, 4),
            "sequential_run": window.run,
            "sequential_from": window.run_first,
            "statuses": {str(k): v for k, v in sorted(window.statuses().items())},
            "sample_denied_object_ids": denied_ids,
            "thresholds": {"min_distinct_ids": cfg.min_distinct_ids, "min_denied_ids": cfg.min_denied_ids,
                           "min_denied_share": cfg.min_denied_share,
                           "min_sequential_run": cfg.min_sequential_run,
                           "sequential_denied_share": cfg.sequential_denied_share},
            "first_ts": window.accesses[0][0].isoformat(),
            "last_ts": window.accesses[-1][0].isoformat(),
            "sample_event_ids": denied_events,
        }
        if scope == "principal":
            evidence["client_ip"] = trigger.client_ip
        how = (f"{len(window.denied)} of {len(window.ids)} distinct ids refused (403/404)"
               if rule == "denied_share" else
               f"a run of {window.run} sequential ids with {len(window.denied)} of "
               f"{len(window.ids)} refused")
        return Detection(
            detection_id=uuid.uuid5(_ID_NAMESPACE, f"{NAME}|{scope}|{value}|{trigger.event_id}").hex,
            ts=trigger.ts, detector=NAME, scope=scope, value=value,  # type: ignore[arg-type]
            severity="high",
            score=round(share / cfg.min_denied_share, 3),
            summary=f"object-id enumeration on {trigger.method} {trigger.route} by {scope} {value}: "
                    f"{how} within {cfg.window_s:g} s",
            evidence=evidence, sample_event_ids=denied_events)

    def _evict(self, now: datetime) -> None:
        """Forget the least recently seen principals while idle since ``now - state_ttl_s``,
        and the oldest quiet periods while over by ``now``."""
        horizon = now - self._ttl
        oldest = self._oldest
        while oldest is not None and oldest.last_seen <= horizon:
            self._principals.popitem(last=False)
            oldest = self._oldest = next(iter(self._principals.values()), None)
        first = self._quiet_first
        while first is not None and first <= now:
            self._quiet.popitem(last=False)
            first = self._quiet_first = next(iter(self._quiet.values()), None)
