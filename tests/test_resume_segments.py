"""A run killed (-9) and resumed (issue 29, findings 4 and 5): ``traintel logs summary`` and
summary.json say the same of its segments (the killed one ``crashed`` in both) and its duration
(the segments added up, the gap between them not counted)."""

from __future__ import annotations

import json
import signal
import statistics
import textwrap
import time

import pytest

from conftest import SCRIPT_ENV, logs_summary, logs_summary_json, read_lines, run_script


def killed_after(tmp_path, last_step: int) -> None:
    script = textwrap.dedent(f"""
        import os, signal, time, traintel
        run = traintel.init(project="t", dir={str(tmp_path)!r}, run_id="r",
                            console_logs=False, flush_interval=0.05)
        for step in range(1, {last_step} + 1):
            run.log(step=step, loss=1.0 / step, samples=4)
            time.sleep(0.01)
        run.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert run_script(script, env=SCRIPT_ENV, timeout=60).returncode == -signal.SIGKILL


def test_logs_summary_and_summary_json_agree_after_a_kill_and_a_resume(tmp_path, quiet_run):
    killed_after(tmp_path, 39)
    time.sleep(1.0)  # the gap between the segments: no training in it
    with quiet_run(run_id="r", resume=True) as run:
        for step in range(40, 61):
            run.log(step=step, loss=1.0 / step, samples=4)
    written = json.loads((run.dir / "summary.json").read_text())
    shown = logs_summary_json(run.dir, env=SCRIPT_ENV)
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
    # no epoch ended (the loop counts none): both say null, not 0 from the step lines' epoch
    assert (shown["epoch"], shown["epochs"]) == (written["epoch"], written["epochs"]) == (None, 0)
    text = logs_summary(run.dir, env=SCRIPT_ENV)
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
    lines = read_lines(run.dir)
    assert len(lines.of("step")) == 109  # nothing rewritten: the record keeps every line
    (event,) = [e for e in lines.of("event") if e["event"] == "superseded"]
    assert (event["fields"]["after_step"], event["fields"]["through_step"]) == (40, 49)
    shown = logs_summary_json(run.dir, env=SCRIPT_ENV)
    assert (shown["steps"], shown["samples"], shown["loss"]) == (100, 400, written["loss"])
    assert run.state.samples >= 400  # live counters never go back


def killed_with(tmp_path, body: str) -> None:
    """A first segment that runs ``body`` (``run`` in scope) and is killed (-9) after it."""
    script = (
        textwrap.dedent("""
        import os, signal, traintel
        run = traintel.init(project="t", dir={dir!r}, run_id="r",
                            console_logs=False, flush_interval=0.05)
    """).format(dir=str(tmp_path))
        + textwrap.dedent(body)
        + textwrap.dedent("""
        run.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    )
    assert run_script(script, env=SCRIPT_ENV, timeout=60).returncode == -signal.SIGKILL


#: the killed segment: steps 1..49, an eval every 3 steps; its superseded steps (41..49) hold
#: the run's extremes (a spike, the lowest loss, a NaN), the best eval and a defined metric's
#: best, so that any of them left counted shows in the summary
FIRST = """
for step in range(1, 50):
    loss = {45: 100.0, 46: float("nan"), 47: 0.001}.get(step, 1.0 / step)
    run.log(step=step, loss=loss, samples=4, acc=0.99 if step == 48 else step / 100)
    if step % 3 == 0:
        run.log_eval(val_acc=0.99 if step == 45 else step / 100, goals={"val_acc": "max"})
"""


@pytest.mark.parametrize("declared", [False, True])
def test_a_superseded_steps_extremes_final_and_evals_are_taken_back(tmp_path, quiet_run, declared):
    """Resumed from the step-40 checkpoint and stopped at step 44, before the killed segment's
    steps 45..49 come again: the summary says what steps 1..44, each once, say. The loss's
    min, max, best, final and non-finite count, the evaluations' last and best (and whether a
    resumed eval is a best) and a defined metric's best leave out the superseded steps, in
    summary.json and in ``traintel logs summary``; both say how many steps were superseded,
    and logs summary shows ``run.summary``."""
    killed_with(tmp_path, FIRST)
    options = {"initial_step": 40} if declared else {}
    with quiet_run(run_id="r", resume=True, **options) as run:
        run.define_metric("acc", summary="max")
        run.summary["note"] = "resumed"
        run.summary["best_val_acc"] = 0.5
        for step in range(41, 45):
            run.log(step=step, loss=2.0 / step, samples=4, acc=step / 100)
            if step % 3 == 0:
                run.log_eval(val_acc=step / 100)
    written = json.loads((run.dir / "summary.json").read_text())
    counted = [1.0 / s for s in range(1, 41)] + [2.0 / s for s in range(41, 45)]
    assert (written["steps"], written["superseded"], written["samples"]) == (44, 9, 44 * 4)
    assert written["loss"] == {
        "key": "loss",
        "final": 2.0 / 44,
        "last_finite": 2.0 / 44,
        "best": min(counted),
        "min": min(counted),
        "max": max(counted),
        "mean": pytest.approx(sum(counted) / 44),
        "std": pytest.approx(statistics.pstdev(counted)),
        "count": 44,
        "nonfinite": 0,
        "first_nonfinite_step": None,
    }
    assert written["eval"]["val_acc"] == {
        "last": 0.42,
        "best": 0.42,  # the superseded 0.99 at step 45 is no best
        "best_step": 42,
        "mode": "max",
    }
    *_, resumed_eval = [e for e in read_lines(run.dir).of("eval") if e["step"] == 42]
    assert resumed_eval["is_best"] == {"val_acc": True}  # 0.42 beats what counts: 0.39
    assert written["summary"] == {
        "note": "resumed",
        "best_val_acc": 0.5,
        "acc": {"max": 0.44},  # the superseded 0.99 at step 48 does not count
    }
    shown = logs_summary_json(run.dir, env=SCRIPT_ENV)
    assert (shown["steps"], shown["superseded"]) == (44, 9)
    assert shown["loss"] == written["loss"]
    assert shown["eval"] == written["eval"]
    assert shown["summary"] == written["summary"]
    text = logs_summary(run.dir, env=SCRIPT_ENV)
    assert "9 superseded" in text
    assert "summary acc" in text and "max 0.44" in text and "resumed" in text


def test_a_killed_run_not_yet_resumed_shows_its_segment_crashed(tmp_path):
    """The last segment killed and not resumed (yet): logs summary's JSON says its segment
    ``crashed`` (it said null), lasting from its start to its last line, as summary.json will
    say it once the run resumes."""
    killed_after(tmp_path, 12)
    run_dir = tmp_path / "r"
    shown = logs_summary_json(run_dir, env=SCRIPT_ENV)
    (segment,) = shown["segments"]
    lines = read_lines(run_dir)
    last_ts = max(line["ts"] for line in lines if "ts" in line)
    assert (shown["status"], segment["status"], segment["steps"]) == ("crashed", "crashed", 12)
    assert segment["duration_s"] == pytest.approx(segment["end_ts"] - segment["start_ts"])
    assert segment["end_ts"] == lines.of("step")[-1]["ts"] <= last_ts
    assert shown["duration_s"] == segment["duration_s"]
