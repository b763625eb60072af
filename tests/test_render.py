"""Presenting (traintel.reports.render): numbers, durations, record lines, tables and the progress line."""

from __future__ import annotations

import datetime as dt

import pytest

from traintel.core.state import RunState
from traintel.reports import render


@pytest.mark.parametrize(
    "value, text",
    [
        (None, "-"),
        (3, "3"),
        (2.0, "2"),
        (12345, "12,345"),
        (12345.0, "12,345"),
        (0.000123456, "0.0001235"),
        (3.14159, "3.142"),
        (1e20, "1e+20"),
        (True, "True"),
        ("text", "text"),
    ],
)
def test_numbers_for_people(value, text) -> None:
    assert render.num(value) == text


@pytest.mark.parametrize(
    "seconds, text",
    [(None, "-"), (0.04, "0.0s"), (59.94, "59.9s"), (61, "1m01s"), (3725, "1h02m05s")],
)
def test_durations(seconds, text) -> None:
    assert render.duration(seconds) == text
    assert render.duration(None, unknown="?") == "?"


def test_times_are_local_to_the_second() -> None:
    ts = 1_700_000_000.7
    assert render.iso(ts) == dt.datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")
    assert render.iso(None) == "-"


@pytest.mark.parametrize(
    "line, text",
    [
        (
            {"type": "step", "step": 3, "epoch": 0, "metrics": {"loss": 0.51234}, "step_s": 0.25},
            "step 3 epoch 0 loss=0.5123 step_s=0.25",
        ),
        (
            {"type": "eval", "step": 10, "metrics": {"acc": 0.9}, "is_best": {"acc": True}},
            "eval step 10 acc=0.9 (best acc)",
        ),
        (
            {
                "type": "values",
                "step": 24,
                "epoch": 1,
                "metrics": {"train_acc": 0.5},
                "uncommitted": ["train_acc"],
            },  # issue 29: was the raw dict
            "values step 24 epoch 1 train_acc=0.5 (uncommitted: train_acc)",
        ),
        (
            {
                "type": "error",
                "error_type": "oom",
                "severity": "critical",
                "operation": "forward",
                "exc_type": "OutOfMemoryError",
                "message": "CUDA out of memory",
            },
            "oom (critical) in forward: OutOfMemoryError: CUDA out of memory",
        ),
        ({"type": "milestone", "percent": 50, "step": 5, "eta_s": 90}, "50% at step 5, eta 1m30s"),
        (
            {"type": "log", "logger": "traintel.data", "message": "shard", "fields": {"n": 3}},
            "[traintel.data] shard n=3",
        ),
        ({"type": "custom", "ts": 1.0, "run": "r", "detail": 1}, "detail=1"),
    ],
)
def test_one_line_per_record(line, text) -> None:
    assert render.describe(line) == text


def test_tables() -> None:
    assert render.text_table(["a", "bb"], [["xxx", "y"]]) == "a    bb\nxxx  y\n"
    assert render.text_table(["", ""], [["k", "v"]]) == "k  v\n"
    assert render.markdown_table(["", ""], [["pipe", "a|b"], ["none", None]]) == [
        "| | |",
        "|---|---|",
        "| pipe | a\\|b |",
        "| none | - |",
    ]


def test_the_progress_line() -> None:
    state = RunState()
    state.total_steps, state.step, state.epoch, state.epochs_ended = 200, 50, 1, 1
    state.rates = {"steps_per_second": 10.0}
    state.latest["loss"] = 0.123456
    # the epoch as the loop numbers it (as the record does), then which of how many it is
    assert render.progress_text(state, total_epochs=4) == (
        "epoch 1 (2/4) | step 50/200 (25.0%) | 10.0 steps/s | loss 0.1235 | eta 15.0s"
    )
    assert render.progress_text(RunState(), None) == "epoch 0 | step 0"
    state.latest["loss"] = float("nan")  # shown as it is, not the last finite one
    assert "| loss nan |" in render.progress_text(state, total_epochs=4)
