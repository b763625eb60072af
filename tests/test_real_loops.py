"""A training loop that is not a public script (``tests/loops/``; the public scripts are the
corpus, ``tests/corpus/`` and test_corpus.py): gradient accumulation over ``run.track`` with the
loop's own step numbers, run as a process of its own: the steps, rates and losses in the record,
summary.json and the command line equal what the loop measured itself (rates within 10 %).
``tests/loops/accelerate_style.py`` says why it is not in the corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import read_lines, traintel_cli

LOOPS = Path(__file__).parent / "loops"


def run_loop(name: str, tmp_path: Path) -> tuple[dict[str, Any], Path]:
    """Run ``tests/loops/<name>``; what it measured and its run directory."""
    done = subprocess.run(
        [sys.executable, str(LOOPS / name), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OTEL_SDK_DISABLED": "true"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("MEASURED ")]
    measured = json.loads(line.removeprefix("MEASURED "))
    return measured, Path(measured["run_dir"])


def cli(*args: str) -> Any:
    done = traintel_cli(*args, "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def by_step(values: dict[str, Any]) -> dict[int, Any]:
    return {int(step): value for step, value in values.items()}


def test_gradient_accumulation_over_run_track_with_the_loops_step_numbers(tmp_path: Path) -> None:
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
