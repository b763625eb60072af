"""The run state (traintel.core.state): how non-finite values are written, progress and ETA, and
the recent-rate window."""

from __future__ import annotations

import math

from traintel.core.state import RateWindow, RunState, nonfinite_text


def test_nonfinite_values_are_written_as_text() -> None:
    assert [nonfinite_text(v) for v in (math.nan, math.inf, -math.inf)] == ["nan", "inf", "-inf"]


def test_eta_from_recent_rate() -> None:
    state = RunState()
    state.total_steps, state.step = 100, 40
    state.rates = {"steps_per_second": 10.0}
    assert state.progress() == 0.4 and state.eta_seconds() == 6.0


def test_eta_before_a_recent_rate_is_the_average_so_far() -> None:
    state = RunState()
    state.total_steps = 100
    assert state.eta_seconds() is None  # no step yet
    state.step, state.last_step_ts = 40, state.start_ts + 8.0  # 5 steps/s so far
    assert state.eta_seconds() == 12.0
    state.rates = {"steps_per_second": 10.0}  # the recent rate wins once measured
    assert state.eta_seconds() == 6.0


def test_without_a_plan_there_is_no_progress_or_eta() -> None:
    state = RunState()
    state.step = 10
    assert (state.progress(), state.eta_seconds()) == (None, None)
    state.total_steps, state.step = 5, 10  # past the plan: done, not 200 %
    assert state.progress() == 1.0


def test_rates_over_a_sliding_window() -> None:
    window = RateWindow(window_s=10.0)
    assert window.rates() == {}
    for second in range(31):  # 2 steps, 64 samples, 0 tokens per second
        window.add(1000.0 + second, 2 * second, 64 * second, 0)
    # tokens were never logged: their rate is unknown, not zero
    assert window.rates() == {"steps_per_second": 2.0, "samples_per_second": 64.0}
    assert len(window._points) <= 12  # only the last 10 s (and one before) are kept
