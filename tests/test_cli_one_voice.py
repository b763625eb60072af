"""The command line speaks with one voice: `status`, `logs summary`, `logs errors` and
`logs report` say the same status and the same counts of one run; runs are found by id, name or
path and filtered by tag, group and status; plots draw sparse series, mark non-finite steps and
evaluations, and name the run."""

from __future__ import annotations

import json
import signal
import subprocess
import textwrap
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import SCRIPT_ENV, run_script, start_script
from traintel.cli import main
from traintel.core.state import RunState
from traintel.record.reader import Records
from traintel.reports import analysis, render


def cli(*args: str) -> Any:
    result = CliRunner().invoke(main, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def voices(target: str) -> list[tuple[str, str, int, int | None]]:
    """(command, status, errors, warnings) as each command says them."""
    status = cli("status", target)
    summary = cli("logs", "summary", target)
    errors = cli("logs", "errors", target)
    report = cli("logs", "report", target)["summary"]
    return [
        ("status", status["status"], status["errors"], None),
        ("logs summary", summary["status"], summary["errors"], summary["warnings"]),
        ("logs errors", errors["status"], errors["errors"], errors["warnings"]),
        ("logs report", report["status"], report["errors"], report["warnings"]),
    ]


def agree(target: str) -> tuple[str, int, int]:
    said = voices(target)
    assert len({(status, errors) for _, status, errors, _ in said}) == 1, said
    assert len({warnings for *_, warnings in said if warnings is not None}) == 1, said
    return said[1][1], said[1][2], said[1][3]


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINTEL_DIR", str(tmp_path))
    return tmp_path


def test_every_command_says_the_same_of_a_finished_run(runs, quiet_run):
    with quiet_run(run_id="done", name="baseline", tags=["a"], console_logs=True) as run:
        run.log(loss=1.0)
        run.error(ValueError("bad batch"), operation="data")
        run.error(OSError("disk"), operation="checkpoint")
        run.logger("data").warning("slow shard")
        run.logger("data").error("a log line at error level is a log line, not an error")
        run.log(loss=float("nan"))
    assert agree("done") == ("finished", 2, 2)  # a log and the non-finite loss warn
    assert run.summary["errors"]["total"] == 2


def test_every_command_says_the_same_of_a_preempted_then_resumed_run(runs, quiet_run):
    with quiet_run(run_id="job") as run:
        run.log(step=1, loss=1.0)
        run.finish("preempted")
    assert agree("job")[0] == "preempted"
    with quiet_run(run_id="job", resume=True) as run:
        run.log(step=2, loss=1.0)
    assert agree("job")[0] == "finished"
    assert cli("logs", "summary", "job")["steps"] == 2


def test_a_killed_run_is_crashed_and_a_live_one_running_everywhere(runs, quiet_run):
    script = textwrap.dedent(f"""
        import os, signal, sys, traintel
        run = traintel.init(project="t", dir={str(runs)!r}, run_id=sys.argv[1],
                            console_logs=False, flush_interval=0.05)
        run.log(loss=1.0)
        run.flush()
        print("ready", flush=True)
        if sys.argv[1] == "killed":
            os.kill(os.getpid(), signal.SIGKILL)
        sys.stdin.read()
    """)
    killed = run_script(script, env=SCRIPT_ENV, timeout=60, args=["killed"])
    assert killed.returncode == -signal.SIGKILL
    assert agree("killed") == ("crashed", 0, 0)
    live = start_script(script, env=SCRIPT_ENV, args=["live"], stdin=subprocess.PIPE, stderr=None)
    try:
        assert live.stdout.readline().strip() == "ready"
        assert agree("live") == ("running", 0, 0)
    finally:
        live.communicate("", timeout=60)
    assert agree("live")[0] == "finished"


def test_runs_are_found_by_id_name_or_path_and_filtered(runs, quiet_run):
    for run_id, name, tags, group, status in (
        ("r1", "resnet", ["base"], "sweep", "finished"),
        ("r2", "resnet", ["base", "lr"], "sweep", "failed"),
        ("r3", "vit", [], None, "finished"),
    ):
        with quiet_run(run_id=run_id, name=name, tags=tags, group=group) as run:
            run.log(loss=1.0)
            run.finish(status)
    assert cli("logs", "summary", "vit")["run"] == "r3"
    assert cli("logs", "summary", str(runs / "r3"))["run"] == "r3"
    result = CliRunner().invoke(main, ["status", "resnet", "--format", "json"])
    assert json.loads(result.stdout)["run"] == "r2"  # the latest of that name, and a note
    assert "2 runs are named 'resnet'; the latest is r2" in result.stderr
    missing = CliRunner().invoke(main, ["logs", "summary", "nope"])
    assert missing.exit_code != 0 and "no run with the id or name 'nope'" in missing.output

    def listed(*options: str) -> list[str]:
        return sorted(r["run"] for r in cli("status", "--all", *options))

    assert listed() == ["r1", "r2", "r3"]
    assert listed("--tag", "base") == ["r1", "r2"]
    assert listed("--tag", "base", "--tag", "lr") == ["r2"]
    assert listed("--group", "sweep", "--status", "finished") == ["r1"]
    table = CliRunner().invoke(main, ["status", "--tag", "lr"]).stdout
    assert "base,lr" in table and "failed" in table


def test_plots_draw_sparse_series_mark_nonfinite_steps_and_evals_and_name_the_run(runs, quiet_run):
    with quiet_run(run_id="sparse", name="gpt-small") as run:
        for step in range(0, 5001, 500):
            run.log(step=step, loss=float("nan") if step >= 4000 else 5.0 / (step + 1))
            if step % 1000 == 0:
                run.log_eval(step=step, val_loss=4.0 / (step + 1))
    series = analysis.Series()
    analysis.scan(Records(run.dir), series)
    figures = render.figures(series)
    loss = figures["loss"].axes[0]
    assert loss.get_title() == "Training loss: gpt-small (sparse)"
    line = next(l for l in loss.get_lines() if l.get_label() == "loss")
    assert list(line.get_xdata()) == list(range(0, 4000, 500)) and line.get_marker() == "o"
    red = [l for l in loss.get_lines() if l.get_color() == "red"]
    assert sorted(l.get_xdata()[0] for l in red) == [4000, 4500, 5000]
    legend = [t.get_text() for t in loss.get_legend().get_texts()]
    assert legend == ["loss", "non-finite loss (3)"]
    (evals,) = figures["eval"].axes[0].get_lines()
    assert list(evals.get_xdata()) == [0, 1000, 2000, 3000, 4000, 5000]


def test_epochs_are_shown_as_the_loop_numbers_them():
    state = RunState()
    state.epoch, state.epochs_ended = 0, 0
    assert render.progress_text(state, 10).startswith("epoch 0 (1/10) | step 0")
    state.epoch, state.epochs_ended = 3, 2  # a loop counting epochs from 1
    assert render.epoch_text(state, 3) == "epoch 3 (3/3)"
    assert render.epoch_text(state, None) == "epoch 3"
