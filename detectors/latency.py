"""Latency regression per route: per-window p50/p95 against an EWMA baseline.

For each series (``"METHOD /route/{template}"``) the upstream latencies
(``latency_ms`` of events answered by the upstream) are cut into tumbling
event-time windows of ``window_s`` (60 s). When a window closes — its end plus
``allowed_lateness_s`` (5 s) has passed in event time — and it holds at least
``min_samples`` (30) requests, its p50 and p95 are computed and its p95 is
compared with the baseline:

* **baseline**: an EWMA of past good windows' p95 (and p50), smoothing
  ``ewma_lambda`` (0.2), with an EWMA of the squared deviations for the spread
  (the incremental EWMA variance of West 1979); during the first
  ``baseline_windows`` (5) windows it is a plain running mean and nothing is
  judged. Bad windows do not feed it, so a lasting regression never becomes
  the norm.
* **bad window**: p95 above ``max(ratio × baseline, baseline +
  min_increase_ms, baseline + sigma_limit × sd)`` (1.5×, +20 ms, 3 sd): the
  ratio catches a relative slowdown, the floor keeps a 2 → 4 ms wobble quiet,
  the sd term keeps a noisy route quiet (the EWMA control limit of NIST's
  handbook, with L = 3).
* **regression** after ``bad_windows`` (3) consecutive bad windows (thin
  windows, under ``min_samples``, are skipped, not counted); **recovery** after
  ``good_windows`` (2) consecutive good windows while raised. One detection
  each (``evidence["state"]`` = ``"regression"`` / ``"recovered"``), with the
  baseline and current p50/p95 and the slowest requests' event ids; ``kind``
  (``"regression"`` / ``"recovery"``) and, on a recovery, ``regression_severity``
  let an alert sink resolve the regression's alert (``streams/alertmanager.py``).

It alerts; it never bans: the decision policy has no action for its
detections (``actions`` is empty).

Up to ``max_samples_per_window`` latencies per window are kept (reservoir
sampling, Vitter's Algorithm R, seeded with ``seed``: the same input gives
the same figures). Percentiles are exact below that.

What it will not catch: slowdowns on routes with fewer than ``min_samples``
requests per window; a drift slower than the baseline's memory (~1/λ
windows, 5 minutes at the defaults) — it is learned as normal; regressions
shorter than ``bad_windows`` windows; gateway-side latency (only the
upstream's ``latency_ms`` is measured); a route that goes silent keeps its
last window open until :meth:`LatencyRegressionDetector.flush` is called with
a later time; samples arriving after their window closed (``late_samples``).

References: S. W. Roberts, "Control chart tests based on geometric moving
averages", Technometrics 1(3):239–250, 1959 (EWMA); NIST/SEMATECH
e-Handbook of Statistical Methods, §6.3.2.4 "EWMA Control Charts"
(https://www.itl.nist.gov/div898/handbook/pmc/section3/pmc324.htm);
D. H. D. West, "Updating mean and variance estimates: an improved method",
CACM 22(9), 1979; J. S. Vitter, "Random sampling with a reservoir", ACM TOMS
11(1), 1985. (CUSUM, E. S. Page, "Continuous inspection schemes", Biometrika
41, 1954, is the alternative this detector does not use: the consecutive-window
rule is easier to explain in an alert.)

Example::

    >>> from datetime import datetime, timedelta, timezone
    >>> from gatewatch.events import RequestEvent
    >>> det = LatencyRegressionDetector(min_samples=3, baseline_windows=2, bad_windows=2, good_windows=1)
    >>> t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    >>> def call(minute, second, ms):
    ...     ts = t0 + timedelta(minutes=minute, seconds=second)
    ...     return RequestEvent(event_id=f"e{minute}-{second}", ts=ts, client_ip="192.0.2.1",
    ...         method="GET", host="api", path="/items/1", route="/items/{id}", status=200,
    ...         latency_ms=ms)
    >>> states = []
    >>> for minute, ms in enumerate([10, 10, 10, 90, 90, 90, 10, 10]):
    ...     for second in (0, 20, 40):
    ...         event = call(minute, second, ms)
    ...         states += [d.evidence["state"] for d in det.process(event, now=event.ts)]
    >>> states
    ['regression', 'recovered']
"""

from __future__ import annotations

import heapq
import math
import random
import uuid
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from gatewatch.events import Detection, RequestEvent, Severity
from gatewatch.settings import LatencySettings

NAME = "latency_regression"
SLOWEST_KEPT = 5
_ID_NAMESPACE = uuid.UUID("9d3f6a4e-0c1b-4b9e-8f2d-6a7c5e4b3a21")


def series_of(event: RequestEvent) -> str:
    """The series an event belongs to: ``"METHOD /route/{template}"``."""
    return f"{event.method} {event.route}"


class _Window:
    """Latencies of one series in one window (a seeded reservoir) and its slowest requests."""

    __slots__ = ("index", "samples", "seen", "slowest")

    def __init__(self, index: int) -> None:
        self.index = index
        self.samples = array("d")
        self.seen = 0
        self.slowest: list[tuple[float, str]] = []  # min-heap of (latency_ms, event_id)

    def add(self, latency_ms: float, event_id: str, cap: int, rng: random.Random) -> None:
        self.seen += 1
        if len(self.samples) < cap:
            self.samples.append(latency_ms)
        else:
            j = rng.randrange(self.seen)
            if j < cap:
                self.samples[j] = latency_ms
        if len(self.slowest) < SLOWEST_KEPT:
            heapq.heappush(self.slowest, (latency_ms, event_id))
        elif latency_ms > self.slowest[0][0]:
            heapq.heapreplace(self.slowest, (latency_ms, event_id))


@dataclass(frozen=True, slots=True)
class RaisedRegression:
    """A regression raised before this detector started (e.g. read back from the stored
    detections after a restart): when (``raised_at``), against which baseline
    (``baseline_p95_ms``, ``baseline_p50_ms``), with which ``severity``."""

    raised_at: datetime
    baseline_p95_ms: float
    baseline_p50_ms: float
    severity: Severity


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """A window of a series that closed before this detector started, as the store has it
    (e.g. read back after a restart): its start (``start_s``, epoch s, a multiple of
    ``window_s``), its upstream answers (``samples``) and their p50 and p95 (ms)."""

    start_s: float
    samples: int
    p50_ms: float
    p95_ms: float


class _Series:
    __slots__ = ("open", "closed_before", "last_s", "base_p95", "base_p50", "var_p95",
                 "learned", "bad", "good", "raised_at", "raised_baseline", "raised_severity",
                 "judged_until")

    def __init__(self) -> None:
        self.open: dict[int, _Window] = {}
        self.closed_before = -1  # windows with index < this are closed
        self.last_s: float | None = None  # newest sample time, epoch s
        self.base_p95 = 0.0
        self.base_p50 = 0.0
        self.var_p95 = 0.0
        self.learned = 0
        self.bad: list[dict[str, Any]] = []
        self.good = 0
        self.raised_at: datetime | None = None
        self.raised_baseline: float | None = None
        self.raised_severity: Severity | None = None
        self.judged_until: float | None = None  # epoch s; windows closed by then were judged before a restart


class LatencyRegressionDetector:
    """Per-route p95 latency regression and recovery (see the module docstring).

    Parameters, as in :class:`gatewatch.settings.LatencySettings`: ``window_s``,
    ``allowed_lateness_s``, ``state_ttl_s`` (s); ``min_samples``,
    ``baseline_windows``, ``bad_windows``, ``good_windows``, ``max_samples_per_window``
    (counts); ``ewma_lambda`` (0..1], ``ratio`` (> 1), ``min_increase_ms`` (ms),
    ``sigma_limit`` (sd), ``seed``. ``raised``: a lookup of the regressions raised
    before this detector started (:class:`RaisedRegression`), or None: a series it has
    no state for and that the lookup names starts raised, judged against the baseline
    of that regression (its spread unknown: 0), so it is not raised twice and its
    recovery is reported. Windows such a series is given that had closed by the time
    the regression was raised (a replay reaching back before it) are skipped: they
    were judged before the restart, and the fast minutes that preceded the regression
    must not count as its recovery. ``history``: a lookup of the windows of a series
    that closed before this detector started (:class:`ClosedWindow`, oldest first; None
    for none), or None: a series it has no state for and that is not raised is judged on them first,
    silently, as the live detector judged them — its baseline learns from the good ones
    and a run of bad ones goes on — and samples of those windows that arrive later are
    late (a replay of what the store held).

    Raises ``ValueError`` on out-of-range parameters.
    """

    def __init__(self, raised: Callable[[str], RaisedRegression | None] | None = None,
                 history: Callable[[str], Iterable[ClosedWindow] | None] | None = None, **params: Any) -> None:
        cfg = LatencySettings(**params)
        if cfg.window_s <= 0 or cfg.allowed_lateness_s < 0 or cfg.state_ttl_s < cfg.window_s:
            raise ValueError("need window_s > 0, allowed_lateness_s >= 0, state_ttl_s >= window_s")
        if min(cfg.min_samples, cfg.baseline_windows, cfg.bad_windows, cfg.good_windows,
               cfg.max_samples_per_window) < 1:
            raise ValueError("counts must be >= 1")
        if not 0 < cfg.ewma_lambda <= 1 or cfg.ratio < 1 or cfg.min_increase_ms < 0 or cfg.sigma_limit < 0:
            raise ValueError("need 0 < ewma_lambda <= 1, ratio >= 1, min_increase_ms >= 0, sigma_limit >= 0")
        self.cfg = cfg
        self._ttl = timedelta(seconds=cfg.state_ttl_s)
        self._rng = random.Random(cfg.seed)
        self._series: OrderedDict[str, _Series] = OrderedDict()
        self.late_samples = 0
        self.raised_before = raised
        self.history = history

    @classmethod
    def from_settings(cls, settings: LatencySettings,
                      raised: Callable[[str], RaisedRegression | None] | None = None,
                      history: Callable[[str], Iterable[ClosedWindow] | None] | None = None) -> LatencyRegressionDetector:
        """Build from the ``latency`` section of the settings (and ``raised`` and ``history``
        lookups)."""
        return cls(raised=raised, history=history, **settings.model_dump())

    @property
    def state_size(self) -> int:
        return len(self._series)

    def raised(self) -> list[str]:
        """Series currently in regression."""
        return [key for key, s in self._series.items() if s.raised_at is not None]

    def process(self, event: RequestEvent, now: datetime) -> list[Detection]:
        """Learn from one event; return the detections of its series' windows that ``now``
        (event time) has passed. Only events answered by the upstream count (gateway
        answers have no upstream latency)."""
        out = self._evict(now)
        if event.answered_by != "upstream" or not event.latency_ms >= 0:
            return out
        series = series_of(event)
        self.add(series, event.ts, float(event.latency_ms), event.event_id)
        return out + self._close(series, self._series[series], now)

    def add(self, series: str, ts: datetime, latency_ms: float, event_id: str) -> None:
        """Add one latency sample of ``series`` taken at ``ts`` without closing anything
        (a sample for an already closed window is counted in ``late_samples``). With
        :meth:`flush`, the worker's path: samples of a merged stream first, then the
        windows its watermark has passed."""
        self.add_at(series, ts.timestamp(), latency_ms, event_id)

    def add_at(self, series: str, epoch_s: float, latency_ms: float, event_id: str) -> None:
        """:meth:`add` with the sample's time as seconds since the epoch (what the worker's
        re-keyed samples carry: no ``datetime`` per sample)."""
        state = self._series.get(series)
        if state is None:
            state = self._series[series] = self._new_series(series)
        else:
            self._series.move_to_end(series)
        index = math.floor(epoch_s / self.cfg.window_s)
        if index < state.closed_before:
            self.late_samples += 1
        else:
            window = state.open.get(index)
            if window is None:
                window = state.open[index] = _Window(index)
            window.add(latency_ms, event_id, self.cfg.max_samples_per_window, self._rng)
        if state.last_s is None or epoch_s > state.last_s:
            state.last_s = epoch_s

    def flush(self, now: datetime, series: Iterable[str] | None = None) -> list[Detection]:
        """Close the windows that ``now`` (event time) has passed, of every series or of
        ``series`` only; return their detections. A route with no new traffic closes its
        windows only here."""
        out = self._evict(now)
        names = list(self._series) if series is None else [name for name in series if name in self._series]
        for name in names:
            out += self._close(name, self._series[name], now)
        return out

    def _new_series(self, series: str) -> _Series:
        state = _Series()
        before = self.raised_before(series) if self.raised_before is not None else None
        if before is not None:
            state.base_p95, state.base_p50 = before.baseline_p95_ms, before.baseline_p50_ms
            state.learned = self.cfg.baseline_windows   # judged from its first window on
            state.raised_at, state.raised_baseline = before.raised_at, before.baseline_p95_ms
            state.raised_severity = before.severity
            state.judged_until = before.raised_at.timestamp()
        elif self.history is not None:
            for window in self.history(series) or ():
                self._restore(series, state, window)
        return state

    def _restore(self, series: str, state: _Series, window: ClosedWindow) -> None:
        """Close ``window`` (a window before this detector started) and judge it silently."""
        cfg = self.cfg
        index = round(window.start_s / cfg.window_s)
        if index < state.closed_before:
            return   # not after the last window closed
        state.closed_before = index + 1
        end_s = (index + 1) * cfg.window_s
        state.last_s = end_s if state.last_s is None else max(state.last_s, end_s)
        closed_at = datetime.fromtimestamp(end_s + cfg.allowed_lateness_s, tz=timezone.utc)
        self._judge_figures(series, state, index, window.samples, window.p50_ms, window.p95_ms, [], closed_at)

    # -- windows -----------------------------------------------------------------------

    def _close(self, series: str, state: _Series, now: datetime) -> list[Detection]:
        if not state.open:
            return []
        limit = (now.timestamp() - self.cfg.allowed_lateness_s) / self.cfg.window_s
        out: list[Detection] = []
        for index in sorted(state.open):
            if index + 1 > limit:
                break
            window = state.open.pop(index)
            state.closed_before = max(state.closed_before, index + 1)
            out += self._judge(series, state, window, now)
        return out

    def _judge(self, series: str, state: _Series, window: _Window, now: datetime) -> list[Detection]:
        cfg = self.cfg
        if window.seen < cfg.min_samples:
            return []
        if state.judged_until is not None and (window.index + 1) * cfg.window_s + cfg.allowed_lateness_s \
                <= state.judged_until:
            return []   # closed before the regression was raised: judged before the restart
        p50, p95 = (float(v) for v in np.percentile(np.frombuffer(window.samples), [50, 95]))
        return self._judge_figures(series, state, window.index, window.seen, p50, p95,
                                   [e for _, e in sorted(window.slowest, reverse=True)], now)

    def _judge_figures(self, series: str, state: _Series, index: int, seen: int, p50: float, p95: float,
                       slowest_event_ids: list[str], now: datetime) -> list[Detection]:
        """Judge a closed window of ``seen`` samples with these percentiles (ms)."""
        cfg = self.cfg
        if seen < cfg.min_samples:
            return []
        summary = {"start": self._start(index).isoformat(), "p50_ms": round(p50, 3),
                   "p95_ms": round(p95, 3), "samples": seen, "slowest_event_ids": slowest_event_ids}
        if state.learned < cfg.baseline_windows:
            self._learn(state, p50, p95)
            return []
        threshold = self._threshold(state)
        if p95 > threshold:
            state.bad.append(summary | {"threshold_ms": round(threshold, 3)})
            del state.bad[:-max(cfg.bad_windows, 10)]
            state.good = 0
            if state.raised_at is None and len(state.bad) >= cfg.bad_windows:
                state.raised_at = now
                state.raised_baseline = state.base_p95
                detection = self._detection(series, state, "regression", summary, threshold, now)
                state.raised_severity = detection.severity
                return [detection]
            return []
        state.bad.clear()
        state.good += 1
        self._learn(state, p50, p95)
        if state.raised_at is not None and state.good >= cfg.good_windows:
            detection = self._detection(series, state, "recovered", summary, self._threshold(state), now)
            state.raised_at, state.raised_baseline, state.raised_severity = None, None, None
            return [detection]
        return []

    def _learn(self, state: _Series, p50: float, p95: float) -> None:
        # During warm-up a running mean (weight 1/n), then the EWMA weight λ.
        lam = max(self.cfg.ewma_lambda, 1.0 / (state.learned + 1))
        if state.learned == 0:
            state.base_p95, state.base_p50, state.var_p95 = p95, p50, 0.0
        else:
            diff = p95 - state.base_p95
            state.base_p95 += lam * diff
            state.var_p95 = (1 - lam) * (state.var_p95 + lam * diff * diff)
            state.base_p50 += lam * (p50 - state.base_p50)
        state.learned += 1

    def _threshold(self, state: _Series) -> float:
        base = state.base_p95
        return max(base * self.cfg.ratio, base + self.cfg.min_increase_ms,
                   base + self.cfg.sigma_limit * math.sqrt(state.var_p95))

    def _start(self, index: int) -> datetime:
        return datetime.fromtimestamp(index * self.cfg.window_s, tz=timezone.utc)

    def _detection(self, series: str, state: _Series, kind: str, last: dict[str, Any],
                   threshold: float, now: datetime) -> Detection:
        cfg = self.cfg
        baseline = state.raised_baseline if state.raised_baseline is not None else state.base_p95
        evidence: dict[str, Any] = {
            "state": kind,
            "kind": "regression" if kind == "regression" else "recovery",
            "series": series,
            "window_s": cfg.window_s,
            "baseline_p95_ms": round(baseline, 3),
            "baseline_p50_ms": round(state.base_p50, 3),
            "current_p95_ms": last["p95_ms"],
            "current_p50_ms": last["p50_ms"],
            "threshold_ms": round(threshold, 3),
            "samples": last["samples"],
            "thresholds": {"ratio": cfg.ratio, "min_increase_ms": cfg.min_increase_ms,
                           "sigma_limit": cfg.sigma_limit, "bad_windows": cfg.bad_windows,
                           "good_windows": cfg.good_windows, "min_samples": cfg.min_samples},
        }
        if kind == "regression":
            evidence["bad_windows"] = list(state.bad)
            samples = [e for w in state.bad for e in w["slowest_event_ids"]][-10:]
            ratio = last["p95_ms"] / baseline if baseline > 0 else float("inf")
            severity: Severity = "high" if ratio >= 3 else "medium"
            summary = (f"{series}: p95 {last['p95_ms']:.1f} ms vs baseline {baseline:.1f} ms "
                       f"for {len(state.bad)} windows of {cfg.window_s:g} s")
        else:
            assert state.raised_at is not None
            evidence["regression_since"] = state.raised_at.isoformat()
            evidence["regression_severity"] = state.raised_severity
            evidence["regression_s"] = (now - state.raised_at).total_seconds()
            samples = list(last["slowest_event_ids"])
            severity = "low"
            summary = (f"{series}: recovered, p95 {last['p95_ms']:.1f} ms "
                       f"(baseline {baseline:.1f} ms)")
        evidence["sample_event_ids"] = samples
        score = last["p95_ms"] / threshold if threshold > 0 else 1.0
        return Detection(
            detection_id=uuid.uuid5(_ID_NAMESPACE, f"{NAME}|{series}|{kind}|{last['start']}").hex,
            ts=now, detector=NAME, scope="route", value=series, severity=severity,
            score=round(score, 3), summary=summary, evidence=evidence, sample_event_ids=samples)

    def _evict(self, now: datetime) -> list[Detection]:
        horizon = (now - self._ttl).timestamp()
        series = self._series
        while series:
            key, state = next(iter(series.items()))
            if state.last_s is not None and state.last_s > horizon:
                break
            del series[key]
        return []
