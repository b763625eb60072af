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
    assert subprocess.run([sys.executable, "-c", script], env=ENV,
                          timeout=60).returncode == -signal.SIGKILL


def logs_summary(run_dir) -> dict:
    return json.loads(subprocess.run(
        [sys.executable, "-m", "traintel.cli", "logs", "summary", str(run_dir), "--format",
         "json"], capture_output=True, text=True, check=True, env=ENV).stdout)


def test_logs_summary_and_summary_json_agree_after_a_kill_and_a_resume(tmp_path, quiet_run):
    killed_after(tmp_path, 39)
    time.sleep(1.0)  # the gap between the segments: no training in it
    with quiet_run(run_id="r", resume=True) as run:
        for step in range(40, 61):
            run.log(step=step, loss=1.0 / step, samples=4)
    written = json.loads((run.dir / "summary.json").read_text())
    shown = logs_summary(run.dir)
    assert [(s["status"], s["steps"]) for s in written["segments"]] == [
        ("crashed", 39), ("finished", 21)]
    assert [(s["status"], s["steps"]) for s in shown["segments"]] == [
        ("crashed", 39), ("finished", 21)]
    assert shown["duration_s"] == pytest.approx(written["duration_s"], abs=0.05)
    assert written["duration_s"] < written["end_ts"] - written["start_ts"] - 0.9  # no gap
    text = subprocess.run([sys.executable, "-m", "traintel.cli", "logs", "summary",
                           str(run.dir)], capture_output=True, text=True, check=True,
                          env=ENV).stdout
    assert "running" not in text and "crashed" in text
