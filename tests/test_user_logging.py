"""The user's own ``logging`` lines reach the record (issue 29, finding 6): WARNING and above from
every logger, INFO from the script's own (``__main__``, ``log_loggers``), each with its step and
the run's ids; the user's handlers are left alone and print what they printed before, once;
library INFO stays out; ``traintel logs errors`` counts a ``logger.exception``. Each case runs a
real script as ``__main__`` in a process of its own."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import read_lines, traintel_cli

SCRIPT = """
import logging, sys
import traintel
{setup}
log = logging.getLogger(__name__)
lib = logging.getLogger("somelib")
mine = logging.getLogger("mytrainer.data")
run = traintel.init(project="t", name="logs", dir=sys.argv[1], progress="off",
                    console_logs=False, sample_interval=0, otlp=False{options})
run.log(loss=1.0, step=5)
log.info("starting epoch %d", 1)
lib.info("library noise")
lib.warning("library warning")
mine.info("shard %d read", 3)
try:
    1 / 0
except ZeroDivisionError:
    log.exception("batch failed")
run.finish()
log.info("after the run")
"""


def run_script(tmp_path: Path, setup: str = "", options: str = "") -> tuple[str, Path]:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(setup=textwrap.dedent(setup), options=options))
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    (run_dir,) = list((tmp_path / "runs").glob("*"))
    return done.stderr, run_dir


def user_lines(run_dir: Path) -> list[dict]:
    return [
        line for line in read_lines(run_dir).of("log") if not line["logger"].startswith("traintel")
    ]


def test_without_logging_configured(tmp_path):
    """No handler of the user's: Python's last resort prints warnings and errors to stderr,
    as it did before; the record takes those and the script's INFO."""
    stderr, run_dir = run_script(tmp_path)
    lines = user_lines(run_dir)
    assert [(line["logger"], line["level"], line["message"]) for line in lines] == [
        ("__main__", "info", "starting epoch 1"),
        ("somelib", "warning", "library warning"),
    ]
    assert all(line["step"] == 5 and line["run"] for line in lines)
    # logger.exception: the exception recorded as run.error records one, with its logger
    (error,) = read_lines(run_dir).of("error")
    assert error["exc_type"] == "ZeroDivisionError" and error["step"] == 5
    assert error["context"]["logger"] == "__main__"
    assert error["context"]["message"] == "batch failed"
    assert json.loads((run_dir / "summary.json").read_text())["errors"]["total"] == 1
    assert stderr.count("library warning") == 1 and stderr.count("batch failed") == 1, stderr
    assert "starting epoch" not in stderr and "library noise" not in stderr
    assert "after the run" not in json.dumps(read_lines(run_dir))
    shown = traintel_cli("logs", "errors", "--format", "json", str(run_dir), check=True)
    assert json.loads(shown.stdout)["errors"] == 1


def test_with_the_users_handler_at_info(tmp_path):
    """basicConfig(level=INFO): the user's handler prints every line once, as before; the
    record takes the script's lines, a named logger's, and no library INFO."""
    stderr, run_dir = run_script(
        tmp_path,
        setup="logging.basicConfig(level=logging.INFO, format='USER %(message)s')",
        options=", log_loggers=['mytrainer']",
    )
    messages = [line["message"].splitlines()[0] for line in user_lines(run_dir)]
    assert messages == ["starting epoch 1", "library warning", "shard 3 read"]
    for text in (
        "starting epoch 1",
        "library noise",
        "library warning",
        "shard 3 read",
        "batch failed",
        "after the run",
    ):
        assert stderr.count(f"USER {text}") == 1, text


def test_named_loggers_below_the_users_level_are_taken_but_not_printed(tmp_path):
    stderr, run_dir = run_script(
        tmp_path,
        setup="logging.basicConfig(format='USER %(message)s')",
        options=", log_loggers=['mytrainer']",
    )
    messages = [line["message"].splitlines()[0] for line in user_lines(run_dir)]
    assert "shard 3 read" in messages and "starting epoch 1" in messages
    assert "USER shard 3 read" not in stderr and "USER starting epoch" not in stderr
    assert stderr.count("USER library warning") == 1


def test_capture_logs_false_takes_nothing(tmp_path):
    stderr, run_dir = run_script(tmp_path, options=", capture_logs=False")
    assert user_lines(run_dir) == []
    assert stderr.count("library warning") == 1


def test_the_users_lines_reach_otlp_logs_with_step_and_trace_ids(quiet_run):
    from traintel.testing import capture

    mine = logging.getLogger("mytrainer.data")
    with capture() as telemetry:
        with quiet_run(log_loggers=["mytrainer"]) as run:
            run.log(loss=1.0, step=7)
            mine.info("shard %d read", 3)
            logging.getLogger("somelib").info("library noise")
    (record,) = [r for r in telemetry.log_records() if r.body == "shard 3 read"]
    assert record.attributes["step"] == 7 and record.attributes["logger"] == "mytrainer.data"
    assert record.trace_id  # the run's trace: Loki's line links to Tempo
    assert not [r for r in telemetry.log_records() if r.body == "library noise"]
    assert mine.level == logging.NOTSET and not mine.filters  # as the user had it
