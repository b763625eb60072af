"""The small ones of issue 28: each a traceback or a wrong word before, now a clear message
naming the argument, the variable or the file, or fixed. Inside a run none of them raises
(training comes first): each is one warning and the run goes on."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import traintel
from conftest import QUIET, read_lines
from traintel.cli import main
from traintel.stack import project as stack_files  # the tests name their directory `project`


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for you")

    __repr__ = __str__


@pytest.fixture
def run(tmp_path):
    started = traintel.init(project="t", dir=str(tmp_path), **QUIET)
    yield started
    if not started.finished:
        started.finish()


def test_a_timer_exited_without_enter_is_one_warning(run, caplog):
    timer = run.timer("forward")
    with caplog.at_level(logging.WARNING, "traintel"):
        assert timer.__exit__(None, None, None) is False
    assert "timer 'forward' was exited without being entered" in caplog.text
    with timer:
        pass  # the timer still works


def test_a_span_exited_twice_is_one_warning(run, caplog):
    span = run.span("checkpoint")
    span.__enter__()
    span.__exit__(None, None, None)
    with caplog.at_level(logging.WARNING, "traintel"):
        span.__exit__(None, None, None)
    assert "span 'checkpoint' was exited more often than entered" in caplog.text


def test_error_with_a_list_context_or_a_number_operation_is_recorded_and_said(run, caplog):
    with caplog.at_level(logging.WARNING, "traintel"):
        run.error(ValueError("bad batch"), context=[1, 2])
        run.error(ValueError("bad batch"), operation=123)
    assert "run.error(context=...) takes a dict of details, got list" in caplog.text
    assert "run.error(operation=...) takes the operation's name as a str, got int" in caplog.text
    run.finish()
    errors = read_lines(run.dir).of("error")
    assert errors[0]["context"] == {"value": [1, 2]}
    assert errors[1]["operation"] == "123"


def test_each_run_of_a_process_says_its_misuses_in_its_own_record(tmp_path):
    """The warning was once per process: the second run of a sweep (or the next test on the
    same worker) made the same mistake and its record never said so."""
    for trial in range(2):
        with traintel.init(project="t", dir=str(tmp_path / str(trial)), **QUIET) as run:
            run.error(ValueError("bad batch"), context=[1, 2])
        logs = [line["message"] for line in read_lines(run.dir).of("log")]
        assert any("run.error(context=...) takes a dict" in m for m in logs), (trial, logs)


def test_log_commit_that_is_not_a_bool_is_said(run, caplog):
    with caplog.at_level(logging.WARNING, "traintel"):
        run.log({"loss": 1.0}, commit="no")
    assert "run.log(commit=...) takes True or False, got 'no'" in caplog.text


def test_track_none_names_the_argument(run):
    with pytest.raises(
        TypeError,
        match=r"run.track\(iterable\): expects what a for loop takes "
        r".* got NoneType",
    ):
        run.track(None)


def test_a_span_attribute_whose_str_raises_does_not_reach_the_loop(run, caplog):
    with caplog.at_level(logging.WARNING, "traintel"):
        with run.span("save", path=Unprintable(), step=3):
            pass
    assert "attribute 'path' cannot be made text" in caplog.text


# -- the command line and the environment -----------------------------------------------------
def test_logs_errors_verbose_on_a_line_with_a_level_list(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    now = time.time()
    (run_dir / "events.jsonl").write_text(
        f'{{"ts": {now}, "type": "run_start", "level": "info", "run": "r", "rank": 0}}\n'
        f'{{"ts": {now}, "type": "error", "level": ["error"], "error_type": "data", '
        '"severity": "error", "exc_type": "E", "message": "m", "traceback": "tb", '
        '"context": {}, "hints": [], "step": 1, "run": "r", "rank": 0}\n'
    )
    result = CliRunner().invoke(main, ["logs", "errors", "-v", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "1 level not a level" in result.output


def _init_in_child(
    tmp_path: Path, console: bool = False, **environ: str
) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent(f"""
        import traintel
        run = traintel.init(project="t", dir={str(tmp_path)!r}, progress="off",
                            console_logs={console}, sample_interval=0, otlp=False)
        print("port", run.server.port if run.server else None)
        run.finish()
    """)
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **environ},
    )


def test_an_out_of_range_port_variable_is_named_and_ignored(tmp_path):
    proc = _init_in_child(tmp_path, TRAINTEL_HTTP_PORT="70000")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "environment variable TRAINTEL_HTTP_PORT='70000' is ignored" in proc.stderr
    assert "http_port" not in proc.stderr


def test_a_remote_prometheus_host_variable_is_named_and_loopback_kept(tmp_path):
    proc = _init_in_child(
        tmp_path,
        OTEL_METRICS_EXPORTER="prometheus",
        OTEL_EXPORTER_PROMETHEUS_HOST="0.0.0.0",
        OTEL_EXPORTER_PROMETHEUS_PORT="0",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "environment variable OTEL_EXPORTER_PROMETHEUS_HOST=0.0.0.0 would expose" in proc.stderr
    assert "http_host=" not in proc.stderr


def test_a_full_disk_at_init_is_a_warning_not_a_traceback(tmp_path):
    """A real full file system: a 16 KiB tmpfs, filled (root only: mount)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if (
        shutil.which("mount") is None
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(disk)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("mounting a small tmpfs needs root")
    try:
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={disk / 'fill'}", "bs=1k", "count=64"], capture_output=True
        )
        proc = _init_in_child(disk / "runs", console=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert "No space left on device" in proc.stderr
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


# -- stack init -------------------------------------------------------------------------------
def test_stack_init_over_a_dangling_env_link_names_it(tmp_path):
    project = tmp_path / "stack"
    project.mkdir()
    (project / ".env").symlink_to(tmp_path / "elsewhere.env")
    with pytest.raises(
        stack_files.StackFilesError,
        match=r"symbolic links where traintel writes "
        r"files \(\.env\)",
    ):
        stack_files.init(project)
    assert not (tmp_path / "elsewhere.env").exists()


def test_stack_init_does_not_write_through_a_dangling_project_file_link(tmp_path):
    project = tmp_path / "stack"
    project.mkdir()
    outside = tmp_path / "outside.yml"
    (project / "docker-compose.yml").symlink_to(outside)
    with pytest.raises(stack_files.StackFilesError, match="docker-compose.yml"):
        stack_files.init(project, force=True)
    assert not outside.exists()


@pytest.mark.parametrize("name", ["my stack", "50%h", "cost $HOME", 'quote"d'])
def test_the_systemd_unit_keeps_a_directory_with_odd_characters_whole(tmp_path, name):
    project = tmp_path / name
    stack_files.init(project)
    unit = (project / "traintel-stack.service").read_text()
    (working,) = [
        line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("WorkingDirectory=")
    ]
    (command,) = [
        line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")
    ]
    assert working.replace("%%", "%") == str(project)
    argv = [
        arg.replace("%%", "\0").replace("$$", "$").replace("\0", "%")
        for arg in shlex.split(command)
    ]
    assert argv[argv.index("--configs") + 1] == str(project)
    assert "%h" not in working.replace("%%", "")
    if shutil.which("systemd-analyze"):
        check = subprocess.run(
            ["systemd-analyze", "verify", str(project / "traintel-stack.service")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "Invalid" not in check.stderr and "bad" not in check.stderr.lower(), check.stderr


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.text(
        st.characters(
            codec="utf-8", exclude_characters="/\x00\n\r", exclude_categories=["Cs", "Cc"]
        ),
        min_size=1,
        max_size=20,
    ).filter(lambda n: n not in (".", ".."))
)
def test_any_directory_name_comes_back_whole_from_the_unit(tmp_path, name):
    project = tmp_path / "d" / name
    unit = stack_files.systemd_unit(
        (stack_files.root() / stack_files.UNIT_SOURCE).read_text(), project
    )
    (command,) = [
        line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")
    ]
    argv = [
        arg.replace("%%", "\0").replace("$$", "$").replace("\0", "%")
        for arg in shlex.split(command)
    ]
    assert argv[argv.index("--configs") + 1] == str(project)
