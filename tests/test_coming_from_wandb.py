"""docs/coming-from-wandb.md, row by row: each W&B-style snippet run with traintel's calls, and
the record checked for what the table says lands there."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import traintel
from conftest import read_lines
from traintel.record.reader import Records
from traintel.reports.analysis import summarize

DOC = (Path(__file__).resolve().parents[1] / "docs" / "coming-from-wandb.md").read_text()


def test_every_row_names_a_test_here():
    named = re.findall(r"\| `(test_\w+)` \|$", DOC, re.M)
    assert len(named) >= 14
    missing = {name for name in named if name not in globals()}
    assert not missing, f"rows of docs/coming-from-wandb.md without a test: {missing}"


def test_init_arguments(quiet_run):
    with quiet_run(
        name="bert-base",
        config={"lr": 3e-5, "batch_size": 32},
        tags=["baseline"],
        notes="first try",
        group="sweep-1",
    ) as run:
        assert traintel.current_run() is run  # wandb.run
        run.log(loss=1.0)
    (start,) = read_lines(run.dir).of("run_start")
    assert (start["name"], start["tags"], start["notes"], start["group"]) == (
        "bert-base",
        ["baseline"],
        "first try",
        "sweep-1",
    )
    (config,) = read_lines(run.dir).of("config")
    assert config["config"] == {"lr": 3e-5, "batch_size": 32}
    with quiet_run(config=argparse.Namespace(lr=0.1, epochs=3)) as parsed:  # config=args
        parsed.log(loss=1.0)
    (config,) = read_lines(parsed.dir).of("config")
    assert config["config"] == {"lr": 0.1, "epochs": 3}
    summary = json.loads((run.dir / "summary.json").read_text())
    assert (summary["tags"], summary["notes"], summary["group"]) == (
        ["baseline"],
        "first try",
        "sweep-1",
    )


def test_resume(quiet_run):
    with pytest.raises(FileNotFoundError):
        quiet_run(run_id="job-7", resume="must")
    with quiet_run(run_id="job-7", resume="allow") as run:
        for i in range(1, 4):
            run.log(loss=1.0 / i, step=i)
    with quiet_run(run_id="job-7", resume="must") as run:
        for i in range(4, 7):
            run.log(loss=1.0 / i, step=i)
    lines = read_lines(run.dir)
    assert [s["segment"] for s in lines.of("run_start")] == [1, 2]
    assert run.summary["steps"] == 6 and len(run.summary["segments"]) == 2
    with pytest.raises(FileExistsError):
        quiet_run(run_id="job-7", resume="never")


def test_offline_then_sync(quiet_run):
    with quiet_run(mode="offline") as run:
        for i in range(1, 4):
            run.log(loss=1.0 / i, step=i)
    assert [s["step"] for s in read_lines(run.dir).of("step")] == [1, 2, 3]
    said = subprocess.run(
        [
            sys.executable,
            "-m",
            "traintel.cli",
            "sync",
            "--dry-run",
            "--endpoint",
            "http://127.0.0.1:9",
            str(run.dir),
        ],
        capture_output=True,
        text=True,
    )
    assert said.returncode == 0, said.stderr
    assert "would send" in said.stdout + said.stderr


def test_log_and_the_loss_by_its_name(quiet_run):
    with quiet_run() as run:
        for i in range(1, 5):
            run.log({"train/loss": 1.0 / i})
    assert [s["metrics"]["train/loss"] for s in read_lines(run.dir).of("step")] == [
        1.0,
        0.5,
        1 / 3,
        0.25,
    ]
    assert (run.summary["loss"]["key"], run.summary["loss"]["final"]) == ("train/loss", 0.25)


def test_log_with_step(quiet_run):
    with quiet_run() as run:
        for i in range(0, 50, 10):
            run.log({"train/loss": 1.0}, step=i)
        run.log({"val/loss": 0.5}, step=40)  # the same step again
    lines = read_lines(run.dir)
    assert [s["step"] for s in lines.of("step")] == [0, 10, 20, 30, 40]
    assert [(v["step"], v["metrics"]) for v in lines.of("values")] == [(40, {"val/loss": 0.5})]
    assert not [line for line in lines.of("log") if line["level"] == "warning"]
    assert run.summary["steps"] == 41
    # a loop counting from 1 that logs every 10: the first line counts once unless the run
    # says where its steps start, as the table's row says
    for options, steps in (({}, 91), ({"initial_step": 0}, 100)):
        with quiet_run(**options) as run:
            for i in range(10, 101, 10):
                run.log({"train/loss": 1.0, "samples": 32}, step=i)
        assert (run.summary["steps"], run.summary["samples"]) == (steps, steps * 32)


def test_commit_false(quiet_run):
    with quiet_run() as run:
        for i in range(1, 4):
            run.log({"train/lr": 0.1}, commit=False)
            run.log({"train/loss": 1.0 / i}, step=i)
        run.log({"grad_norm": 2.0}, commit=False)  # nothing commits it
    lines = read_lines(run.dir)
    steps = lines.of("step")
    assert [(s["step"], s["metrics"], s["uncommitted"]) for s in steps] == [
        (i, {"train/lr": 0.1, "train/loss": 1.0 / i}, ["train/lr"]) for i in range(1, 4)
    ]
    (end,) = lines.of("values")
    assert (end["step"], end["uncommitted"]) == (3, ["grad_norm"])


def test_empty_log_commits(quiet_run):
    """ConvNeXt's W&B logger ends an epoch with `wandb.log({})`: the values logged with
    commit=False before it are that step's, not the next batch's."""
    with quiet_run() as run:
        run.log({"train/loss": 1.0})
        run.log({"epoch": 0}, commit=False)
        run.log({})  # commits the open values
        run.log()  # nothing open: refused, the run goes on
        run.log({"train/loss": 0.5})
    lines = read_lines(run.dir)
    assert [(s["step"], s["metrics"], s.get("uncommitted")) for s in lines.of("step")] == [
        (1, {"train/loss": 1.0}, None),
        (2, {"epoch": 0}, ["epoch"]),
        (3, {"train/loss": 0.5}, None),
    ]
    assert not lines.of("values")


def test_define_metric_step_metric(quiet_run):
    """W&B's second axis: `define_metric("batch/*", step_metric="batch/step")` with
    `wandb.log({..., "batch/step": it})` becomes `step=it`; epoch-axis values `log_values`. A
    literal port of the call is ignored with one warning, not a TypeError."""
    with quiet_run() as run:
        run.define_metric("batch/*", step_metric="batch/step")  # as ported: ignored
        run.define_metric("val/acc", step_metric="epoch", summary="max")
        for it in range(4):
            run.log({"batch/loss": 1.0 / (it + 1)}, commit=False)
            run.log({"batch/step": it}, step=it)
            if it % 2 == 1:
                run.log_values({"epoch": it // 2, "val/acc": 0.5 + it / 10})
    lines = read_lines(run.dir)
    assert [s["step"] for s in lines.of("step")] == [0, 1, 2, 3]
    assert [(v["step"], v["metrics"]) for v in lines.of("values")] == [
        (1, {"epoch": 0, "val/acc": 0.6}),
        (3, {"epoch": 1, "val/acc": 0.8}),
    ]
    assert run.summary["steps"] == 4
    assert json.loads((run.dir / "summary.json").read_text())["summary"] == {
        "val/acc": {"max": 0.8}
    }
    said = [e["message"] for e in lines.of("log") if "step_metric=" in e["message"]]
    assert len(said) == 2 and "step=it" in said[0]


def test_metric_names(quiet_run):
    """W&B takes any text as a name; traintel's are OpenTelemetry instrument names: a space is
    refused with the name to use instead, the call's other values kept."""
    with quiet_run() as run:
        run.log({"Global Train/loss": 1.0, "lr": 0.1})
        run.log({"Global_Train/loss": 0.5, "lr": 0.1})
    steps = read_lines(run.dir).of("step")
    assert [s["metrics"] for s in steps] == [{"lr": 0.1}, {"Global_Train/loss": 0.5, "lr": 0.1}]
    (refused,) = [e for e in read_lines(run.dir).of("log") if "Global Train/loss" in e["message"]]
    assert "'Global_Train/loss'" in refused["message"]


def test_a_loss_name_that_would_be_refused_is_said_at_init(quiet_run):
    with pytest.raises(ValueError, match="'Rank-0_Batch_Wise/train_loss'"):
        quiet_run(loss="Rank-0 Batch Wise/train_loss")


def test_a_refused_name_keeps_the_commit(quiet_run):
    """A literal port whose committing call logs only refused names still ends its step: the
    values logged with commit=False before it are that step's, not the next one's."""
    with quiet_run() as run:
        for it in range(3):
            run.log({"batch/loss": 1.0 / (it + 1)}, commit=False)
            run.log({"Batch Wise/step": it}, step=it)
    steps = read_lines(run.dir).of("step")
    assert [(s["step"], s["metrics"]) for s in steps] == [
        (it, {"batch/loss": 1.0 / (it + 1)}) for it in range(3)
    ]


def test_config_update(quiet_run):
    with quiet_run(config={"lr": 0.1}) as run:
        run.config.update({"epochs": 3})
        run.config["warmup"] = 100
        run.config.update({"lr": 0.05}, allow_change=True)
        run.log(loss=1.0)
    updates = [c for c in read_lines(run.dir).of("config") if c["reason"] == "update"]
    assert [c["changed"] for c in updates] == [["epochs"], ["warmup"], ["lr"]]
    assert updates[-1]["config"] == {"lr": 0.05, "epochs": 3, "warmup": 100}


def test_summary_and_define_metric(quiet_run):
    with quiet_run(goals={"val/acc": "max"}) as run:
        run.define_metric("val/acc", summary="max")
        for i, acc in enumerate([0.6, 0.8, 0.7], start=1):
            run.log({"train/loss": 1.0 / i}, step=i)
            run.log_eval(step=i, **{"val/acc": acc})
        run.summary["best_acc"] = 0.8
    summary = json.loads((run.dir / "summary.json").read_text())
    assert summary["summary"] == {"best_acc": 0.8, "val/acc": {"max": 0.8}}
    assert summary["eval"]["val/acc"]["best"] == 0.8
    assert summary["eval"]["val/acc"]["best_step"] == 2
    # traintel logs summary shows them (its JSON is this dict)
    assert summarize(Records(run.dir))["summary"] == summary["summary"]


def test_alert(quiet_run):
    with quiet_run() as run:
        run.log(loss=1.0)
        run.event("alert", level="warning", title="Low accuracy", text="acc 0.2 < 0.5")
    (alert,) = [e for e in read_lines(run.dir).of("event") if e["event"] == "alert"]
    assert (alert["level"], alert["fields"]["title"], alert["fields"]["text"]) == (
        "warning",
        "Low accuracy",
        "acc 0.2 < 0.5",
    )


def test_watch(quiet_run):
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with quiet_run() as run:
        watched = run.watch(model)
        for _ in run.track(range(2)):
            model(torch.randn(3, 4)).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
            run.log(loss=1.0)
    watched.remove()  # the global optimizer hook (a finished run's removes itself: issue 34)
    steps = read_lines(run.dir).of("step")
    assert all(s["metrics"]["grad_norm"] > 0 for s in steps)


@pytest.mark.parametrize("exit_code,status", [(0, "finished"), (1, "failed")])
def test_finish_exit_code(quiet_run, exit_code, status):
    run = quiet_run()
    run.log(loss=1.0)
    run.finish() if exit_code == 0 else run.finish(status="failed")
    (end,) = read_lines(run.dir).of("run_end")
    assert end["status"] == status == json.loads((run.dir / "summary.json").read_text())["status"]


def test_finish_exit_code_with_no_finish_call(tmp_path, quiet):
    """A W&B script that never calls `wandb.finish()`: the run ends at the interpreter's exit,
    its status by the exit (a clean one: `finished`)."""
    script = (
        "import traintel\n"
        f"run = traintel.init(project='p', dir={str(tmp_path)!r}, **{quiet!r})\n"
        "run.log(loss=1.0)\n"
        "print(run.dir)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    (end,) = read_lines(run_dir).of("run_end")
    assert (
        end["status"] == "finished" == json.loads((run_dir / "summary.json").read_text())["status"]
    )
