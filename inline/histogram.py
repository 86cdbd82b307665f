"""A Prometheus-style histogram of durations in seconds, kept by the gateway's addons and
read by :mod:`inline.metrics` at scrape time (hooks only increment a bucket).

Buckets are cumulative on export, as the Prometheus exposition format wants
(https://prometheus.io/docs/concepts/metric_types/#histogram).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

#: Upper bounds (seconds) of the buckets: 1 ms to 5 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class LatencyHistogram:
    """Durations in seconds, counted per bucket of ``bounds`` (and one above the last),
    with their sum."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    sum: float = 0.0

    def observe(self, seconds: float) -> None:
        """Count one duration (seconds)."""
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        """Durations observed."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(upper bound, cumulative count), ..., ("+Inf", total)]``."""
        out, total = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts):
            total += count
            out.append((bound, total))
        return out
