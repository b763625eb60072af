"""RunningStats (traintel.core.stats): exact moments, exact percentiles up to the reservoir and close
ones beyond it, bounded memory, and nothing kept when only the moments are wanted."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from traintel.core.stats import RunningStats, quantile

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@given(st.lists(finite, min_size=1, max_size=200))
def test_moments_and_percentiles_are_exact_within_the_reservoir(values: list[float]) -> None:
    stats = RunningStats()
    for value in values:
        stats.add(value)
    summary = stats.summary()
    assert summary["count"] == len(values)
    assert summary["total"] == pytest.approx(math.fsum(values), abs=1e-6)
    assert summary["mean"] == pytest.approx(statistics.fmean(values), abs=1e-6)
    assert summary["std"] == pytest.approx(statistics.pstdev(values), abs=1e-3)
    assert (summary["min"], summary["max"], summary["last"]) == (
        min(values),
        max(values),
        values[-1],
    )
    ordered = sorted(values)
    assert summary["p50"] == pytest.approx(
        statistics.quantiles(ordered, n=100, method="inclusive")[49]
        if len(ordered) > 1
        else ordered[0],
        abs=1e-6,
    )


def test_quantile_interpolates_linearly() -> None:
    assert quantile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert quantile([10.0], 99) == 10.0
    assert (quantile([0.0, 10.0], 0), quantile([0.0, 10.0], 100)) == (0.0, 10.0)


def test_beyond_the_reservoir_memory_is_bounded_and_percentiles_close() -> None:
    stats = RunningStats(reservoir=1000)
    rng = random.Random(7)
    values = [rng.uniform(0, 100) for _ in range(50_000)]
    for value in values:
        stats.add(value)
    quantiles = stats.quantiles()
    assert stats.count == 50_000 and len(stats.quantiles()) == 3
    assert abs(quantiles[50] - 50) < 5 and abs(quantiles[95] - 95) < 3
    assert stats.mean == pytest.approx(statistics.fmean(values))
    assert len(stats._sample) == 1000  # bounded, whatever the run's length


def test_without_a_reservoir_only_the_moments_are_kept() -> None:
    stats = RunningStats(reservoir=0)
    for value in (1.0, 2.0, 6.0):
        stats.add(value)
    assert stats.quantiles() == {}
    assert stats.summary() == {
        "count": 3,
        "total": 9.0,
        "mean": 3.0,
        "std": pytest.approx(math.sqrt(14 / 3)),
        "min": 1.0,
        "max": 6.0,
        "last": 6.0,
    }
    assert RunningStats().summary() == {"count": 0} and RunningStats().mean is None


@given(st.lists(finite, min_size=1, max_size=100), st.data())
def test_values_taken_back_leave_what_the_kept_ones_make(values: list[float], data) -> None:
    """A resumed run's superseded steps: ``remove`` the last values and ``restore_extremes``
    as they stood before them, and every figure is the one the kept values make alone."""
    kept = data.draw(st.integers(min_value=0, max_value=len(values)))
    stats = RunningStats(reservoir=0)
    before = None
    for i, value in enumerate(values):
        if i == kept:
            before = (stats.min, stats.max, stats.last)
        stats.add(value)
    for value in reversed(values[kept:]):
        stats.remove(value)
    if before is not None:
        stats.restore_extremes(*before)
    alone = RunningStats(reservoir=0)
    for value in values[:kept]:
        alone.add(value)
    assert stats.count == alone.count
    assert (stats.min, stats.max, stats.last) == (alone.min, alone.max, alone.last)
    if kept:
        # the moments are worked back in floating point: within rounding of the largest value
        scale = max(abs(v) for v in values) + 1.0
        assert stats.mean == pytest.approx(alone.mean, abs=1e-9 * scale)
        assert stats.std**2 == pytest.approx(alone.std**2, abs=1e-9 * scale**2)
    else:
        assert (stats.mean, stats.std, stats.summary()) == (None, None, {"count": 0})
