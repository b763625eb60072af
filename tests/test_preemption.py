"""Preemption and signals, with real processes: SIGTERM is recorded and left to the handler that
was there first (the user's, installed before or after init), run.stop_requested says so, the
default still finishes and exits 143, and a signal during finish() never costs summary.json or a
queued step."""

from __future__ import annotations

import json
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from conftest import SCRIPT_ENV, read_lines, start_script


def events_named(lines, name):
    return [e for e in lines.of("event") if e["event"] == name]


def _started(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline()
    assert line.startswith("ready"), line + proc.stderr.read()
    return line.split()[1]


@pytest.mark.parametrize("installed", ["before_init", "after_init"])
def test_the_loops_own_sigterm_handler_decides_and_the_signal_is_recorded(tmp_path, installed):
    """The SLURM / Kubernetes pattern: the loop's own SIGTERM handler sets a flag (installed
    first, before anything slow, or after init); the loop stops after the step it is in and exits
    0 (a requeued job resumes from its checkpoint: test_corpus's ImageNet test). The run ends
    preempted with every step, and run.stop_requested says so too."""
    handler = "signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))"
    script = textwrap.dedent(f"""
        import json, signal, sys, time
        stop = []
        {handler if installed == "before_init" else ""}
        import traintel
        run = traintel.init(project="t", dir={str(tmp_path)!r}, console_logs=False)
        {handler if installed == "after_init" else ""}
        for step in range(1, 100000):
            run.log(step=step, loss=1.0)
            time.sleep(0.002)
            if step == 1000:
                print("ready", run.dir, flush=True)
            if stop:
                print(json.dumps({{"step": step, "stop_requested": run.stop_requested}}))
                run.finish()
                sys.exit(0)
    """)
    proc = start_script(script, env=SCRIPT_ENV)
    run_dir = Path(_started(proc))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()  # the handler's exit, not the signal's
    stopped = json.loads(proc.stdout.read())
    assert stopped["stop_requested"] is True
    lines = read_lines(run_dir)
    (event,) = events_named(lines, "signal")
    assert event["fields"] == {"signal": "SIGTERM", "decided_by": "user_handler"}
    assert lines[-1]["type"] == "run_end" and lines[-1]["status"] == "preempted"
    assert lines.of("step")[-1]["step"] == stopped["step"]  # every step recorded
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "preempted" and summary["steps"] == stopped["step"]


def test_sigterm_flag_leaves_the_decision_to_the_loop(tmp_path):
    script = textwrap.dedent(f"""
        import time, traintel
        with traintel.init(project="t", dir={str(tmp_path)!r},
                           console_logs=False, sigterm="flag") as run:
            step = 0
            while not run.stop_requested:
                step += 1
                run.log(loss=1.0)
                time.sleep(0.002)
                if step == 200:
                    print("ready", run.dir, flush=True)
            print("stopping at", step, flush=True)
    """)
    proc = start_script(script, env=SCRIPT_ENV)
    run_dir = Path(_started(proc))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    stopped_at = int(proc.stdout.read().split()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "preempted" and summary["steps"] == stopped_at
    (event,) = events_named(read_lines(run_dir), "signal")
    assert event["fields"]["decided_by"] == "loop"


BACKLOG = textwrap.dedent("""
    import sys, traintel
    # the queue's bound (record/queue.py) keeps a loop within 8,192 items of the writer: lifted,
    # so that finish() has the whole backlog to write while the signals arrive
    import traintel.record.writer as writer, traintel.run.steps as steps
    writer.QUEUE_HIGH_WATER = writer.QUEUE_LIMIT = steps.QUEUE_HIGH_WATER = 10**9
    run = traintel.init(project="b", dir=sys.argv[1], run_id="b1",
                        console_logs=False, flush_interval=3600)
    for _ in range(int(sys.argv[2])):
        run.log(loss=1.0, lr=0.1, samples=8)
    print("finishing", flush=True)
    run.finish()
    print("finished", flush=True)
""")


@pytest.mark.parametrize(
    "signals", [["SIGTERM"], ["SIGINT"], ["SIGTERM", "SIGTERM"], ["SIGINT", "SIGTERM"]]
)
def test_signals_during_finish_keep_the_summary_and_every_queued_step(tmp_path, signals):
    """200,000 steps still queued when finish() starts (the writer sleeps an hour between
    flushes): the signals arrive while it writes them."""
    steps = 200_000
    proc = start_script(BACKLOG, env=SCRIPT_ENV, args=[str(tmp_path), str(steps)])
    assert proc.stdout.readline().strip() == "finishing", proc.stderr.read()
    time.sleep(0.05)
    for name in signals:
        proc.send_signal(getattr(signal, name))
        time.sleep(0.05)
    returncode = proc.wait(timeout=120)
    # the signals waited for the end of the run, then did what they do: SIGINT raises
    # KeyboardInterrupt, SIGTERM's default ends the process
    expected = -signal.SIGINT if signals[0] == "SIGINT" else -signal.SIGTERM
    assert returncode == expected, proc.stderr.read()
    run_dir = tmp_path / "b1"
    summary = json.loads((run_dir / "summary.json").read_text())
    written = len(read_lines(run_dir).of("step"))
    assert summary["steps"] == steps
    assert written + summary["record"]["dropped"] == steps
    assert written == steps  # nothing was lost: the final write completed


def test_a_second_sigterm_while_a_preempted_run_ends_keeps_everything(tmp_path):
    script = textwrap.dedent(f"""
        import traintel
        run = traintel.init(project="t", dir={str(tmp_path)!r}, run_id="r",
                            console_logs=False, flush_interval=3600)
        for step in range(10**9):
            run.log(loss=1.0)
            if step == 150_000:
                print("ready", run.dir, flush=True)
    """)
    proc = start_script(script, env=SCRIPT_ENV)
    run_dir = Path(_started(proc))
    proc.send_signal(signal.SIGTERM)  # finishes the run: a large backlog to write
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) in (143, -signal.SIGTERM), proc.stderr.read()
    summary = json.loads((run_dir / "summary.json").read_text())
    lines = read_lines(run_dir)
    assert summary["status"] == "preempted"
    assert len(lines.of("step")) == summary["steps"] > 150_000
    assert lines[-1]["type"] == "run_end"
