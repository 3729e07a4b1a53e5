"""Latency figures in bounded memory: a log-linear histogram with exact extremes.

Theory of operation: a latency of `x` seconds goes to bucket
``floor(log(x / LOWEST) / log(1 + precision))``, so every bucket spans a fixed
ratio and a percentile read from it is within `precision` (1%) of the true value,
however many samples there are and however far apart (a microsecond to hours is
about 2,500 buckets).  Counts live in a dict, so only the buckets used cost memory.
Minimum, maximum and sum are exact; percentiles are clamped into [min, max].
Histograms merge by adding counts (several sessions, several processes).
"""

from __future__ import annotations

import math
from typing import Final

__all__ = ["LOWEST", "LatencyHistogram"]

#: Latencies below this (seconds) share the first bucket.
LOWEST: Final = 1e-6


class LatencyHistogram:
    """Latency samples in seconds; percentiles within `precision` relative error."""

    def __init__(self, precision: float = 0.01) -> None:
        if not 0.0 < precision < 1.0:
            raise ValueError("precision must be between 0 and 1")
        self.precision = precision
        self._log_base = math.log1p(precision)
        self._buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = 0.0

    def record(self, seconds: float) -> None:
        """Add one sample (negative values count as 0)."""
        seconds = max(seconds, 0.0)
        index = int(math.log(seconds / LOWEST) / self._log_base) if seconds > LOWEST else 0
        self._buckets[index] = self._buckets.get(index, 0) + 1
        self.count += 1
        self.total += seconds
        if seconds < self.min:
            self.min = seconds
        if seconds > self.max:
            self.max = seconds

    def merge(self, other: LatencyHistogram) -> None:
        """Add another histogram's samples (of the same precision)."""
        if other.precision != self.precision:
            raise ValueError("cannot merge histograms of different precision")
        for index, count in other._buckets.items():
            self._buckets[index] = self._buckets.get(index, 0) + count
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    @property
    def mean(self) -> float:
        """The average, 0.0 without samples."""
        return self.total / self.count if self.count else 0.0

    def percentile(self, p: float) -> float:
        """The value below which `p` percent of the samples lie (0.0 without samples)."""
        if not 0.0 <= p <= 100.0:
            raise ValueError("p must be between 0 and 100")
        if not self.count:
            return 0.0
        if p >= 100.0:
            return self.max
        rank = max(1, math.ceil(self.count * p / 100.0))
        seen = 0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen >= rank:
                middle = LOWEST * math.exp((index + 0.5) * self._log_base) if index else LOWEST
                return min(max(middle, self.min), self.max)
        return self.max  # unreachable: the counts add up to self.count

    def summary_ms(self) -> dict[str, float]:
        """count, min, mean, p50, p90, p99 and max, in milliseconds (count as is)."""
        return {
            "count": self.count,
            "min": (self.min if self.count else 0.0) * 1000.0,
            "mean": self.mean * 1000.0,
            "p50": self.percentile(50) * 1000.0,
            "p90": self.percentile(90) * 1000.0,
            "p99": self.percentile(99) * 1000.0,
            "max": self.max * 1000.0,
        }
