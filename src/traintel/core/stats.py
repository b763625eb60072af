"""Running statistics with bounded memory: mean, std, min and max exactly, percentiles from a
reservoir."""

from __future__ import annotations

import math
import random
from typing import TypedDict


class Statistics(TypedDict, total=False):
    """What :meth:`RunningStats.summary` reports (only ``count`` when nothing was added)."""

    count: int
    total: float
    mean: float | None
    std: float | None
    min: float
    max: float
    last: float | None
    p50: float
    p95: float
    p99: float


class RunningStats:
    """Count, total, mean, std (Welford), min, max and p50/p95/p99 of a stream of numbers.

    Percentiles are exact up to ``reservoir`` values and estimated from a uniform reservoir
    sample beyond that, so memory stays bounded on runs of any length; ``reservoir=0`` keeps no
    sample (no percentiles) where only the moments are wanted.
    """

    __slots__ = ("count", "total", "_mean", "_m2", "min", "max", "last", "_sample", "_cap", "_rng")

    def __init__(self, reservoir: int = 20_000) -> None:
        self.count = 0
        self.total = 0.0
        self._mean = 0.0
        self._m2 = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.last: float | None = None
        self._sample: list[float] = []
        self._cap = reservoir
        self._rng = random.Random(0)

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        delta = value - self._mean
        self._mean += delta / self.count
        self._m2 += delta * (value - self._mean)
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.last = value
        if len(self._sample) < self._cap:
            self._sample.append(value)
        elif self._cap:
            slot = self._rng.randrange(self.count)
            if slot < self._cap:
                self._sample[slot] = value

    def remove(self, value: float) -> None:
        """Take back a value added before (a step a resumed run superseded): count, total,
        mean and deviation as if it had never come. min, max and ``last`` cannot be worked
        back from the moments: the caller that kept them from before puts them back with
        :meth:`restore_extremes`; the percentile sample keeps the value."""
        if self.count <= 1:
            self.count, self.total, self._mean, self._m2 = 0, 0.0, 0.0, 0.0
            return
        if self.count == 2:  # one left: no deviation at all (no rounding residue of one)
            self.count, self._m2 = 1, 0.0
            self.total -= value
            self._mean = 2 * self._mean - value
            return
        mean = (self._mean * self.count - value) / (self.count - 1)
        self._m2 = max(0.0, self._m2 - (value - self._mean) * (value - mean))
        self._mean = mean
        self.count -= 1
        self.total -= value

    def restore_extremes(self, low: float, high: float, last: float | None) -> None:
        """Put back min, max and last as they were before the values :meth:`remove` took
        back were added (``inf``, ``-inf`` and None: before any value)."""
        self.min, self.max, self.last = low, high, last

    @property
    def mean(self) -> float | None:
        return self._mean if self.count else None

    @property
    def std(self) -> float | None:
        return math.sqrt(self._m2 / self.count) if self.count else None

    def quantiles(self) -> dict[int, float]:
        """p50, p95 and p99 of the sample (empty without one)."""
        ordered = sorted(self._sample)
        return {q: quantile(ordered, q) for q in (50, 95, 99)} if ordered else {}

    def summary(self) -> Statistics:
        if not self.count:
            return {"count": 0}
        out: Statistics = {
            "count": self.count,
            "total": self.total,
            "mean": self._mean,
            "std": self.std,
            "min": self.min,
            "max": self.max,
            "last": self.last,
        }
        quantiles = self.quantiles()
        if quantiles:
            out["p50"], out["p95"], out["p99"] = quantiles[50], quantiles[95], quantiles[99]
        return out


def quantile(ordered: list[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted, non-empty list; q in [0, 100]."""
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
