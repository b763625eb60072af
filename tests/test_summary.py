"""summary.json's figures (traintel.record.summary): the step fold both the record writer and
`traintel logs summary` use, the instrument summaries, and the document's shape."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_type_hints

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import traintel.record.summary as summary_module
from traintel.core.state import RunState
from traintel.core.stats import RunningStats
from traintel.record.summary import (
    ErrorCounts,
    EvalFigures,
    ExportFigures,
    InstrumentFigures,
    LossFigures,
    RecordFold,
    RecordHealth,
    RunSummary,
    StepFigures,
    StepTime,
    Throughput,
    build_summary,
    instrument_summaries,
)

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_steps_are_folded_as_written() -> None:
    figures = StepFigures()
    figures.add(100.0, 1, 0.5, 0.1, {"loss": 2.0, "samples": 32, "tokens": 320})
    figures.add(100.5, 2, 0.5, 0.2, {"loss": "nan", "samples": 32.0})
    figures.add(101.0, 3, None, None, {"loss": 1.0, "samples": "nan", "tokens": "inf"})
    assert (figures.steps, figures.samples, figures.tokens) == (3, 64, 320)
    assert figures.loss_figures() == {
        "key": "loss",
        "final": 1.0,
        "last_finite": 1.0,
        "best": 1.0,
        "min": 1.0,
        "max": 2.0,
        "mean": 1.5,
        "std": 0.5,
        "count": 2,
        "nonfinite": 1,
        "first_nonfinite_step": 2,
    }
    assert figures.active_s() == 1.5  # the first step's own half second counts
    assert figures.throughput() == {
        "steps_per_s": 2.0,
        "samples_per_s": pytest.approx(64 / 1.5),
        "tokens_per_s": pytest.approx(320 / 1.5),
    }
    times = figures.step_times()
    assert (times["mean_s"], times["p50_s"]) == (0.5, 0.5)
    assert times["data_wait_fraction"] == pytest.approx(0.3)


def test_what_a_record_cannot_hold_as_a_number_is_left_out() -> None:
    figures = StepFigures(percentiles=False)
    figures.add(1.0, 1, None, None, {"loss": {"a": 1}, "samples": [3], "tokens": None})
    figures.add(2.0, 2, None, None, None)
    assert (figures.steps, figures.samples, figures.loss.count, figures.nonfinite_loss) == (
        2,
        0,
        0,
        0,
    )
    assert figures.step_times() == {
        "mean_s": None,
        "p50_s": None,
        "p95_s": None,
        "p99_s": None,
        "data_wait_fraction": None,
    }
    assert StepFigures().throughput() == dict.fromkeys(
        ("steps_per_s", "samples_per_s", "tokens_per_s")
    )


def test_counts_beyond_float64_never_break_the_fold() -> None:
    """A step line 10 steps after the last multiplies its per-step counts by 10: a float that
    overflows is no count, an int stays exact, and a rate it cannot have is None."""
    figures = StepFigures()
    figures.add(1.0, 0, 1.0, None, {"samples": 1e308, "tokens": 10**400})
    figures.add(2.0, 10, 1.0, None, {"samples": 1e308, "tokens": 10**400})
    assert figures.samples == int(1e308) and figures.tokens == 11 * 10**400
    assert figures.throughput()["tokens_per_s"] is None


def test_instruments_are_summarised_once_for_lines_and_summary() -> None:
    timer = RunningStats()
    for value in (0.1, 0.2, 0.3):
        timer.add(value)
    entries = instrument_summaries({("timer", "load"): timer}, {"skipped": 2.0}, {"queue": 7.0})
    assert [(name, figures["kind"]) for name, figures in entries] == [
        ("load", "timer"),
        ("skipped", "counter"),
        ("queue", "gauge"),
    ]
    assert entries[0][1]["count"] == 3 and entries[0][1]["p50"] == pytest.approx(0.2)
    assert entries[1][1] == {"kind": "counter", "total": 2.0}
    assert entries[2][1] == {"kind": "gauge", "last": 7.0}


def test_summary_json_has_what_the_record_format_documents() -> None:
    state = RunState()
    state.status, state.epoch = "failed", 1
    state.errors = {("oom", "critical"): 2, ("oom", "high"): 1, ("data", "medium"): 1}
    state.eval_latest, state.eval_best = {"val_loss": 0.4}, {"val_loss": 0.3}
    state.eval_best_step, state.goals = {"val_loss": 7}, {"val_loss": "min"}
    figures = StepFigures()
    figures.add(state.start_ts + 1, 1, 1.0, None, {"loss": 1.0})
    about = {
        "run": "r",
        "project": "p",
        "name": "n",
        "rank": 0,
        "world_size": 1,
        "config_hash": "sha256:x",
        "tags": ["a"],
        "notes": None,
        "group": "g",
    }
    segment = {
        "segment": 1,
        "start_ts": state.start_ts,
        "end_ts": state.start_ts + 2,
        "duration_s": 2.0,
        "status": "failed",
        "steps": 1,
        "last_step": 1,
    }
    summary = build_summary(about, state, figures, 12, [], state.start_ts + 2, [segment], 2)
    assert summary["errors"] == {"total": 4, "by_type": {"oom": 3, "data": 1}, "first": None}
    assert summary["eval"] == {
        "val_loss": {"last": 0.4, "best": 0.3, "best_step": 7, "mode": "min"}
    }
    assert (summary["epochs"], summary["epoch"], summary["duration_s"], summary["record"]) == (
        2,
        1,
        2.0,
        {"lines": 12, "dropped": 0},
    )
    assert (summary["tags"], summary["group"], summary["segments"]) == (["a"], "g", [segment])
    assert set(summary) == set(get_type_hints(RunSummary)) - {"summary"}  # run.summary: when kept


def test_the_documented_summary_json_is_what_is_written() -> None:
    """docs/record-format.md's summary.json table names exactly the keys of RunSummary, and
    of each part whose fields it lists (tests/test_record_format.py checks them against a
    summary.json a run wrote)."""
    documented = re.search(
        r"## `summary.json`\n\n(.*?)\n\n", (DOCS / "record-format.md").read_text(), re.S
    )
    assert documented, "docs/record-format.md lost its summary.json table"
    paths = re.findall(r"^\| `([^`]+)` \|", documented.group(1), re.M)
    assert {path.split(".")[0] for path in paths} == set(get_type_hints(RunSummary))
    for key, shape in (
        ("loss", LossFigures),
        ("throughput", Throughput),
        ("step_time", StepTime),
        ("errors", ErrorCounts),
        ("record", RecordHealth),
        ("eval.<metric>", EvalFigures),
        ("export", ExportFigures),
    ):
        fields = {path[len(key) + 1 :] for path in paths if path.startswith(f"{key}.")}
        assert fields == set(get_type_hints(shape)), key
    assert "instruments.<name>.kind" in paths and "kind" in get_type_hints(InstrumentFigures)


def _lines(steps: dict[int, dict], evals: dict[int, float], epoch_every: int) -> list[dict]:
    """A segment's record lines for ``steps`` (step -> metrics; an ``uncommitted`` key holds
    values that joined the step, as W&B's commit=False), evaluations and epoch ends."""
    out: list[dict] = []
    for step, values in steps.items():
        metrics = dict(values)
        joined = metrics.pop("uncommitted", None)
        out.append({"type": "step", "ts": float(step), "step": step, "metrics": metrics})
        if joined:
            out.append({"type": "values", "step": step, "metrics": joined, "uncommitted": ["x"]})
        if step in evals:
            value = evals[step]
            out.append(
                {
                    "type": "eval",
                    "step": step,
                    "metrics": {"val": value},
                    "best": {"val": value - 1},
                    "best_step": {"val": step},
                    "mode": {"val": "min"},
                }
            )
        if step % epoch_every == 0:
            out.append({"type": "epoch", "step": step, "epoch": step // epoch_every})
    return out


loss_value = st.one_of(
    st.floats(min_value=-1e3, max_value=1e3, allow_nan=False), st.sampled_from(["nan", "inf"])
)
step_values = st.fixed_dictionaries(
    {"loss": loss_value, "samples": st.integers(0, 64), "acc": st.floats(0, 1)},
    optional={
        "uncommitted": st.fixed_dictionaries({"loss": loss_value, "tokens": st.integers(0, 9)})
    },
)


@settings(max_examples=150, deadline=None)
@given(
    first=st.lists(step_values, min_size=1, max_size=30),
    second=st.lists(step_values, max_size=30),
    back=st.integers(min_value=0, max_value=29),
    declared=st.booleans(),
    eval_every=st.integers(1, 5),
    epoch_every=st.integers(1, 7),
    data=st.data(),
)
def test_a_record_resumed_from_an_older_checkpoint_sums_up_as_if_it_never_went_further(
    first, second, back, declared, eval_every, epoch_every, data
) -> None:
    """Killed after step n, resumed from the checkpoint of step k < n (said by
    ``initial_step``, or by the first step line going back): every figure of the fold
    (steps, samples, tokens, the loss's count, mean, std, min, max, best, final, last
    finite and non-finite count, epochs, evaluations, defined metrics) equals the fold of a
    record that stopped at step k and went on from there, each step once."""
    n = len(first)
    k = min(back, n - 1)
    steps1 = {i + 1: dict(m) for i, m in enumerate(first)}
    steps2 = {k + 1 + i: dict(m) for i, m in enumerate(second)}
    evals = {
        s: data.draw(st.floats(0, 1), label=f"eval {s}")
        for s in range(1, n + 1)
        if s % eval_every == 0
    }
    evals2 = {
        s: data.draw(st.floats(0, 1), label=f"eval {s}'") for s in steps2 if s % eval_every == 0
    }
    start2 = {"type": "run_start", "ts": 1000.0, "segment": 2}
    if declared:
        start2["initial_step"] = k
    defined = {"acc": "max", "loss": "min", "samples": "last"}

    def fold(lines: list[dict]) -> RecordFold:
        folded = RecordFold(percentiles=False, defined=defined)
        for line in lines:
            folded.add(line)
        return folded

    begin = {"type": "run_start", "ts": 0.5, "segment": 1}
    resumed = fold(
        [begin, *_lines(steps1, evals, epoch_every), start2, *_lines(steps2, evals2, epoch_every)]
    )
    kept1 = {s: dict(m) for s, m in enumerate(first, 1) if s <= k}
    alone = fold(
        [
            begin,
            *_lines(kept1, {s: v for s, v in evals.items() if s <= k}, epoch_every),
            {**start2, "initial_step": k},
            *_lines({s: dict(m) for s, m in steps2.items()}, evals2, epoch_every),
        ]
    )
    got, want = resumed.figures, alone.figures
    went_back = bool(steps2) or declared
    assert got.superseded == (n - k if went_back else 0)
    if not went_back:
        return  # nothing said where it went on from: no step of it, nothing superseded
    assert (got.steps, got.samples, got.tokens, resumed.epochs) == (
        want.steps,
        want.samples,
        want.tokens,
        alone.epochs,
    )
    loss, expected = got.loss_figures(), want.loss_figures()
    # worked back in floating point (RunningStats.remove): within rounding of losses up to 1e3
    assert loss.pop("mean") == pytest.approx(expected.pop("mean"), abs=1e-9)
    std, want_std = loss.pop("std"), expected.pop("std")
    assert (std is None) == (want_std is None)
    if std is not None and want_std is not None:
        assert std**2 == pytest.approx(want_std**2, abs=1e-3)
    loss.pop("key"), expected.pop("key")  # the name the loss is logged under: no step's value
    assert loss == expected
    assert resumed.evals == alone.evals
    assert resumed.defined.result() == alone.defined.result()


def test_going_back_beyond_the_kept_lines_takes_back_what_is_kept(monkeypatch) -> None:
    """The bound (``HISTORY`` step lines): a checkpoint older than the kept lines takes back
    those kept; the older superseded lines stay counted, and the loss figures are the ones
    that stood before the oldest kept line."""
    monkeypatch.setattr(summary_module, "HISTORY", 5)
    figures = StepFigures()
    for step in range(1, 11):
        figures.add(float(step), step, 1.0, None, {"loss": float(step), "samples": 2})
    figures.new_segment()
    figures.add(20.0, 3, 1.0, None, {"loss": 0.5, "samples": 2})  # back to the step-2 checkpoint
    assert (figures.superseded, figures.steps, figures.samples) == (5, 5 + 1, 2 * 6)
    loss = figures.loss_figures()
    assert (loss["min"], loss["max"], loss["final"], loss["count"]) == (0.5, 5.0, 0.5, 6)
