"""Replay: run every detector over stored requests with their own timestamps as the
clock, in shadow (nothing is published), and compare with what was decided live.

This is the tuning loop: change a threshold (settings), replay last week, see
which decisions would appear or disappear. It imports no Faust: the detectors
and the decision policy are the same pure objects the worker runs; here one
process sees every key, in event-time order (the worker sees them by
partition; windows and thresholds are the same).

Geo anomalies need coordinates: pass a ``locate`` function (the CLI uses the
DB-IP city database); without it they are not replayed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from detectors.bola import BolaDetector
from detectors.credential_stuffing import CredentialStuffingDetector
from detectors.decision_policy import DecisionPolicy, PolicyResult
from detectors.geo import GeoAnomalyDetector, GeoPoint
from detectors.latency import LatencyRegressionDetector
from gatewatch.events import Decision, RequestEvent
from gatewatch.settings import GatewatchSettings


@dataclass
class ReplayResult:
    """Everything the replay found: ``results`` (one per detection, with the decision the
    policy would take), and the number of ``events`` replayed."""

    events: int = 0
    results: list[PolicyResult] = field(default_factory=list)

    @property
    def decisions(self) -> list[Decision]:
        """Decisions the replay would have made, in order."""
        return [r.decision for r in self.results if r.decision is not None]


def replay(events: Iterable[RequestEvent], settings: GatewatchSettings,
           locate: Callable[[str], GeoPoint | None] | None = None) -> ReplayResult:
    """Run credential stuffing (every rule), BOLA, latency regression and (with
    ``locate``) geo anomalies over ``events`` — which must be in event-time order —
    through a fresh decision policy. Pure apart from ``locate``."""
    stuffing = CredentialStuffingDetector.from_settings(settings.credential_stuffing)
    bola = BolaDetector.from_settings(settings.bola)
    latency = LatencyRegressionDetector.from_settings(settings.latency)
    geo = GeoAnomalyDetector.from_settings(settings.geo_anomaly) if locate else None
    policy = DecisionPolicy.from_settings(settings)
    out = ReplayResult()
    for event in events:
        out.events += 1
        found = stuffing.process(event, now=event.ts) + bola.process(event, now=event.ts)
        found += latency.process(event, now=event.ts)
        if geo is not None and event.principal and event.answered_by == "upstream":
            found += geo.process(event, locate(event.client_ip), now=event.ts)
        out.results += [policy.decide(d) for d in found]
    return out


@dataclass(frozen=True)
class Comparison:
    """Replayed decisions against live ones, matched by ``scope:value``."""

    both: list[tuple[Decision, dict]]  # (replayed, live row)
    only_replay: list[Decision]
    only_live: list[dict]


def compare(replayed: list[Decision], live_rows: list[dict]) -> Comparison:
    """Match replayed decisions with live decision rows (``decisions_between``) by scope and value;
    manual (CLI) decisions are left out of the live side."""
    live = {}
    for row in live_rows:
        if row.get("origin") != "cli":
            live.setdefault(f"{row['scope']}:{row['value']}", row)
    seen: set[str] = set()
    both, only_replay = [], []
    for d in replayed:
        key = d.key()
        if key in seen:
            continue
        seen.add(key)
        if key in live:
            both.append((d, live[key]))
        else:
            only_replay.append(d)
    only_live = [row for key, row in live.items() if key not in seen]
    return Comparison(both, only_replay, only_live)
