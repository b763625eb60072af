"""Misuse, as user code gets it wrong: each behaves, with a clear error that names the key, the
range and the fix, or with a sensible record."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch

import traintel
from reliability_log import record


@pytest.mark.parametrize(
    "options, message",
    [
        (
            {"flush_interval": 0},
            "flush_interval must be a number of seconds from 0.01 to 3600 (0 "
            "would keep the record writer spinning), got 0",
        ),
        (
            {"shutdown_timeout": math.inf},
            "shutdown_timeout must be a number of seconds from 0 to 600",
        ),
        ({"max_record_bytes": 0}, "max_record_bytes must be an int of at least 1024"),
        (
            {"step_span_every": "10"},
            "step_span_every must be an int of at least 0 (0 turns step "
            "spans off), got str '10' (pass step_span_every=10)",
        ),
        ({"sample_interval": -1}, "sample_interval must be a number of seconds from 0.01"),
        ({"max_metric_names": 0}, "max_metric_names must be an int from 1 to 1000000"),
        ({"log_level": "loud"}, "log_level must be one of 'DEBUG', 'INFO'"),
        ({"http_port": 70000}, "http_port must be an int from 0 to 65535"),
        ({"console_logs": "no"}, "console_logs must be True or False"),
        ({"project": "a\nb"}, "project 'a\\nb' contains control characters"),
        ({"name": "n" * 300}, "name is 300 characters; keep it to 100"),
        ({"run_id": "../../etc"}, "run_id '../../etc' is not a valid run id"),
        ({"run_id": "/abs/path"}, "run_id '/abs/path' is not a valid run id"),
        ({"run_id": "a/b"}, "it names the record's directory, so it cannot be a path"),
        (
            {"config": {"a": 1}, "total_steps": -5},
            "total_steps must be an int of at least 1, got -5",
        ),
    ],
)
def test_settings_are_refused_with_the_range_and_the_fix(tmp_path, options, message, quiet):
    with pytest.raises((TypeError, ValueError)) as caught:
        traintel.init(**{"project": "p", "dir": str(tmp_path), **quiet, **options})
    assert message in str(caught.value)
    assert not list(tmp_path.iterdir())  # nothing was written for a refused run


def test_a_launcher_run_id_that_is_a_path_is_refused(tmp_path, monkeypatch, quiet, caplog):
    """Refused as a directory name, and (settings from the environment never stop a run) the
    process records under a new id of its own, with a warning naming the variables."""
    monkeypatch.setenv("TRAINTEL_RUN_ID", "../../outside")
    with traintel.init(project="p", dir=str(tmp_path / "runs"), **quiet) as run:
        run.log(loss=1.0)
    assert not (tmp_path / "outside").exists()
    assert run.dir.parent == tmp_path / "runs" and run.id != "../../outside"
    assert run.summary["steps"] == 1
    assert any(
        "the launcher's run id" in r.getMessage()
        and "'../../outside' is not a valid run id" in r.getMessage()
        and run.id in r.getMessage()
        for r in caplog.records
    )


def test_a_circular_config_is_recorded_with_the_cycle_named(tmp_path, quiet_run):
    config: dict = {"lr": 0.1, "nested": {"deep": [1, 2]}}
    config["self"] = config
    config["nested"]["up"] = config["nested"]
    deep: dict = {}
    cursor = deep
    for _ in range(100):
        cursor["d"] = cursor = {}
    config["deep"] = deep
    with quiet_run(config=config) as run:
        pass
    assert run.config["self"] == "<circular reference>"
    assert run.config["nested"]["up"] == "<circular reference>"
    assert run.config["lr"] == 0.1
    assert "nested deeper than 32 levels" in str(run.config["deep"])


def test_step_and_epoch_arguments_are_checked(tmp_path, quiet_run):
    with quiet_run(strict=True) as run:
        with pytest.raises(
            TypeError,
            match=r"run.begin_epoch: epoch must be a non-negative "
            r"integer \(int, NumPy integer or 0-d integer "
            r"tensor\), got NoneType None",
        ):
            run.begin_epoch(None)  # type: ignore[arg-type]
        run.begin_epoch(np.int64(2))  # integer-like: accepted
        with pytest.raises(ValueError, match="run.log_eval: step must be a non-negative integer"):
            run.log_eval(step=-7, acc=0.5)
        with pytest.raises(
            TypeError,
            match=r"run.log_eval: goals must be a dict like "
            r"\{'bleu': 'max'\}, got list \['acc'\]",
        ):
            run.log_eval(goals=["acc"], acc=0.5)  # type: ignore[arg-type]
        with pytest.raises(
            ValueError, match="the goal of 'acc' must be one of 'min', 'max'; got 'up'"
        ):
            run.log_eval(goals={"acc": "up"}, acc=0.5)  # type: ignore[dict-item]
        with pytest.raises(ValueError, match="step_s must be a non-negative number"):
            run.log(loss=1.0, step_s=math.inf)
        with pytest.raises(TypeError, match="run.event: step must be a non-negative integer"):
            run.event("x", step="seven")
    assert run.summary["epochs"] == 0 or run.state.epoch == 2


def test_a_meta_device_tensor_is_refused_naming_the_key(tmp_path, recorded, quiet_run):
    with quiet_run(strict=True) as run:
        with pytest.raises(
            TypeError,
            match="run.log: 'loss' could not be read as a number "
            r"\((NotImplementedError|RuntimeError)",
        ):
            run.log(loss=torch.tensor(1.0, device="meta"))
        run.log(loss=torch.tensor(2.0))
    assert [s["metrics"]["loss"] for s in recorded(run.dir) if s["type"] == "step"] == [2.0]


def test_five_thousand_character_names_are_refused_briefly(tmp_path, quiet_run):
    with quiet_run(strict=True) as run:
        for call in (
            lambda n: run.log(**{n: 1.0}),
            lambda n: run.event(n),
            lambda n: run.span(n),
            lambda n: run.counter(n),
            lambda n: run.log_eval(**{n: 1.0}),
        ):
            with pytest.raises(ValueError) as caught:
                call("x" * 5000)
            assert "is refused: it is 5000 characters long" in str(caught.value)
            assert len(str(caught.value)) < 600


def test_instruments_take_numpy_and_torch_numbers_as_run_log_does(tmp_path, quiet_run):
    with quiet_run(strict=True) as run:
        run.counter("skipped").inc(np.float32(1))
        run.counter("skipped").inc(torch.tensor(2))
        run.gauge("queue").set(np.int64(7))
        run.histogram("seq_len").observe(torch.tensor(3.0))
        run.timer("fwd").observe(np.float64(0.25))
        with pytest.raises(ValueError, match="must be finite"):
            run.histogram("seq_len").observe(np.float32("nan"))
    assert run.summary["instruments"]["skipped"]["total"] == 3.0
    assert run.summary["instruments"]["queue"]["last"] == 7.0
    assert run.summary["instruments"]["seq_len"]["count"] == 1


def test_recording_after_finish_raises_a_clear_error(tmp_path, quiet_run):
    run = quiet_run()
    log = run.log  # a loop that kept the bound method
    run.log(loss=1.0)
    run.finish()
    for call in (
        lambda: run.log(loss=2.0),
        lambda: log(loss=2.0),
        lambda: run.log_eval(acc=1.0),
        lambda: run.event("late"),
    ):
        with pytest.raises(RuntimeError, match=f"run {run.id} has finished"):
            call()
    with pytest.raises(RuntimeError, match="has finished"):
        for _ in run.track(range(3)):
            pass
    assert len(run._writer.queue) == 0  # nothing queued for a writer that is gone
    record(
        "run.log after finish()",
        "a clear error, nothing queued forever",
        "RuntimeError naming the run for run.log (also a kept bound method), run.track, "
        "log_eval and event; queue empty",
    )


def test_an_exception_in_a_with_block_is_printed_redacted(tmp_path):
    """The excepthook stays after the with block ended the run, for this exception only."""
    import subprocess
    import sys

    code = f"""
import traintel
with traintel.init(project="p", dir={str(tmp_path)!r}, progress="off", otlp=False,
                   sample_interval=0, config={{"db_password": "hunter2-correct-horse"}}):
    raise RuntimeError("cannot connect with hunter2-correct-horse to https://u:pw-Zx81kq@h/x")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "RuntimeError: cannot connect with [REDACTED] to https://u:[REDACTED]@h/x" in proc.stderr
    assert "hunter2" not in proc.stderr and "pw-Zx81kq" not in proc.stderr


def test_threads_and_hooks_are_gone_after_finish(tmp_path, quiet_run):
    before = {t.name for t in threading.enumerate()}
    with quiet_run(http_port=0) as run:
        run.log(loss=1.0)
    after = {t.name for t in threading.enumerate()}
    assert after <= before, after - before
