"""The logins partition's replay span (streams/detect_logins.py) rebuilds 99 % of the weight
of the failed-login spike baseline of the detector that saw the whole history, as a
restarted worker's warm replay does (~1 % off at a steady rate); the aggregate
windows' span alone rebuilt 88 %."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

from detectors.credential_stuffing import CredentialStuffingDetector
from gatewatch.events import RequestEvent
from gatewatch.settings import CredentialStuffingSettings
from streams.detect_logins import REPLAY_S, spike_replay_s

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
HOURS = 4


def _history(seed: int = 3) -> list[RequestEvent]:
    """Four hours of ordinary failed logins: 5-20 a minute (under the spike floor of 30),
    each from its own address and username."""
    rng = random.Random(seed)
    events = []
    for minute in range(HOURS * 60):
        for k in range(rng.randint(5, 20)):
            ts = T0 + timedelta(minutes=minute, seconds=rng.uniform(0, 59.9))
            events.append(RequestEvent(
                event_id=f"e{minute}-{k}", ts=ts, client_ip=f"10.{minute % 200}.{k}.{rng.randint(1, 250)}",
                method="POST", host="api", path="/login", route="/login", status=401, login="failure",
                username_hash=f"u{rng.randint(0, 10**6)}"))
    events.sort(key=lambda e: e.ts)
    return events


def _baseline(events: list[RequestEvent], end: datetime) -> float:
    detector = CredentialStuffingDetector.from_settings(CredentialStuffingSettings(),
                                                        rules=("prefix", "asn", "username", "global"))
    for event in events:
        detector.process(event, now=event.ts)
    tick = RequestEvent(event_id="tick", ts=end, client_ip="192.0.2.1", method="GET", host="api",
                        path="/", route="/", status=200)
    detector.process(tick, now=end)   # closes the buckets that ended by ``end``
    return detector._spike.baseline


def test_the_replay_rebuilds_the_spike_baseline_within_one_percent() -> None:
    events = _history()
    end = T0 + timedelta(hours=HOURS)
    full = _baseline(events, end)
    assert full > 5.0   # a baseline of ordinary failures was learned
    start = end - timedelta(seconds=REPLAY_S)
    replayed = _baseline([e for e in events if e.ts >= start], end)
    # What the replay misses is exactly the weight of the buckets before it: 0.9^44 of the
    # baseline as it stood when the span starts (under 1 % of it).
    before = _baseline([e for e in events if e.ts < start], start)
    missing = (1 - CredentialStuffingSettings().spike_ewma_lambda) ** (REPLAY_S / 60.0)
    assert missing < 0.01
    assert abs(full - (replayed + missing * before)) < 1e-9
    assert abs(replayed - full) / full <= 0.015   # ~1 % at this fairly steady rate
    # The span of the windows alone (1200 s) left it well below.
    windows_only = _baseline([e for e in events if e.ts >= end - timedelta(seconds=1200)], end)
    assert windows_only / full < 0.9


def test_the_spike_span_follows_the_smoothing() -> None:
    assert spike_replay_s(60.0, 0.1) == 44 * 60.0      # 0.9^44 < 1 % <= 0.9^43
    assert spike_replay_s(60.0, 0.5) == 7 * 60.0       # 0.5^7 < 1 % <= 0.5^6
    assert spike_replay_s(30.0, 1.0) == 30.0           # no memory: the last bucket
