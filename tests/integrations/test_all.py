"""The contract every integration keeps, asked of each one with its real framework (as
Lightning's ``tests_pytorch/loggers/test_all.py`` asks every logger): a training job is one run
with a line per optimizer step and its evaluations at the right step; the run stays open for
evaluation after training and ends when asked; a run the user started is joined and left open;
a failure keeps its exception, classified, in the record and the crash report; a dataset's error
is a data error; the next training job is a new run; names are mapped one way; progress is drawn
by one party. The jobs are in drivers.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from drivers import DRIVERS, EVAL_STEPS, STEPS, Driver, no_run_left_open  # noqa: F401

import traintel
from conftest import read_lines
from traintel.integrations.base import record_name, split

pytestmark = pytest.mark.parametrize("driver", DRIVERS, ids=[d.name for d in DRIVERS])


def make(driver: Driver, tmp_path: Path, quiet: dict, **options):
    return driver.make(**{"project": "contract", "dir": str(tmp_path / "runs"), **quiet, **options})


def run_dirs(tmp_path: Path) -> list[Path]:
    return sorted(p.parent for p in (tmp_path / "runs").rglob("events.jsonl"))


def fails_at_the_top(driver: Driver, exc: BaseException) -> None:
    """What happens when an exception reaches the top of the program: the process's
    excepthook, which traintel's run holds (a no-op when the integration saw it first)."""
    if not driver.sees_failures:
        sys.excepthook(type(exc), exc, exc.__traceback__)


def test_a_training_job_is_one_run_with_a_line_per_optimizer_step(driver, tmp_path, quiet):
    integration = make(driver, tmp_path, quiet)
    driver.train(integration, tmp_path)
    run = integration.run
    assert run is not None and not run.finished
    integration.finish()
    (directory,) = run_dirs(tmp_path)
    lines = read_lines(directory)
    steps = lines.of("step")
    assert [s["step"] for s in steps] == list(range(1, STEPS + 1))
    assert [e["step"] for e in lines.of("eval")] == EVAL_STEPS
    assert all(e["mode"][name] == "min" for e in lines.of("eval") for name in e["mode"])
    summary = json.loads((directory / "summary.json").read_text())
    assert (summary["status"], summary["steps"]) == ("finished", STEPS)
    assert summary["loss"]["count"] > 0


def test_the_run_stays_open_for_evaluation_after_training(driver, tmp_path, quiet):
    integration = make(driver, tmp_path, quiet)
    trained = driver.train(integration, tmp_path)
    driver.evaluate(trained)
    assert traintel.current_run() is integration.run
    integration.finish()
    assert integration.run is None and traintel.current_run() is None
    (directory,) = run_dirs(tmp_path)
    lines = read_lines(directory)
    assert len(lines.of("run_start")) == 1
    assert [e["step"] for e in lines.of("eval")] == [*EVAL_STEPS, STEPS]  # after training


def test_a_run_the_user_started_is_joined_and_left_open(driver, tmp_path, quiet):
    with traintel.init(project="mine", dir=str(tmp_path / "runs"), **quiet) as run:
        integration = make(driver, tmp_path, quiet)
        driver.train(integration, tmp_path)
        integration.finish()
        assert traintel.current_run() is run and not run.finished
        run.log_eval(test_loss=0.5, step=STEPS)
    (directory,) = run_dirs(tmp_path)
    lines = read_lines(directory)
    assert [s["step"] for s in lines.of("step")] == list(range(1, STEPS + 1))
    assert lines.of("event", "framework_config")[0]["fields"]["source"] == integration.source


def test_a_failure_keeps_its_exception_classified_with_a_crash_report(driver, tmp_path, quiet):
    integration = make(driver, tmp_path, quiet)
    with pytest.raises(ValueError, match="forward pass of step 6") as raised:
        driver.train(integration, tmp_path, fail="step")
    fails_at_the_top(driver, raised.value)
    assert traintel.current_run() is None
    (directory,) = run_dirs(tmp_path)
    (error,) = read_lines(directory).of("error")
    assert (error["exc_type"], error["error_type"]) == ("ValueError", "other")
    assert "forward pass of step 6" in error["traceback"]
    crash = json.loads((directory / "crash-report.json").read_text())
    assert [(e["exc_type"], e["error_type"]) for e in crash["errors"]] == [("ValueError", "other")]
    summary = json.loads((directory / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["steps"] == 5


def test_a_datasets_error_is_a_data_error(driver, tmp_path, quiet):
    integration = make(driver, tmp_path, quiet)
    with pytest.raises(ValueError, match="sample 20") as raised:
        driver.train(integration, tmp_path, fail="data")
    fails_at_the_top(driver, raised.value)
    (directory,) = run_dirs(tmp_path)
    (error,) = read_lines(directory).of("error")
    assert (error["error_type"], error["operation"]) == ("data", "data_loading")
    assert json.loads((directory / "summary.json").read_text())["errors"]["by_type"] == {"data": 1}


def test_the_next_training_job_is_a_new_run(driver, tmp_path, quiet):
    if driver.same_run_next_time:
        pytest.skip(f"{driver.name}: {driver.same_run_next_time}")
    integration = make(driver, tmp_path, quiet)
    trained = driver.train(integration, tmp_path)
    first = integration.run
    driver.train(
        integration, tmp_path, **({"trainer": trained} if driver.name == "huggingface" else {})
    )
    assert first.finished and integration.run is not first
    integration.finish()
    assert len(run_dirs(tmp_path)) == 2


@pytest.mark.parametrize("bar", [True, False])
def test_progress_is_drawn_by_one_party(driver, bar, tmp_path, quiet):
    integration = make(driver, tmp_path, {**quiet, "progress": None})
    driver.train(integration, tmp_path, bar=bar)
    shown = integration.run.progress.mode
    integration.finish()
    assert shown == ("off" if bar and driver.draws_bar else "lines")  # lines: no terminal


def test_names_are_mapped_one_way_for_every_integration(driver, tmp_path, quiet):
    integration = make(driver, tmp_path, quiet)
    driver.train(integration, tmp_path)
    integration.finish()
    (directory,) = run_dirs(tmp_path)
    names = {name for s in read_lines(directory).of("step") for name in s["metrics"]}
    assert "loss" in names and "train_loss" not in names and "train_mae" not in names
    assert ("train/mae" in names) == driver.records_logged


def test_the_one_mapping(driver):
    """The rules every integration applies to a report, whatever its framework."""
    assert [
        record_name(n)
        for n in (
            "train_loss",
            "train/loss",
            "loss",
            "learning_rate",
            "train/mae",
            "val/mae",
            "eval.top1",
            "val acc",
        )
    ] == ["loss", "loss", "loss", "lr", "train/mae", "val/mae", "eval.top1", "val_acc"]
    report = split(
        {
            "train_loss_step": 1.0,
            "train_loss_epoch": 0.9,
            "val/mae": 0.5,
            "epoch": 3,
            "train_runtime": 10.0,
            "note": "text",
        }
    )
    assert report == ({"loss": 1.0}, {"val/mae": 0.5}, {"train_loss_epoch": 0.9})
    # Accelerate's *_no_trainer end-of-epoch call: perplexity comes with eval_loss
    report = split({"perplexity": 9.5, "eval_loss": 2.25, "train_loss": 2.5, "step": 48})
    assert report == ({"loss": 2.5}, {"perplexity": 9.5, "eval_loss": 2.25}, {})
