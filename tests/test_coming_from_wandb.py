"""docs/coming-from-wandb.md, row by row: each W&B-style snippet run with traintel's calls, and
the record checked for what the table says lands there."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
