"""The Run API: lifecycle, progress, per-step metrics, eval, instruments, bad input."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import traintel


def test_with_block_finishes_and_records_lifecycle(quiet_run, recorded):
    with quiet_run(name="lifecycle", total_epochs=2) as run:
        assert run.state.status == "running"
        for _ in run.epochs():
            for _ in run.track(range(5)):
                run.log(loss=0.5)
    lines = recorded(run.dir)
    assert lines[0]["type"] == "run_start" and lines[0]["name"] == "lifecycle"
    assert lines[-1]["type"] == "run_end" and lines[-1]["status"] == "finished"
    assert len(lines.of("step")) == 10
    assert [e["epoch"] for e in lines.of("epoch")] == [0, 1]
    summary = json.loads((run.dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 10
    assert traintel.current_run() is None


def test_exception_in_with_block_marks_failed_records_and_reraises(quiet_run, recorded):
    with pytest.raises(ZeroDivisionError):
        with quiet_run() as run:
            run.log(loss=1.0)
            1 / 0
    lines = recorded(run.dir)
    errors = lines.of("error")
    assert len(errors) == 1 and errors[0]["exc_type"] == "ZeroDivisionError"
    assert "ZeroDivisionError" in errors[0]["traceback"]
    assert lines[-1]["status"] == "failed"
    assert (run.dir / "crash-report.json").exists()


def test_keyboard_interrupt_marks_interrupted(quiet_run, recorded):
    with pytest.raises(KeyboardInterrupt):
        with quiet_run() as run:
            raise KeyboardInterrupt
    assert run.state.status == "interrupted"
    assert recorded(run.dir).of("error")[0]["error_type"] == "interrupted"


def test_sigterm_without_a_handler_finishes_preempted_and_exits_143(tmp_path, recorded):
    script = textwrap.dedent(f"""
        import time, traintel
        run = traintel.init(project="t", dir={str(tmp_path)!r}, progress="off", otlp=False,
                            sample_interval=0, console_logs=False)
        for i in range(100000):
            run.log(loss=1.0 / (i + 1))
            if i == 50:
                print("ready", run.dir, flush=True)
            time.sleep(0.001)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    first = proc.stdout.readline().split()
    assert first[0] == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    run_dir = first[1]
    summary = json.loads(open(os.path.join(run_dir, "summary.json")).read())
    assert summary["status"] == "preempted" and summary["steps"] > 50
    lines = recorded(__import__("pathlib").Path(run_dir))
    assert len(lines.of("step")) == summary["steps"]
    (signal_event,) = lines.of("event", "signal")
    assert signal_event["fields"] == {"signal": "SIGTERM", "decided_by": "traintel"}
    assert lines.of("error") == []  # a preemption is no error
    assert lines[-1]["type"] == "run_end" and lines[-1]["status"] == "preempted"


def test_atexit_finishes_a_run_left_open(tmp_path):
    script = (
        f"import traintel; r = traintel.init(project='t', dir={str(tmp_path)!r}, "
        "progress='off', otlp=False, sample_interval=0, console_logs=False); "
        "r.log(loss=1.0); print(r.dir)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()
    assert json.loads(open(os.path.join(out, "summary.json")).read())["status"] == "finished"


def test_log_accepts_python_numpy_and_torch_scalars(quiet_run, recorded):
    with quiet_run(strict=True) as run:
        run.log(
            loss=torch.tensor(0.25),
            lr=np.float32(0.5),
            grad_norm=np.float64(2.0),
            samples=np.int64(8),
            flag=True,
        )
        with pytest.raises(ValueError, match="'loss' is a tensor/array of shape"):
            run.log(loss=torch.ones(3))
        with pytest.raises(TypeError, match="'note' must be a number"):
            run.log(note="hello")
    step = recorded(run.dir).of("step")[0]
    assert step["metrics"] == {"loss": 0.25, "lr": 0.5, "grad_norm": 2.0, "samples": 8, "flag": 1}


def test_nonfinite_loss_is_counted_flagged_and_kept_out_of_averages(quiet_run, recorded):
    with quiet_run() as run:
        for value in (1.0, float("nan"), 3.0, float("inf")):
            run.log(loss=value)
        assert run.state.latest["loss"] == float("inf")  # the latest value, as logged
    assert run.state.nonfinite_losses == 2
    lines = recorded(run.dir)
    assert [s["metrics"]["loss"] for s in lines.of("step")] == [1.0, "nan", 3.0, "inf"]
    first, rest = [e["fields"] for e in lines.of("event")]  # the first, then a count
    assert first == {"metric": "loss", "value": "nan", "first": True}
    assert rest == {"metric": "loss", "count": 1, "total": 2, "first_step": 2}
    loss = run.summary["loss"]
    assert loss["mean"] == 2.0 and loss["nonfinite"] == 2 and loss["first_nonfinite_step"] == 2
    assert loss["final"] == "inf" and loss["last_finite"] == 3.0


def test_nonfinite_counts_are_refused_not_counted(quiet_run, recorded):
    with quiet_run() as run:
        run.log(loss=1.0, samples=32, tokens=100)
        run.log(loss=1.0, samples=float("nan"), tokens=float("inf"))
        run.log(loss=1.0, samples=32, tokens=100)
    assert run.state.samples == run.summary["samples"] == 64
    assert run.state.tokens == run.summary["tokens"] == 200
    steps = recorded(run.dir).of("step")
    assert steps[1]["metrics"] == {"loss": 1.0}  # no count: left out of the step, and said
    assert run.summary["refused"] == {"count": 2}


def test_track_splits_data_wait_from_compute(quiet_run, recorded):
    def slow_loader():
        for i in range(3):
            time.sleep(0.05)
            yield i

    with quiet_run() as run:
        for _ in run.track(slow_loader()):
            time.sleep(0.01)
            run.log(loss=1.0)
    steps = recorded(run.dir).of("step")
    assert len(steps) == 3
    for step in steps:
        assert step["data_wait_s"] > step["step_s"] - step["data_wait_s"]
        assert step["step_s"] >= step["data_wait_s"] > 0
    assert run.summary["step_time"]["data_wait_fraction"] > 0.5


def test_leaving_track_early_keeps_the_logged_step(quiet_run):
    with quiet_run() as run:
        for i, _ in enumerate(run.track(range(10))):
            run.log(loss=float(i))
            if i == 3:
                break
    assert run.summary["steps"] == 4


def test_samples_and_tokens_give_throughput(quiet_run):
    with quiet_run() as run:
        for _ in run.track(range(20)):
            time.sleep(0.002)
            run.log(loss=1.0, samples=32, tokens=320)
    assert run.summary["samples"] == 640 and run.summary["tokens"] == 6400
    tp = run.summary["throughput"]
    assert tp["samples_per_s"] == pytest.approx(tp["steps_per_s"] * 32)
    assert tp["tokens_per_s"] == pytest.approx(tp["steps_per_s"] * 320)


def test_eval_best_tracking_min_for_losses_max_otherwise(quiet_run, recorded):
    with quiet_run() as run:
        assert run.log_eval(val_loss=1.0, accuracy=0.5) == {"val_loss": True, "accuracy": True}
        assert run.log_eval(val_loss=0.8, accuracy=0.4) == {"val_loss": True, "accuracy": False}
        assert run.log_eval(val_loss=0.9, bleu=10.0, goals={"bleu": "max"})["val_loss"] is False
    assert run.state.eval_best == {"val_loss": 0.8, "accuracy": 0.5, "bleu": 10.0}
    evals = recorded(run.dir).of("eval")
    assert evals[1]["is_best"] == {"val_loss": True, "accuracy": False}
    assert run.summary["eval"]["val_loss"] == {
        "last": 0.9,
        "best": 0.8,
        "best_step": 0,
        "mode": "min",
    }


def test_custom_instruments_summarised_with_percentiles(quiet_run, recorded):
    with quiet_run() as run:
        hist = run.histogram("seq_len")
        for value in range(1, 101):
            hist.observe(float(value))
        with run.timer("io"):
            time.sleep(0.01)

        @run.timer("decorated")
        def work():
            return 42

        assert work() == 42
        run.counter("skipped").inc(3)
        run.gauge("queue").set(7)
        assert run.histogram("seq_len") is hist
    inst = run.summary["instruments"]
    assert inst["seq_len"]["count"] == 100
    assert inst["seq_len"]["p50"] == pytest.approx(50.5)
    assert inst["seq_len"]["p95"] == pytest.approx(95.05)
    assert inst["seq_len"]["p99"] == pytest.approx(99.01)
    assert inst["io"]["kind"] == "timer" and inst["io"]["min"] >= 0.01
    assert inst["decorated"]["count"] == 1
    assert inst["skipped"] == {"kind": "counter", "total": 3.0}
    assert inst["queue"] == {"kind": "gauge", "last": 7.0}
    lines = recorded(run.dir).of("instrument")
    assert {line["name"] for line in lines} == {"seq_len", "io", "decorated", "skipped", "queue"}


def test_instrument_input_is_validated(quiet_run):
    with quiet_run(strict=True) as run:
        with pytest.raises(ValueError, match="counters only go up"):
            run.counter("c").inc(-1)
        with pytest.raises(TypeError, match="must be a number"):
            run.gauge("g").set("x")
        with pytest.raises(ValueError, match="must be finite"):
            run.histogram("h").observe(float("nan"))
        with pytest.raises(ValueError, match="name 'bad name' is refused: ' ' is not allowed"):
            run.counter("bad name")


def test_progress_milestones_and_plain_lines_when_not_a_tty(monkeypatch, quiet_run, recorded):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stream)
    with quiet_run(total_steps=20, progress="auto", progress_interval=0.0) as run:
        for _ in run.track(range(20)):
            run.log(loss=1.0)
    milestones = recorded(run.dir).of("milestone")
    assert [m["percent"] for m in milestones] == [25, 50, 75, 90, 100]
    assert [m["step"] for m in milestones] == [5, 10, 15, 18, 20]
    text = stream.getvalue()
    assert "\x1b[" not in text  # not a TTY: no escape codes
    assert "[traintel] 25% reached" in text and "step 20/20 (100.0%)" in text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_go_through_the_progress_bars_console(monkeypatch, quiet_run):
    """Lines printed through the bar's own rich Console scroll above the bar; a second Console
    on the same terminal wrote them into the bar's line."""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    with quiet_run(progress="bar", console_logs=True, total_steps=3) as run:
        (pipeline,) = logging.getLogger("traintel").handlers  # the run's event pipeline
        handler = pipeline.sinks[-1].handler  # its console sink
        assert handler.console is run.progress.console
        for _ in run.track(range(3)):
            run.log(loss=1.0)
        run.logger("data").info("shard 7 loaded")
    assert "shard 7 loaded" in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.getvalue())


def test_total_steps_learned_from_loader_length(quiet_run):
    with quiet_run(total_epochs=3) as run:
        for _ in run.epochs():
            for _ in run.track(list(range(4))):
                run.log(loss=1.0)
            assert run.state.total_steps == 12
    assert run.state.progress() == 1.0


def test_metric_name_cardinality_is_bounded(quiet_run):
    with quiet_run(max_metric_names=5, strict=True) as run:
        for i in range(5):
            run.log(**{f"m{i}": 1.0})
        with pytest.raises(
            ValueError,
            match="'m5' would be name number 6 of this run; the limit "
            r"is 5 names in all \(metrics 5\)",
        ):
            run.log(m5=1.0)
        run.log(m4=2.0)  # a name already admitted costs nothing
        # one budget for every API that takes a name
        for call in (
            lambda: run.event("e"),
            lambda: run.log_eval(acc=1.0),
            lambda: run.span("s"),
            lambda: run.counter("c"),
            lambda: run.logger("l"),
        ):
            with pytest.raises(ValueError, match="would be name number 6"):
                call()


def test_log_needs_a_metric(quiet_run):
    with quiet_run(strict=True) as run:
        with pytest.raises(ValueError, match="needs at least one metric"):
            run.log()


def test_explicit_steps_outside_track(quiet_run, recorded):
    with quiet_run(strict=True) as run:
        run.log(step=10, loss=1.0)
        run.log(loss=2.0)
        with pytest.raises(ValueError, match="step must be a non-negative integer"):
            run.log(step=-1, loss=1.0)
    assert [s["step"] for s in recorded(run.dir).of("step")] == [10, 11]


def test_component_loggers_reach_the_record_with_trace_ids(quiet_run, recorded):
    with quiet_run(otlp=None) as run:
        run.logger("data").warning("shard %d missing", 3, extra={"shard": 3})
        with run.span("load"):
            run.logger("model").info("inside")
    logs = recorded(run.dir).of("log")
    data = next(line for line in logs if line["logger"] == "traintel.data")
    assert data["level"] == "warning" and data["message"] == "shard 3 missing"
    assert data["fields"] == {"shard": 3}
    inside = next(line for line in logs if line["logger"] == "traintel.model")
    assert inside["trace_id"] and inside["span_id"]


def test_events_carry_their_name_and_fields(quiet_run, recorded):
    with quiet_run(strict=True) as run:
        run.event("early_stopping", patience=5, metric_name="val_loss")
        with pytest.raises(ValueError, match="level must be"):
            run.event("x", level="loud")
    event = recorded(run.dir).of("event")[0]
    assert event["event"] == "early_stopping" and event["fields"]["patience"] == 5
    assert run.state.events["early_stopping"] == 1


def test_finish_is_idempotent_and_validates_status(quiet_run):
    run = quiet_run()
    with pytest.raises(
        ValueError,
        match="status must be one of None, 'failed', 'interrupted', "
        "'preempted', 'stopped', 'pruned', 'finished'",
    ):
        run.finish("done")
    run.finish()
    run.finish()
    assert run.state.status == "finished"


def test_two_runs_in_sequence_leave_no_threads_behind(quiet_run):
    import threading

    if traintel.current_run() is not None:  # one an earlier test left open
        traintel.current_run().finish()
    before = threading.active_count()
    for _ in range(2):
        with quiet_run(sample_interval=0.05) as run:
            run.log(loss=1.0)
    time.sleep(0.1)
    assert threading.active_count() == before
    assert math.isfinite(run.summary["duration_s"])
