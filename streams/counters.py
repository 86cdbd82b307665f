"""Process-wide counters of the worker (malformed messages, stored rows, emitted
decisions...), shown by the health endpoint. Touched only from the event loop."""

from __future__ import annotations

from collections import Counter

_counts: Counter[str] = Counter()


def incr(name: str, n: int = 1) -> None:
    """Add ``n`` to counter ``name``."""
    _counts[name] += n


def snapshot() -> dict[str, int]:
    """A copy of every counter, sorted by name."""
    return dict(sorted(_counts.items()))
