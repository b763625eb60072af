"""A run killed (-9) and resumed (issue 29, findings 4 and 5): ``traintel logs summary`` and
summary.json say the same of its segments (the killed one ``crashed`` in both) and its duration
(the segments added up, the gap between them not counted)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

ENV = {**os.environ, "OTEL_SDK_DISABLED": "true"}


def killed_after(tmp_path, last_step: int) -> None:
    script = textwrap.dedent(f"""
        import os, signal, time, traintel
        run = traintel.init(project="t", dir={str(tmp_path)!r}, run_id="r", progress="off",
                            sample_interval=0, console_logs=False, flush_interval=0.05)
        for step in range(1, {last_step} + 1):
            run.log(step=step, loss=1.0 / step, samples=4)
            time.sleep(0.01)
        run.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert (
        subprocess.run([sys.executable, "-c", script], env=ENV, timeout=60).returncode
        == -signal.SIGKILL
    )


def logs_summary(run_dir) -> dict:
    return json.loads(
        subprocess.run(
            [
                sys.executable,
                "-m",
                "traintel.cli",
                "logs",
                "summary",
                str(run_dir),
                "--format",
                "json",
            ],
            capture_output=True,
            text=True,
            check=True,
            env=ENV,
        ).stdout
    )


def test_logs_summary_and_summary_json_agree_after_a_kill_and_a_resume(tmp_path, quiet_run):
    killed_after(tmp_path, 39)
    time.sleep(1.0)  # the gap between the segments: no training in it
    with quiet_run(run_id="r", resume=True) as run:
        for step in range(40, 61):
            run.log(step=step, loss=1.0 / step, samples=4)
    written = json.loads((run.dir / "summary.json").read_text())
    shown = logs_summary(run.dir)
    assert [(s["status"], s["steps"]) for s in written["segments"]] == [
        ("crashed", 39),
        ("finished", 21),
    ]
    assert [(s["status"], s["steps"]) for s in shown["segments"]] == [
        ("crashed", 39),
        ("finished", 21),
    ]
    assert shown["duration_s"] == pytest.approx(written["duration_s"], abs=0.05)
    assert written["duration_s"] < written["end_ts"] - written["start_ts"] - 0.9  # no gap
    text = subprocess.run(
        [sys.executable, "-m", "traintel.cli", "logs", "summary", str(run.dir)],
        capture_output=True,
        text=True,
        check=True,
        env=ENV,
    ).stdout
    assert "running" not in text and "crashed" in text


@pytest.mark.parametrize("declared", [False, True])
def test_resuming_from_an_older_checkpoint_counts_each_step_once(tmp_path, quiet_run, declared):
    """Killed after step 49, resumed from the step-40 checkpoint: steps 41..49 are done again.
    Each step counts once (100, not 109), losses too; the first record's lines stay, marked
    by a ``superseded`` event; logs summary says what summary.json says."""
    killed_after(tmp_path, 49)
    options = {"initial_step": 40} if declared else {}
    with quiet_run(run_id="r", resume=True, total_steps=100, **options) as run:
        for step in range(41, 101):
            run.log(step=step, loss=1.0 / step, samples=4)
    written = json.loads((run.dir / "summary.json").read_text())
    assert written["steps"] == 100 and written["samples"] == 400
    assert written["loss"]["count"] == 100
    assert written["loss"]["mean"] == pytest.approx(sum(1.0 / s for s in range(1, 101)) / 100)
    from conftest import read_lines

    lines = read_lines(run.dir)
    assert len(lines.of("step")) == 109  # nothing rewritten: the record keeps every line
    (event,) = [e for e in lines.of("event") if e["event"] == "superseded"]
    assert (event["fields"]["after_step"], event["fields"]["through_step"]) == (40, 49)
    shown = logs_summary(run.dir)
    assert (shown["steps"], shown["samples"], shown["loss"]) == (100, 400, written["loss"])
    assert run.state.samples >= 400  # live counters never go back
