"""Latency regression per route over samples re-keyed by route (``topic_requests_by_route``),
so each route's windows live on one partition: one detector per by-route partition
(:mod:`streams.rekeyed_consumer`).

A by-route partition merges the samples of every request partition, each in
event-time order but at its own pace; a minute window closes once the
partition's low watermark — the least progress of its active sources
(:mod:`streams.watermarks`) — has passed its end plus ``allowed_lateness_s``.
So a message's samples are added first, then the partition's series are
flushed up to its new watermark (:mod:`streams.merged`). Alert only: the policy
issues no decision.

After a restart the last :data:`REPLAY_S` seconds of the partition are
replayed into a fresh detector, and what came before comes back from the store.
Before by-route partitions are placed (:func:`load_state`, the consumer's
assignment hook):

* the raised routes: the stored detections say which series' last regression has
  no recovery after it (named query ``latency_raised``, over
  ``latency.state_ttl_s``; :func:`load_raised`); such a series starts raised,
  judged against that regression's baseline, so it is not raised a second time
  and its recovery is reported; replayed windows that had closed by the time it
  was raised are skipped (a re-keyed message can span minutes before the
  regression, and their fast windows are not its recovery);
* the windows before the replay: per series and window, the upstream answers'
  count and exact p50/p95 over the :data:`HISTORY_WINDOWS` windows that end by
  :data:`REPLAY_S` before the current time (named query ``latency_windows``;
  :func:`load_windows`); a series that is not raised is judged on them silently
  when its detector first meets it, so its baseline and a run of bad windows go
  on where they were, and replayed samples of those windows are late.

Exact: the open minute windows (their percentiles below
``max_samples_per_window``; above it the reservoir's random draws differ, and the
store's figures are exact), whether a route is raised, a route's baseline (up to
the weight of windows older than :data:`HISTORY_WINDOWS`, ~1e-6 at the default
smoothing) and its run of bad windows. Not exact: a raised route's baseline
spread (0: its threshold is the ratio's or the floor's); the sample request ids
of bad windows restored from the store (not restored); after an outage longer
than the replay span, the window the worker stopped in (restored as far as it
was stored). If the store cannot answer (counted as ``latency_raised_errors``,
``latency_windows_errors``), raised routes and baselines are relearned from the
replay.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from detectors.latency import ClosedWindow, LatencyRegressionDetector, RaisedRegression
from gatewatch.events import Detection
from streams import counters
from streams.app import settings, store

log = logging.getLogger(__name__)

_cfg = settings.latency
#: Seconds of event time replayed: enough windows to relearn a baseline and judge a run of bad
#: ones, plus the allowed lateness.
REPLAY_S = _cfg.window_s * (_cfg.baseline_windows + _cfg.bad_windows + 1) + _cfg.allowed_lateness_s


#: Longest wait for the store's answer, s: it runs while the group's assignment is handled.
STORE_READ_TIMEOUT_S = 20.0
#: Series -> the regression it is in, as of the last :func:`load_raised`.
_raised: dict[str, RaisedRegression] = {}
#: Windows restored before the replay span: this many of them (the baseline's EWMA weight of
#: older windows, (1 - ewma_lambda) ** 60, is ~1e-6 at the default 0.2).
HISTORY_WINDOWS = 60
#: Series -> its windows closed before the replay span, oldest first, as of the last
#: :func:`load_windows`; taken by the first detector that meets the series.
_windows: dict[str, list[ClosedWindow]] = {}


def raised_of(series: str) -> RaisedRegression | None:
    """The stored regression ``series`` is in, if any (the detectors' ``raised`` lookup)."""
    return _raised.get(series)


async def load_raised(now: datetime | None = None) -> int:
    """Read from the stored detections which series are in a regression (their last one
    within ``latency.state_ttl_s`` before ``now``, default the current time, is a regression).
    Returns how many; on a store error the previous ones stay (``latency_raised_errors``)."""
    global _raised
    try:
        rows = await store.query_last("latency_raised", _cfg.state_ttl_s, STORE_READ_TIMEOUT_S, now)
        _raised = {str(series): RaisedRegression(datetime.fromisoformat(str(at)), float(p95), float(p50),
                                                 severity)
                   for series, at, severity, p95, p50 in rows}
    except Exception as exc:   # the store down or failing: relearn (module docstring)
        counters.incr("latency_raised_errors")
        log.warning("raised latency routes not read from the store (%s: %s)", type(exc).__name__, exc)
        return len(_raised)
    counters.incr("latency_raised_loads")
    if _raised:
        log.info("latency: %d route(s) raised before the start: %s", len(_raised), sorted(_raised))
    return len(_raised)


def windows_of(series: str) -> list[ClosedWindow] | None:
    """The stored windows of ``series`` before the replay span (the detectors' ``history``
    lookup; taken: a series met again after its state expired starts afresh)."""
    return _windows.pop(series, None)


async def load_windows(now: datetime | None = None) -> int:
    """Read from the stored requests the figures of every series' windows over the
    :data:`HISTORY_WINDOWS` windows that end by :data:`REPLAY_S` before ``now`` (default:
    the current time; named query ``latency_windows``). Returns how many windows; on a store
    error none are restored (``latency_windows_errors``)."""
    global _windows
    # On a window boundary: a window cut in two would be restored from its first part only.
    cut_s = ((now or datetime.now(timezone.utc)).timestamp() - REPLAY_S) // _cfg.window_s * _cfg.window_s
    until = datetime.fromtimestamp(cut_s, timezone.utc)
    params = {"window_ms": round(_cfg.window_s * 1000)}
    try:
        rows = await store.query_last("latency_windows", HISTORY_WINDOWS * _cfg.window_s, STORE_READ_TIMEOUT_S,
                                      until, params)
    except Exception as exc:   # the store down or failing: the replay alone (module docstring)
        counters.incr("latency_windows_errors")
        log.warning("latency windows not read from the store (%s: %s): baselines relearned from the replay",
                    type(exc).__name__, exc)
        _windows = {}
        return 0
    windows: dict[str, list[ClosedWindow]] = {}
    for series, start_s, samples, p50, p95 in rows:
        windows.setdefault(str(series), []).append(ClosedWindow(float(start_s), int(samples), float(p50), float(p95)))
    for items in windows.values():
        items.sort(key=lambda w: w.start_s)
    _windows = windows
    counters.incr("latency_windows_loads")
    return len(rows)


async def load_state(now: datetime | None = None) -> None:
    """What the detectors of newly assigned by-route partitions start from: the raised
    series (:func:`load_raised`) and the windows before the replay (:func:`load_windows`)."""
    await load_raised(now)
    await load_windows(now)


class LatencyStage:
    """The detector of one by-route partition as a stage: samples
    ``(series, epoch_s, latency_ms, event_id)`` are added, windows judged on the watermark."""

    def __init__(self) -> None:
        self.detector = LatencyRegressionDetector.from_settings(_cfg, raised_of, windows_of)

    def process(self, items: list[tuple[str, float, float, str]], now: datetime) -> list[Detection]:
        add = self.detector.add_at
        for series, epoch_s, latency_ms, event_id in items:
            add(series, epoch_s, latency_ms, event_id)
        return []

    def advance(self, watermark: datetime) -> list[Detection]:
        found = self.detector.flush(watermark)
        if self.detector.late_samples:
            counters.incr("latency_late_samples", self.detector.late_samples)
            self.detector.late_samples = 0
        return found


def stages() -> list[LatencyStage]:
    """The latency detector of one by-route partition."""
    return [LatencyStage()]
