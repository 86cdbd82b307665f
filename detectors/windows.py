"""Sliding event-time windows shared by the detectors: counts kept up to date as
attempts enter and leave, keyed windows evicted when idle, quiet periods.

Pure data structures (no clock, no I/O), picklable. Times are timezone-aware
``datetime`` values passed in by the caller; a window covers ``(now - window_s, now]``.

Events may arrive out of order (re-keyed streams merge several source
partitions): a window keeps its attempts sorted by time (an older attempt is
inserted in place), and one already out of the window of the newest attempt is
not counted, so counts are those of the window ending at the newest attempt,
whatever the arrival order.

Example::

    >>> from datetime import datetime, timedelta, timezone
    >>> t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    >>> windows = KeyedWindows(window_s=60)
    >>> w = windows.add("203.0.113.7", Attempt(t0, True, "u1", "203.0.113.7", "e1"))
    >>> (w.failures, w.successes, len(w.usernames))
    (1, 0, 1)
    >>> later = t0 + timedelta(seconds=61)
    >>> windows.evict(later); len(windows)
    0
"""

from __future__ import annotations

import bisect
from collections import Counter, OrderedDict, deque
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import NamedTuple


class Attempt(NamedTuple):
    """One login attempt: when, failed or not, username hash and source IP (either may be None)."""

    ts: datetime
    failed: bool
    username: str | None
    source: str | None
    event_id: str


class CountWindow:
    """Attempts inside one key's window with running counts.

    ``failures`` / ``successes``: attempts of each kind; ``usernames``: failed-login
    username hash -> failures; ``sources``: source IP -> failures.
    """

    __slots__ = ("attempts", "failures", "successes", "usernames", "sources")

    def __init__(self) -> None:
        self.attempts: deque[Attempt] = deque()
        self.failures = 0
        self.successes = 0
        self.usernames: Counter[str] = Counter()
        self.sources: Counter[str] = Counter()

    def add(self, attempt: Attempt) -> None:
        attempts = self.attempts
        if not attempts or attempt.ts >= attempts[-1].ts:
            attempts.append(attempt)
        else:  # out of order: keep the deque sorted by time
            attempts.insert(bisect.bisect_right(attempts, attempt.ts, key=_ts), attempt)
        if attempt.failed:
            self.failures += 1
            if attempt.username:
                self.usernames[attempt.username] += 1
            if attempt.source:
                self.sources[attempt.source] += 1
        else:
            self.successes += 1

    def expire(self, horizon: datetime) -> None:
        """Drop attempts at or before ``horizon``."""
        while self.attempts and self.attempts[0].ts <= horizon:
            old = self.attempts.popleft()
            if not old.failed:
                self.successes -= 1
                continue
            self.failures -= 1
            _decrement(self.usernames, old.username)
            _decrement(self.sources, old.source)

    @property
    def failure_share(self) -> float:
        """Failures / all attempts in the window (0.0 when empty)."""
        total = self.failures + self.successes
        return self.failures / total if total else 0.0

    @property
    def last_ts(self) -> datetime | None:
        return self.attempts[-1].ts if self.attempts else None

    def failed_event_ids(self, limit: int) -> list[str]:
        """Event ids of the last ``limit`` failed attempts, oldest first."""
        out: list[str] = []
        for attempt in reversed(self.attempts):
            if attempt.failed:
                out.append(attempt.event_id)
                if len(out) == limit:
                    break
        return out[::-1]


def _ts(attempt: Attempt) -> datetime:
    return attempt.ts


def _decrement(counter: Counter[str], key: str | None) -> None:
    if key:
        counter[key] -= 1
        if counter[key] <= 0:
            del counter[key]


class KeyedWindows:
    """One :class:`CountWindow` per key, in order of last update, so that idle keys
    are evicted from the front: state is bounded by the keys active in the window."""

    __slots__ = ("window_s", "_delta", "_windows")

    def __init__(self, window_s: float) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = float(window_s)
        self._delta = timedelta(seconds=self.window_s)
        self._windows: OrderedDict[str, CountWindow] = OrderedDict()

    def __len__(self) -> int:
        return len(self._windows)

    def __contains__(self, key: str) -> bool:
        return key in self._windows

    def get(self, key: str) -> CountWindow | None:
        return self._windows.get(key)

    def add(self, key: str, attempt: Attempt) -> CountWindow:
        """Add ``attempt`` to ``key``'s window — the ``window_s`` seconds up to its newest
        attempt — and expire what left it; return the window. An attempt already out of
        that window (it arrived late) is not counted."""
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = CountWindow()
        else:
            self._windows.move_to_end(key)
        newest = window.last_ts
        horizon = (attempt.ts if newest is None or attempt.ts > newest else newest) - self._delta
        if attempt.ts > horizon:
            window.add(attempt)
            window.expire(horizon)
        return window

    def drop(self, key: str) -> None:
        self._windows.pop(key, None)

    def evict(self, now: datetime) -> None:
        """Forget keys whose newest attempt left the window by ``now``."""
        windows = self._windows
        if not windows:  # most windows of a detector are empty most of the time: no date arithmetic
            return
        horizon = now - self._delta
        while windows:
            attempts = next(iter(windows.values())).attempts
            if attempts and attempts[-1].ts > horizon:
                break
            windows.popitem(last=False)


class QuietPeriods:
    """Keys that fired and stay quiet until a time; entries end in insertion order
    (every key of one instance gets the same length of quiet), so expiry pops the front."""

    __slots__ = ("_until",)

    def __init__(self) -> None:
        self._until: OrderedDict[str, datetime] = OrderedDict()

    def __len__(self) -> int:
        return len(self._until)

    def __contains__(self, key: str) -> bool:
        return key in self._until

    def __iter__(self) -> Iterator[str]:
        return iter(self._until)

    def start(self, key: str, until: datetime) -> None:
        self._until.pop(key, None)
        self._until[key] = until

    def active(self, key: str, at: datetime) -> bool:
        """True if ``key`` is quiet at time ``at``."""
        until = self._until.get(key)
        return until is not None and at < until

    def expire(self, now: datetime) -> None:
        until = self._until
        while until:
            if next(iter(until.values())) > now:
                break
            until.popitem(last=False)
