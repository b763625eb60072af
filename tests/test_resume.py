"""Continuing a run (traintel.run.resume), its lock, one live run per process, tags, notes and
group, and the configuration extended after init."""

from __future__ import annotations

import json
import signal
import subprocess
import textwrap

import pytest

import traintel
from conftest import SCRIPT_ENV, read_lines, run_script, start_script
from traintel.record.lock import RecordLocked
from traintel.record.reader import Records
from traintel.reports.analysis import summarize
from traintel.testing import capture


def segment(quiet_run, steps, first=1, **options):
    with quiet_run(run_id="r", **options) as run:
        for step in range(first, first + steps):
            run.log(step=step, loss=1.0 / step, samples=4)
        run.log_eval(val_loss=1.0 / (first + steps))
    return run


def test_resume_continues_one_record_with_a_summary_over_every_segment(quiet_run):
    segment(
        quiet_run,
        20,
        config={"lr": 0.1, "batch": 8},
        total_steps=40,
        tags=["base"],
        group="sweep-1",
        notes="first try",
    )
    run = segment(
        quiet_run,
        20,
        first=21,
        config={"lr": 0.05, "batch": 8},
        total_steps=40,
        resume=True,
        tags=["lr-halved"],
    )
    lines = read_lines(run.dir)
    assert [s["segment"] for s in lines.of("run_start")] == [1, 2]
    assert [s["step"] for s in lines.of("step")] == list(range(1, 41))
    # milestones fire once over the run: 25 and 50 % in the first segment, the rest after
    assert [m["percent"] for m in lines.of("milestone")] == [25, 50, 75, 90, 100]
    configs = lines.of("config")
    assert [(c["reason"], c["changed"]) for c in configs] == [("start", []), ("resume", ["lr"])]
    history = json.loads((run.dir / "config.json").read_text())["history"]
    assert [(h["reason"], h["changed"]) for h in history] == [("start", []), ("resume", ["lr"])]

    summary = run.summary
    assert (summary["steps"], summary["last_step"], summary["samples"]) == (40, 40, 160)
    assert [(s["segment"], s["status"], s["steps"]) for s in summary["segments"]] == [
        (1, "finished", 20),
        (2, "finished", 20),
    ]
    assert summary["loss"]["count"] == 40 and summary["loss"]["best"] == 1 / 40
    assert summary["eval"]["val_loss"]["best"] == 1 / 41  # best over both segments
    assert summary["tags"] == ["base", "lr-halved"]
    assert (summary["group"], summary["notes"]) == ("sweep-1", "first try")


def test_the_last_value_of_every_key_is_in_the_summary_over_every_segment(quiet_run):
    """Epoch-level figures (run.log_values, Lightning's *_epoch aggregates) and other keys are
    in summary.json as their last value, as a reader of the record folds them, across a
    resume; a NaN is said as "nan"."""
    with quiet_run(run_id="r") as run:
        run.log(step=1, loss=0.5, **{"train/acc": 0.25})
        run.log_values({"train/acc_epoch": 0.3, "grad_scale": float("nan")})
    with quiet_run(run_id="r", resume=True) as run:
        run.log(step=2, loss=0.4)
    expected = {"loss": 0.4, "train/acc": 0.25, "train/acc_epoch": 0.3, "grad_scale": "nan"}
    assert run.summary["metrics"] == expected
    assert summarize(Records(run.dir))["metrics"] == expected


def test_an_existing_id_without_resume_warns_and_continues(quiet_run, caplog):
    segment(quiet_run, 3)
    run = segment(quiet_run, 3, first=4)
    (warning,) = [
        r.getMessage() for r in caplog.records if "already has a record" in r.getMessage()
    ]
    assert "continuing it as segment 2" in warning and "resume=True" in warning
    assert [(s["segment"], s["resumed"]) for s in read_lines(run.dir).of("run_start")] == [
        (1, False),
        (2, False),
    ]  # the record says it was not asked for
    assert run.summary["steps"] == 6


def test_resume_never_and_must(quiet_run):
    with pytest.raises(FileNotFoundError, match="resume='must' but run 'r' has no record"):
        quiet_run(run_id="r", resume="must")
    segment(quiet_run, 2)
    with pytest.raises(FileExistsError, match="already has a record .* resume='never'"):
        quiet_run(run_id="r", resume="never")
    with pytest.raises(
        ValueError,
        match="resume must be one of True, False, 'allow', 'must', 'never', None; got 'yes'",
    ):
        quiet_run(run_id="r2", resume="yes")
    run = segment(quiet_run, 2, first=3, resume="must")
    assert run.summary["steps"] == 4
    # a refused start holds nothing: the record can be opened right away
    segment(quiet_run, 1, first=5, resume=True)


def test_a_killed_segment_is_crashed_and_the_next_one_goes_on(tmp_path, quiet_run):
    script = textwrap.dedent(f"""
        import os, signal, traintel
        run = traintel.init(project="t", dir={str(tmp_path)!r}, run_id="r",
                            console_logs=False, flush_interval=0.05)
        for step in range(1, 11):
            run.log(step=step, loss=1.0)
        run.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert run_script(script, env=SCRIPT_ENV, timeout=60).returncode == -signal.SIGKILL
    run = segment(quiet_run, 5, first=11, resume=True)
    assert [(s["status"], s["steps"]) for s in run.summary["segments"]] == [
        ("crashed", 10),
        ("finished", 5),
    ]
    assert run.summary["steps"] == 15


def test_two_live_processes_cannot_record_one_run(tmp_path, quiet_run):
    script = textwrap.dedent(f"""
        import sys, traintel
        run = traintel.init(project="t", dir={str(tmp_path)!r}, run_id="r", console_logs=False)
        print("ready", flush=True)
        sys.stdin.read()
        run.finish()
    """)
    holder = start_script(script, env=SCRIPT_ENV, stdin=subprocess.PIPE, stderr=None)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(
            RecordLocked,
            match=rf"run 'r' is being recorded by a live process "
            rf"\(pid {holder.pid} on ",
        ):
            quiet_run(run_id="r", resume=True)
    finally:
        holder.communicate("", timeout=60)
    # the lock went with the process: resuming works now
    run = segment(quiet_run, 2, resume=True)
    assert [s["segment"] for s in read_lines(run.dir).of("run_start")] == [1, 2]


def test_one_live_run_per_process_unless_asked(quiet_run):
    first = quiet_run(console_logs=True)
    first.log(loss=1.0)
    second = quiet_run()
    assert first.finished and traintel.current_run() is second
    (warning,) = [
        line for line in read_lines(first.dir).of("log") if "still live" in line["message"]
    ]
    assert "reinit='create_new' keeps both" in warning["message"]
    third = quiet_run(reinit="create_new")
    assert not second.finished and traintel.current_run() is third
    with pytest.raises(RecordLocked):  # one record, one writer: even in one process
        quiet_run(run_id=third.id, reinit="create_new")
    third.finish()
    second.finish()
    assert traintel.current_run() is None


def test_config_extended_after_init(quiet_run):
    with quiet_run(config={"lr": 0.1}) as run:
        hash_before = run.config_hash
        run.config.update({"dataset": "wikitext", "api_key": "sk-abcdefghijklmnop"})
        run.config["epochs"] = 3
        with pytest.raises(
            ValueError, match="'lr' already recorded with another value; pass allow_change=True"
        ):
            run.config.update(lr=0.2)
        run.config.update(lr=0.2, allow_change=True)
        run.logger("x").info("using sk-abcdefghijklmnop")
    assert dict(run.config) == {
        "lr": 0.2,
        "dataset": "wikitext",
        "api_key": "[REDACTED]",
        "epochs": 3,
    }
    assert run.config_hash != hash_before and run.summary["config_hash"] == run.config_hash
    lines = read_lines(run.dir)
    updates = [c for c in lines.of("config") if c["reason"] == "update"]
    assert [u["changed"] for u in updates] == [["dataset", "api_key"], ["epochs"], ["lr"]]
    assert run.state.events["config_update"] == 3
    written = (run.dir / "events.jsonl").read_text() + (run.dir / "config.json").read_text()
    assert "sk-abcdefghijklmnop" not in written
    saved = json.loads((run.dir / "config.json").read_text())
    assert saved["config"]["lr"] == 0.2 and len(saved["history"]) == 4
    with pytest.raises(RuntimeError, match="run.config.update: run .* has finished"):
        run.config.update(late=1)


def test_tags_notes_and_group_are_recorded_and_exported(quiet_run):
    with capture() as telemetry:
        with quiet_run(
            otlp=None, tags=["baseline", "v2"], notes="lr sweep, 3e-4", group="sweep-7"
        ) as run:
            run.log(loss=1.0)
            telemetry.collect()
            ((labels, _),) = telemetry.points("traintel_run_info")
            status = run.status_dict()
    assert labels["tags"] == "baseline,v2" and labels["group"] == "sweep-7"
    assert status["tags"] == ["baseline", "v2"] and status["group"] == "sweep-7"
    (start,) = read_lines(run.dir).of("run_start")
    assert (start["tags"], start["notes"], start["group"]) == (
        ["baseline", "v2"],
        "lr sweep, 3e-4",
        "sweep-7",
    )
    assert run.summary["tags"] == ["baseline", "v2"]
    with pytest.raises(
        ValueError, match="tag 'a,b' is refused; a tag is 1-64 characters without commas"
    ):
        quiet_run(tags=["a,b"])
    with pytest.raises(TypeError, match="tags is a list of strings"):
        quiet_run(tags="baseline")
