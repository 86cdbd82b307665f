"""Sliding windows give the counts of the window ending at the newest attempt, whatever
the arrival order (re-keyed streams merge sources that run at different paces)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from detectors.windows import Attempt, KeyedWindows, QuietPeriods

T0 = datetime(2025, 3, 1, tzinfo=timezone.utc)


def _counts(window):
    return (window.failures, window.successes, dict(window.usernames), dict(window.sources),
            [a.event_id for a in window.attempts])


@pytest.mark.parametrize("seed", range(5))
def test_out_of_order_arrival_gives_the_in_order_counts(seed: int) -> None:
    rng = random.Random(seed)
    attempts = [Attempt(T0 + timedelta(seconds=rng.uniform(0, 300)), rng.random() < 0.7,
                        f"u{rng.randint(0, 9)}", f"10.0.0.{rng.randint(1, 5)}", f"e{i}") for i in range(300)]
    in_order, shuffled = KeyedWindows(60), KeyedWindows(60)
    for attempt in sorted(attempts, key=lambda a: a.ts):
        in_order.add("k", attempt)
    rng.shuffle(attempts)
    for attempt in attempts:
        shuffled.add("k", attempt)
    assert _counts(shuffled.get("k")) == _counts(in_order.get("k"))


def test_a_late_attempt_outside_the_window_is_not_counted() -> None:
    windows = KeyedWindows(60)
    windows.add("k", Attempt(T0 + timedelta(seconds=100), True, "u", "ip", "new"))
    window = windows.add("k", Attempt(T0 + timedelta(seconds=30), True, "u", "ip", "late"))
    assert window.failures == 1 and [a.event_id for a in window.attempts] == ["new"]


def test_quiet_periods() -> None:
    quiet = QuietPeriods()
    quiet.start("ip:a", T0 + timedelta(seconds=10))
    assert quiet.active("ip:a", T0) and not quiet.active("ip:a", T0 + timedelta(seconds=10))
    assert not quiet.active("ip:b", T0)
    quiet.expire(T0 + timedelta(seconds=10))
    assert len(quiet) == 0
