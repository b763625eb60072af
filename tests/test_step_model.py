"""The step model (traintel.run.steps): a step is a point on the loop's step axis, not a call.

Keywords or a dict, integer-like step numbers, commit=False, values for a step already written,
run.log_values, run.track counting batches or taking the loop's numbers, logging every N steps:
each writes exactly the steps the loop took, and rates come from step numbers and wall time."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from conftest import read_lines
from traintel.record.reader import Records
from traintel.record.summary import StepFigures
from traintel.reports.analysis import Summary, scan


def steps_of(run) -> list[dict]:
    return read_lines(run.dir).of("step")


def test_a_dict_and_keywords_and_slashes_in_names(quiet_run):
    with quiet_run(strict=True) as run:
        run.log({"train/loss": 0.5, "eval.top1": 0.25}, lr=0.1)
        with pytest.raises(
            TypeError,
            match=r"first argument is a dict of metrics, e\.g\. "
            r"run\.log\(\{'loss': 0\.5\}, step=10\).*pass the "
            "step as step=",
        ):
            run.log(5, loss=1.0)
        with pytest.raises(ValueError, match="name 'train loss' is refused"):
            run.log({"train loss": 1.0})
    (step,) = steps_of(run)
    assert step["metrics"] == {"train/loss": 0.5, "eval.top1": 0.25, "lr": 0.1}
    assert run.state.latest["train/loss"] == 0.5


@pytest.mark.parametrize("number", [np.int64(7), np.int32(7), torch.tensor(7)])
def test_integer_like_step_numbers(quiet_run, number):
    with quiet_run() as run:
        run.log(step=number, loss=1.0)
    assert [s["step"] for s in steps_of(run)] == [7]


def test_commit_false_adds_values_to_the_open_step(quiet_run):
    with quiet_run() as run:
        run.log(loss=1.0, commit=False)
        run.log(grad_norm=2.0, commit=False)
        run.log(lr=0.1)  # ends step 1
        run.log({"loss": 0.9}, step=5, commit=False)
        run.log(acc=0.5, step=5)  # the same step: ends it
        run.log(loss=0.8, step=6, commit=False)
        run.log(loss=0.7, step=7)  # a later step: step 6 ends first
    assert [(s["step"], s["metrics"]) for s in steps_of(run)] == [
        (1, {"loss": 1.0, "grad_norm": 2.0, "lr": 0.1}),
        (5, {"loss": 0.9, "acc": 0.5}),
        (6, {"loss": 0.8}),
        (7, {"loss": 0.7}),
    ]


def test_values_for_a_step_already_written_make_no_second_step(quiet_run):
    with quiet_run() as run:
        run.log(step=10, loss=1.0)
        run.log(step=10, val_acc=0.5)  # a second call for the same step
        run.log(step=3, late=1.0)  # going back
    lines = read_lines(run.dir)
    assert [s["step"] for s in lines.of("step")] == [10]
    assert [(v["step"], v["metrics"]) for v in lines.of("values")] == [
        (10, {"val_acc": 0.5}),
        (3, {"late": 1.0}),
    ]
    (warning,) = [line for line in lines.of("log") if "already written" in line["message"]]
    assert warning["level"] == "warning" and "run.log_values()" in warning["message"]
    assert run.summary["steps"] == 1 and run.summary["last_step"] == 10


def test_log_values_neither_counts_nor_times_a_step(quiet_run):
    with quiet_run() as run:
        for epoch in run.epochs(2):
            for _ in run.track(range(3)):
                run.log(loss=1.0)
            run.log_values(train_acc=0.5 + epoch / 10)
    lines = read_lines(run.dir)
    assert len(lines.of("step")) == 6 and run.summary["steps"] == 6
    assert [(v["step"], v["epoch"], v["metrics"]) for v in lines.of("values")] == [
        (3, 0, {"train_acc": 0.5}),
        (6, 1, {"train_acc": 0.6}),
    ]
    assert [e["steps"] for e in lines.of("epoch")] == [3, 3]
    assert (run.summary["epochs"], run.summary["epoch"]) == (2, 1)
    with pytest.raises(RuntimeError, match="run.log_values: run .* has finished"):
        run.log_values(late=1.0)


def test_logging_every_n_steps_counts_every_step_and_its_samples(quiet_run):
    with quiet_run(total_steps=100) as run:
        for it in range(0, 101):
            time.sleep(0.001)
            if it % 10 == 0:
                run.log(step=it, loss=1.0 / (it + 1), samples=8, tokens=80)
    steps = steps_of(run)
    assert [s["step"] for s in steps] == list(range(0, 101, 10))
    # each line after the first stands for 10 steps; its step_s is the time per step
    assert steps[0]["step_s"] is None
    for before, line in zip(steps, steps[1:]):
        assert line["step_s"] == pytest.approx((line["ts"] - before["ts"]) / 10)
    summary = run.summary
    assert (summary["steps"], summary["samples"], summary["tokens"]) == (101, 808, 8080)
    rate = summary["throughput"]["steps_per_s"]
    assert summary["throughput"]["samples_per_s"] == pytest.approx(8 * rate)
    lines_span = steps[-1]["ts"] - steps[0]["ts"]
    assert rate == pytest.approx(100 / lines_span)  # the first line's own time is unknown


def test_track_counts_each_batch_as_a_step(quiet_run):
    with quiet_run() as run:
        for _ in run.track(range(5)):
            run.log(loss=1.0, samples=4)
        for _ in run.track(range(3)):  # a loop that never logs: still every batch is a step
            pass
    steps = steps_of(run)
    assert [s["step"] for s in steps] == list(range(1, 9))
    assert all(s["data_wait_s"] is not None for s in steps)
    assert run.summary["samples"] == 20


def test_track_with_the_loops_own_step_numbers_makes_no_phantom_steps(quiet_run):
    """The bug this replaces: run.log(step=gs) inside run.track added a step per call."""
    with quiet_run() as run:
        for gs, _ in enumerate(run.track(range(6)), start=100):
            run.log(loss=1.0, step=gs)
        run.log_values(epoch_loss=1.0)
    assert [s["step"] for s in steps_of(run)] == list(range(100, 106))
    assert run.summary["steps"] == 6


def test_track_with_accumulation_counts_optimizer_steps(quiet_run):
    with quiet_run() as run:
        completed = 0
        for batch in run.track(range(12)):
            if (batch + 1) % 4 == 0:
                completed += 1
                run.log(loss=1.0 / completed, step=completed)
    steps = steps_of(run)
    assert [s["step"] for s in steps] == [1, 2, 3]
    # each step is timed over its four batches, data wait included
    assert all(s["data_wait_s"] is not None for s in steps)
    assert run.summary["steps"] == 3


def test_track_with_micro_batches_logging_the_same_number(quiet_run):
    with quiet_run() as run:
        completed = 0
        for batch in run.track(range(8)):
            if batch and batch % 2 == 0:
                completed += 1
            run.log(loss=float(batch), step=completed)
    steps = steps_of(run)
    assert [s["step"] for s in steps] == [0, 1, 2, 3]
    assert run.summary["steps"] == 4


def test_rates_from_step_numbers_equal_rates_from_every_step():
    """Logging every 5 steps gives the rates of logging every step (summary.json's fold, fed
    the same 10 ms steps both ways)."""
    every, sparse = StepFigures(), StepFigures()
    for step in range(60):
        ts = 1000.0 + 0.01 * (step + 1)
        every.add(ts, step, 0.01, None, {"samples": 16})
        if step % 5 == 0 or step == 59:
            sparse.add(ts, step, 0.01, None, {"samples": 16})
    assert sparse.steps == every.steps == 60 and sparse.samples == every.samples == 960
    assert sparse.throughput() == pytest.approx(every.throughput())
    assert every.throughput()["steps_per_s"] == pytest.approx(100)


def test_a_loop_that_says_where_its_steps_start_counts_its_first_line_in_full(quiet_run):
    """A framework's global step counts from 1 and a loop may log every N of them from N
    (Accelerate's per-epoch ``accelerator.log(step=completed_steps)``): ``initial_step=0`` makes
    the first line at step 10 stand for steps 1-10, in the live state, summary.json and a
    reader's fold alike."""
    with quiet_run(initial_step=0, total_steps=30) as run:
        for step in (10, 20, 30):
            time.sleep(0.01)
            run.log(step=step, loss=1.0, samples=4)
        assert run.state.steps_taken == 30 and run.state.samples == 120
    assert (run.summary["steps"], run.summary["samples"]) == (30, 120)
    (start,) = read_lines(run.dir).of("run_start")
    assert start["initial_step"] == 0
    summary = Summary()
    scan(Records(run.dir), summary)
    assert (summary.result()["steps"], summary.result()["samples"]) == (30, 120)


def test_initial_step_is_where_the_loop_numbers_on_from(quiet_run):
    with quiet_run(initial_step=500) as run:
        assert run.state.step == 500
        run.log(loss=1.0)  # unnumbered: the next after the initial step
        run.log(step=510, loss=1.0)
    assert [s["step"] for s in steps_of(run)] == [501, 510]
    assert run.summary["steps"] == 10


def test_beginning_an_epoch_ends_the_open_one(quiet_run):
    """A loop that calls only run.begin_epoch(n) at the top of each epoch (pytorch/examples'
    `for epoch in range(1, epochs + 1)`) gets every epoch's line, not just the last."""
    with quiet_run() as run:
        for epoch in (1, 2, 3):
            run.begin_epoch(epoch)
            run.log(loss=1.0)
            run.log(loss=0.5)
    assert [(e["epoch"], e["steps"]) for e in read_lines(run.dir).of("epoch")] == [
        (1, 2),
        (2, 2),
        (3, 2),
    ]
    assert run.summary["epochs"] == 3


def test_segments_count_from_where_the_last_one_ended():
    figures = StepFigures()
    for step in (100, 110, 120):  # a loop numbering from 100: its first line is one step
        figures.add(float(step), step, 1.0, None, None)
    assert figures.steps == 21 and figures.active_s() == pytest.approx(21)
    figures.new_segment()  # resumed: the loop goes on from 120 (or back to a checkpoint)
    for step in (130, 140):
        figures.add(500.0 + step, step, 1.0, None, None)
    assert figures.steps == 41
    assert figures.active_s() == pytest.approx(21 + 10)  # not the gap between segments
    figures.new_segment()
    figures.add(900.0, 135, 1.0, None, None)  # rewound to a checkpoint after step 134:
    assert figures.steps == 41 - 6 + 1  # steps 135..140 are superseded, counted once
    assert figures.superseded == 6


def test_commit_false_values_join_the_step_they_lead_to_as_wandb_merges_them(quiet_run):
    """W&B's habit (finding 1 of issue 29): eval at step=n, the train step's values with
    commit=False, then run.log(..., step=n): every value lands at step n, each step once, and
    no phantom step at the end; the lines say which values were uncommitted."""
    with quiet_run() as run:
        for i in range(1, 73):
            if i % 24 == 0:
                run.log({"eval/loss": 2.0 / i}, step=i)
            run.log({"train/loss": 1.0 / i, "train/lr": 0.1}, commit=False)
            run.log({"samples": 8}, step=i)
        run.log({"late": 1.0}, commit=False)  # nothing commits it: it joins step 72
    lines = read_lines(run.dir)
    steps = lines.of("step")
    assert [s["step"] for s in steps] == list(range(1, 73))
    assert run.summary["steps"] == 72 and run.summary["samples"] == 72 * 8
    by_step = {s["step"]: dict(s["metrics"]) for s in steps}
    for v in lines.of("values"):
        by_step[v["step"]].update(v["metrics"])
    assert all(by_step[i]["train/loss"] == 1.0 / i for i in range(1, 73))
    assert by_step[24]["eval/loss"] == 2.0 / 24 and by_step[72]["late"] == 1.0
    # a step the eval wrote first: the train values join it as a values line, marked
    (joined,) = [v for v in lines.of("values") if v["step"] == 24]
    assert joined["uncommitted"] == ["train/loss", "train/lr"]
    assert steps[0]["uncommitted"] == ["train/loss", "train/lr"]
    assert "uncommitted" not in steps[0]["metrics"]
    end = lines.of("values")[-1]
    assert (end["step"], end["metrics"], end["uncommitted"]) == (72, {"late": 1.0}, ["late"])
    # the train loss of a step the eval wrote first counts as that step's
    loss = run.summary["loss"]
    assert (loss["key"], loss["count"], loss["final"]) == ("train/loss", 72, 1.0 / 72)
    # the same step named again is W&B's way to add to it: no warning
    assert not [line for line in lines.of("log") if "already written" in line["message"]]


def test_commit_false_then_a_plain_commit_marks_only_uncommitted_keys(quiet_run):
    with quiet_run() as run:
        run.log(loss=1.0, commit=False)
        run.log(loss=0.9, lr=0.1)  # committed: its loss replaces the uncommitted one
        run.log(acc=0.5)
    steps = steps_of(run)
    assert steps[0]["metrics"] == {"loss": 0.9, "lr": 0.1} and "uncommitted" not in steps[0]
    assert "uncommitted" not in steps[1]
