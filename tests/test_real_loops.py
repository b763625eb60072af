"""Real training loops, written the way public examples write them (``tests/loops/``: nanoGPT's
while loop, pytorch/examples' MNIST epochs logging every N batches, the Hugging Face no_trainer
loop with gradient accumulation over ``run.track``), each run as a process of its own: the steps,
rates, ETA and losses in the record, summary.json, ``/status`` and the command line equal what
the loop measured itself (rates and ETA within 10 %)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import read_lines

LOOPS = Path(__file__).parent / "loops"


def run_loop(name: str, tmp_path: Path) -> tuple[dict[str, Any], Path]:
    """Run ``tests/loops/<name>``; what it measured and its run directory."""
    done = subprocess.run([sys.executable, str(LOOPS / name), str(tmp_path)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OTEL_SDK_DISABLED": "true"})
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("MEASURED ")]
    measured = json.loads(line.removeprefix("MEASURED "))
    return measured, Path(measured["run_dir"])


def cli(*args: str) -> Any:
    done = subprocess.run([sys.executable, "-m", "traintel.cli", *args, "--format", "json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def by_step(values: dict[str, Any]) -> dict[int, Any]:
    return {int(step): value for step, value in values.items()}


def test_a_nanogpt_while_loop_logging_every_ten_iterations(tmp_path: Path) -> None:
    measured, run_dir = run_loop("nanogpt.py", tmp_path)
    iterations, rate = measured["iterations"], measured["iterations"] / measured["seconds"]
    steps = read_lines(run_dir).of("step")
    assert {s["step"]: s["metrics"]["loss"] for s in steps} == by_step(measured["losses"])
    assert {s["step"]: s["metrics"]["lr"] for s in steps} == by_step(measured["lrs"])

    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["steps"], summary["last_step"]) == (iterations, iterations - 1) == (121, 120)
    assert summary["tokens"] == measured["tokens"]
    assert summary["throughput"]["steps_per_s"] == pytest.approx(rate, rel=0.1)
    assert summary["throughput"]["tokens_per_s"] == pytest.approx(rate * 512, rel=0.1)
    assert summary["loss"]["final"] == measured["losses"]["120"]
    evals = by_step(measured["evals"])
    val = summary["eval"]["val/loss"]
    best_step = min(evals, key=lambda step: evals[step]["val/loss"])
    assert val == {"last": evals[120]["val/loss"], "best": evals[best_step]["val/loss"],
                   "best_step": best_step, "mode": "min"}
    assert [evals[step]["best"] for step in sorted(evals)] == [
        evals[step]["val/loss"] == min(evals[s]["val/loss"] for s in evals if s <= step)
        for step in sorted(evals)]

    half = measured["status_at_half"]
    assert (half["step"], half["steps"], half["total_steps"]) == (60, 61, 120)
    assert half["latest"]["loss"] == measured["losses"]["60"]
    assert half["eta_s"] == pytest.approx(measured["eta_at_half"], rel=0.1)
    end = measured["status"]
    assert (end["step"], end["steps"]) == (120, 121)
    assert end["rates"]["steps_per_second"] == pytest.approx(rate, rel=0.1)

    shown = cli("logs", "summary", str(run_dir))
    assert (shown["steps"], shown["last_step"], shown["tokens"]) == (121, 120, measured["tokens"])
    assert shown["throughput"]["steps_per_s"] == pytest.approx(rate, rel=0.1)
    assert shown["loss"]["final"] == measured["losses"]["120"]
    assert shown["eval"]["val/loss"] == val


def test_an_epoch_loop_logging_every_n_batches_with_epoch_metrics(tmp_path: Path) -> None:
    measured, run_dir = run_loop("mnist.py", tmp_path)
    rate = measured["steps"] / measured["seconds"]
    lines = read_lines(run_dir)
    steps = lines.of("step")
    assert {s["step"]: s["metrics"]["loss"] for s in steps} == by_step(measured["losses"])
    assert [e["epoch"] for e in lines.of("epoch")] == [1, 2, 3]  # the loop's own numbers
    assert [e["steps"] for e in lines.of("epoch")] == [41, 41, 41]
    values = lines.of("values")  # epoch-level figures: no step
    assert [(v["epoch"], v["metrics"]) for v in values] == [
        (int(epoch), {"train_accuracy": accuracy})
        for epoch, accuracy in measured["train_accuracy"].items()]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["steps"], summary["samples"]) == (measured["steps"], measured["samples"])
    assert (summary["epochs"], summary["epoch"]) == (3, 3)
    assert summary["throughput"]["steps_per_s"] == pytest.approx(rate, rel=0.1)
    assert summary["throughput"]["samples_per_s"] == pytest.approx(rate * 32, rel=0.1)
    tests = {int(epoch): value for epoch, value in measured["tests"].items()}
    assert summary["eval"]["accuracy"]["mode"] == "max"
    assert summary["eval"]["accuracy"]["best"] == max(t["accuracy"] for t in tests.values())
    assert summary["eval"]["test_loss"]["mode"] == "min"
    assert summary["eval"]["test_loss"]["best"] == min(t["test_loss"] for t in tests.values())

    shown = cli("logs", "summary", str(run_dir))
    assert (shown["steps"], shown["samples"], shown["epochs"]) == (123, 3936, 3)
    assert shown["throughput"]["samples_per_s"] == pytest.approx(rate * 32, rel=0.1)


def test_gradient_accumulation_over_run_track_with_the_loops_step_numbers(
        tmp_path: Path) -> None:
    measured, run_dir = run_loop("accelerate_style.py", tmp_path)
    completed = measured["completed_steps"]
    rate = completed / measured["seconds"]
    lines = read_lines(run_dir)
    steps = lines.of("step")
    assert [s["step"] for s in steps] == list(range(1, completed + 1))  # no phantom steps
    assert {s["step"]: s["metrics"]["train_loss"] for s in steps} == by_step(measured["losses"])
    assert all(s["data_wait_s"] is not None and s["step_s"] > 0 for s in steps)
    assert [v["metrics"].keys() for v in lines.of("values")] == [{"epoch_loss"}] * 2

    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["steps"], summary["last_step"]) == (completed, completed) == (45, 45)
    assert summary["samples"] == completed * 64
    assert summary["throughput"]["steps_per_s"] == pytest.approx(rate, rel=0.1)
    assert summary["step_time"]["mean_s"] == pytest.approx(1 / rate, rel=0.1)
    assert 0 < summary["step_time"]["data_wait_fraction"] < 1

    shown = cli("logs", "summary", str(run_dir))
    assert (shown["steps"], shown["samples"]) == (45, 45 * 64)
    assert shown["throughput"]["steps_per_s"] == pytest.approx(rate, rel=0.1)
