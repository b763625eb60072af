"""Rules that do not cry wolf: the training alerts against realistic, noisy curves.

Each case is a curve a person would recognise (a loss falling fast at the start, a noisy
plateau, one spike, a real divergence; a steady throughput with one slow minute, a halving; a
loader blocked once or for good; a rank slow for five minutes or for good), sampled
every 15 s as traintel exports, with seeded noise. promtool runs the committed rules over it and
reports, through Prometheus's own ``ALERTS`` series, whether the alert was ever pending or
firing. Quiet curves must never reach pending: a page that is only held back by its ``for:`` is
one bad minute away from waking someone.
"""

from __future__ import annotations

import math
import random
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from traintel.stack import install

ROOT = Path(__file__).resolve().parents[1]
STEP_S = 15  # traintel's export interval
RUN = 'project="p",run="r",rank="0",job="traintel",instance="r/0"'


def _promtool() -> str:
    reason = install.missing_reason("prometheus")
    if reason:
        pytest.skip(reason)
    return str(install.binary("prometheus").parent / "promtool")


def _noisy(
    minutes: float,
    level: Callable[[float], float],
    noise: float,
    seed: int = 1,
    spikes: dict[float, float] | None = None,
) -> list[float]:
    """Samples every 15 s for ``minutes``: ``level(t in minutes)`` times (1 + gaussian noise of
    relative size ``noise``); ``spikes``: minute -> factor for the one sample at that minute."""
    rng = random.Random(seed)
    values = []
    for i in range(int(minutes * 60 / STEP_S) + 1):
        t = i * STEP_S / 60
        value = level(t) * max(0.05, 1 + rng.gauss(0, noise))
        for at, factor in (spikes or {}).items():
            if abs(t - at) < STEP_S / 120:
                value *= factor
        values.append(round(value, 5))
    return values


def _states(alert: str, series: dict[str, list[float]], tmp_path: Path) -> dict[str, int]:
    """Which states ``alert`` reached over the curves ("pending"/"firing" -> minutes in it),
    from promtool evaluating the committed rules every 15 s."""
    length = max(len(v) for v in series.values())
    minutes = (length - 1) * STEP_S // 60
    found: dict[str, int] = {}
    for state in ("pending", "firing"):
        test = {
            "rule_files": [
                str(ROOT / "prometheus/rules/recording.yml"),
                str(ROOT / "prometheus/rules/alerts.yml"),
            ],
            "evaluation_interval": f"{STEP_S}s",
            "tests": [
                {
                    "interval": f"{STEP_S}s",
                    "input_series": [
                        {"series": name, "values": " ".join(map(str, values))}
                        for name, values in series.items()
                    ],
                    # how many minutes the alert spent in this state (ALERTS holds it per evaluation)
                    "promql_expr_test": [
                        {
                            "expr": f'count_over_time(ALERTS{{alertname="{alert}",alertstate="{state}"}}'
                            f"[{minutes + 1}m:1m])",
                            "eval_time": f"{minutes}m",
                            "exp_samples": [],
                        }
                    ],
                }
            ],
        }
        path = tmp_path / f"{alert}-{state}.yml"
        path.write_text(yaml.safe_dump(test, sort_keys=False))
        done = subprocess.run(
            [_promtool(), "test", "rules", str(path)], capture_output=True, text=True, timeout=120
        )
        if done.returncode == 0:
            continue
        # promtool says what it got instead of nothing: the count of minutes
        got = [float(m) for m in re.findall(r"got: .*\} ([0-9.eE+-]+)", done.stdout + done.stderr)]
        assert got, done.stdout + done.stderr
        found[state] = int(max(got))
    return found


def _pages_or_quiet(
    alert: str,
    curve: str,
    series: dict[str, list[float]],
    pages: bool,
    tmp_path: Path,
    pending_ok: bool = True,
) -> None:
    """On a curve that should page, ``alert`` fires at least once; on one that should not, it
    never fires (and, with ``pending_ok=False``, never even goes pending)."""
    states = _states(alert, series, tmp_path)
    if pages:
        assert states.get("firing", 0) >= 1, states
    elif pending_ok:
        assert "firing" not in states, f"{curve}: {alert} went {states} (minutes)"
    else:
        assert states == {}, f"{curve}: {alert} went {states} (minutes)"


def _loss(values: list[float]) -> dict[str, list[float]]:
    return {f"traintel_loss{{{RUN}}}": values}


def _decay(start: float, end: float, minutes: float) -> Callable[[float], float]:
    """A loss falling from ``start`` towards ``end`` as training curves do (exponentially),
    most of the fall within ``minutes``."""
    return lambda t: end + (start - end) * math.exp(-4 * t / minutes)


#: curve name -> (loss samples, whether LossDiverging may page)
LOSS_CURVES: dict[str, tuple[list[float], bool]] = {
    # the demo run: 1.37 -> 0.18 over five minutes, then it ends
    "demo falling 1.37 to 0.18 in 5 minutes": (_noisy(5, _decay(1.37, 0.18, 5), 0.05), False),
    # a fast start, then a long slow improvement (an hour and a half)
    "falling 2.1 to 0.6 in 5 minutes, then slowly for 90 minutes": (
        _noisy(
            95, lambda t: _decay(2.1, 0.6, 5)(t) if t < 5 else 0.6 * (1 - 0.004 * (t - 5)), 0.05
        ),
        False,
    ),
    # a plateau with minibatch noise of 15 %
    "plateau at 0.45 with 15 % noise for 2 hours": (_noisy(120, lambda t: 0.45, 0.15), False),
    # one bad batch: a single sample ten times the loss, 40 minutes in
    "plateau with one spike of 10x": (_noisy(90, lambda t: 0.5, 0.05, spikes={40: 10}), False),
    # a rough patch: 3 minutes at three times the loss, then back
    "three rough minutes at 3x, then recovered": (
        _noisy(90, lambda t: 1.5 if 40 <= t < 43 else 0.5, 0.05),
        False,
    ),
    # a learning-rate warm-up bump: the loss rises by half for ten minutes
    "warm-up bump of +50 % for 10 minutes": (
        _noisy(90, lambda t: 0.75 if 30 <= t < 40 else 0.5, 0.05),
        False,
    ),
    # the real thing: falls for 30 minutes, then rises to 6x its best and stays
    "diverging: falls for 30 minutes, then climbs to 6x and stays": (
        _noisy(
            90,
            lambda t: (
                _decay(2.0, 0.4, 30)(t) if t < 35 else min(2.5, 0.44 * math.exp((t - 35) / 8))
            ),
            0.05,
        ),
        True,
    ),
}


@pytest.mark.parametrize("curve", list(LOSS_CURVES))
def test_loss_diverging_on(curve: str, tmp_path: Path) -> None:
    values, pages = LOSS_CURVES[curve]
    _pages_or_quiet("LossDiverging", curve, _loss(values), pages, tmp_path, pending_ok=False)


def _throughput(values: list[float]) -> dict[str, list[float]]:
    return {
        f"traintel_samples_per_second{{{RUN}}}": values,
        f'traintel_run_status{{{RUN},status="running"}}': [1.0] * len(values),
    }


#: curve name -> (samples/s, whether ThroughputDropped may page)
THROUGHPUT_CURVES: dict[str, tuple[list[float], bool]] = {
    "steady 1200/s with 10 % noise": (_noisy(120, lambda t: 1200, 0.10), False),
    "steady with a 2-minute evaluation pause at 5 %": (
        _noisy(120, lambda t: 60 if 60 <= t < 62 else 1200, 0.10),
        False,
    ),
    "steady with an 8-minute slow checkpoint at 40 %": (
        _noisy(120, lambda t: 480 if 60 <= t < 68 else 1200, 0.10),
        False,
    ),
    "halved for good after an hour (a throttled GPU)": (
        _noisy(100, lambda t: 1200 if t < 60 else 450, 0.10),
        True,
    ),
}


@pytest.mark.parametrize("curve", list(THROUGHPUT_CURVES))
def test_throughput_dropped_on(curve: str, tmp_path: Path) -> None:
    values, pages = THROUGHPUT_CURVES[curve]
    _pages_or_quiet("ThroughputDropped", curve, _throughput(values), pages, tmp_path)


def _cumulative(increments: list[float]) -> list[float]:
    total, out = 0.0, []
    for increment in increments:
        total += increment
        out.append(round(total, 4))
    return out


def _data_wait(fraction: Callable[[float], float], minutes: float = 90) -> dict[str, list[float]]:
    """The two loop-time counters of one rank whose share of time spent waiting for data is
    ``fraction(t)`` (minutes), with 20 % noise on each 15 s interval."""
    waits = [min(1.0, f) * STEP_S for f in _noisy(minutes, fraction, 0.2, seed=3)]
    return {
        f"traintel_data_wait_seconds_total{{{RUN}}}": _cumulative(waits),
        f"traintel_compute_seconds_total{{{RUN}}}": _cumulative([STEP_S - w for w in waits]),
    }


#: curve name -> (counters, whether DataWaitDominating may page)
DATA_WAIT_CURVES: dict[str, tuple[dict[str, list[float]], bool]] = {
    "a healthy loader: 8 % waiting": (_data_wait(lambda t: 0.08), False),
    "a checkpoint blocks the loader for 3 minutes": (
        _data_wait(lambda t: 0.9 if 40 <= t < 43 else 0.08),
        False,
    ),
    "a 10-minute slow storage patch at 50 %": (
        _data_wait(lambda t: 0.5 if 40 <= t < 50 else 0.08),
        False,
    ),
    "input-bound for good: 55 % waiting after 30 minutes": (
        _data_wait(lambda t: 0.55 if t >= 30 else 0.08),
        True,
    ),
}


@pytest.mark.parametrize("curve", list(DATA_WAIT_CURVES))
def test_data_wait_dominating_on(curve: str, tmp_path: Path) -> None:
    series, pages = DATA_WAIT_CURVES[curve]
    _pages_or_quiet("DataWaitDominating", curve, series, pages, tmp_path)


def _ranks(slow: Callable[[float], float], minutes: float = 60) -> dict[str, list[float]]:
    """Step-time counters of four ranks at ~0.5 s a step with 10 % noise each; rank 3's step
    time is multiplied by ``slow(t)``."""
    series = {}
    for rank in range(4):
        labels = f'project="p",run="r",rank="{rank}",job="traintel",instance="r/{rank}"'
        factor = slow if rank == 3 else (lambda t: 1.0)
        step_s = _noisy(minutes, lambda t, f=factor: 0.5 * f(t), 0.1, seed=10 + rank)
        steps = [STEP_S / s for s in step_s]
        series[f"traintel_step_duration_seconds_count{{{labels}}}"] = _cumulative(steps)
        series[f"traintel_step_duration_seconds_sum{{{labels}}}"] = _cumulative(
            [STEP_S] * len(steps)
        )
    return series


#: curve name -> (counters, whether StragglerRank may page)
STRAGGLER_CURVES: dict[str, tuple[dict[str, list[float]], bool]] = {
    "four balanced ranks with 10 % noise": (_ranks(lambda t: 1.0), False),
    "rank 3 always 10 % slower (a slower card)": (_ranks(lambda t: 1.1), False),
    "rank 3 stalls 5 minutes at 2x (a garbage collection, a slow checkpoint)": (
        _ranks(lambda t: 2.0 if 20 <= t < 25 else 1.0),
        False,
    ),
    "rank 3 at 1.6x from minute 20 (a throttled GPU)": (
        _ranks(lambda t: 1.6 if t >= 20 else 1.0),
        True,
    ),
}


@pytest.mark.parametrize("curve", list(STRAGGLER_CURVES))
def test_straggler_rank_on(curve: str, tmp_path: Path) -> None:
    series, pages = STRAGGLER_CURVES[curve]
    _pages_or_quiet("StragglerRank", curve, series, pages, tmp_path)
