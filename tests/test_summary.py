"""summary.json's figures (traintel.record.summary): the step fold both the record writer and
`traintel logs summary` use, the instrument summaries, and the document's shape."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_type_hints

import pytest

from traintel.core.state import RunState
from traintel.core.stats import RunningStats
from traintel.record.summary import (
    ErrorCounts,
    EvalFigures,
    ExportFigures,
    InstrumentFigures,
    LossFigures,
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
