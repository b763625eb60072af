"""Shared fixtures and hooks: quiet runs, their records, training scripts and the command line run
as child processes (here), the native stack (``stack_fixture``), and what the reliability tests
measured (``reliability_log``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest

import reliability_log  # noqa: E402
import traintel
from kube_fixture import kube  # noqa: F401  (one real kube-apiserver per test run)
from stack_fixture import *  # noqa: F403  (the `stack` fixture and its skip hook)
from traintel.core import catalog

# A native stack the developer runs in the default run directory (`traintel stack up`) would be
# found by every run, sync and doctor of the suite (traintel.core.discovery): tests see none
# unless they name one.
if "TRAINTEL_STACK_DIR" not in os.environ:
    os.environ["TRAINTEL_STACK_DIR"] = tempfile.mkdtemp(prefix="traintel-test-no-stack-")

ROOT = Path(__file__).resolve().parents[1]


def script_env(**extra: str) -> dict[str, str]:
    """The environment of a training script: this checkout's sources first."""
    environ = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    environ.update(extra)
    return environ


#: the environment of training scripts that show, sample and export nothing: no OpenTelemetry,
#: no progress display, no samplers (the variables a user would set; ``console_logs`` and
#: ``flush_interval`` have none, so the scripts still pass those to ``traintel.init``)
SCRIPT_ENV = script_env(
    OTEL_SDK_DISABLED="true", TRAINTEL_PROGRESS="off", TRAINTEL_SAMPLE_INTERVAL="0"
)


def run_script(
    code: str,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    args: Iterable[str] = (),
    **popen: object,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (dedented) as a training script in its own Python process."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or script_env(),
        **popen,
    )  # type: ignore[call-overload]


def start_script(
    code: str, *, env: dict[str, str] | None = None, args: Iterable[str] = (), **popen: object
) -> subprocess.Popen[str]:
    """Start ``code`` (dedented) as a training script; its stdout and stderr are pipes unless
    ``popen`` says otherwise."""
    return subprocess.Popen(  # type: ignore[call-overload]
        [sys.executable, "-c", textwrap.dedent(code), *args],
        **{"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen},
        text=True,
        env=env or script_env(),
    )


#: init options for runs that show, sample and export nothing, and write their record quickly
QUIET = {
    "progress": "off",
    "console_logs": False,
    "sample_interval": 0,
    "otlp": False,
    "flush_interval": 0.05,
}


class Lines(list):  # type: ignore[type-arg]  # a plain list of record lines, with a filter
    """A run's record lines, oldest first."""

    def of(self, kind: str, event: str | None = None) -> list[dict[str, Any]]:
        """The lines of one type (and, for events, one event name)."""
        return [
            line
            for line in self
            if line["type"] == kind and (event is None or line.get("event") == event)
        ]


def read_lines(run_dir: Path) -> Lines:
    """Every line of the record in ``run_dir``, rotated files first; a torn line fails the test."""
    files = sorted(Path(run_dir).glob("events.jsonl.*"), key=lambda p: -int(p.suffix[1:]))
    return Lines(
        orjson.loads(raw)
        for path in [*files, Path(run_dir) / "events.jsonl"]
        for raw in path.read_bytes().splitlines()
    )


def traintel_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, **run: Any
) -> subprocess.CompletedProcess[str]:
    """``traintel ARGS`` as users run it: a child process (``python -m traintel.cli``), its
    output captured as text."""
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "traintel.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **run,
    )


def logs_summary(run_dir: Path, *options: str, env: dict[str, str] | None = None) -> str:
    """What ``traintel logs summary RUN_DIR [options]`` prints, run as users run it (a child
    process); a non-zero exit fails the test with the command's stderr."""
    proc = traintel_cli("logs", "summary", str(run_dir), *options, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def logs_summary_json(run_dir: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``traintel logs summary RUN_DIR --format json``, parsed."""
    shown: dict[str, Any] = json.loads(logs_summary(run_dir, "--format", "json", env=env))
    return shown


def point(telemetry: Any, name: str, **labels: str) -> float:
    """The one exported point of metric ``name`` with these labels, from
    ``traintel.testing.capture()``; none or several fail the test."""
    (value,) = [
        p.value
        for attrs, p in telemetry.points(name)
        if all(attrs.get(k) == v for k, v in labels.items())
    ]
    return value  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def quiet() -> dict[str, Any]:
    """``traintel.init`` options for a run that shows, samples and exports nothing."""
    return dict(QUIET)


@pytest.fixture
def quiet_run(tmp_path: Path, quiet: dict[str, Any]) -> Callable[..., traintel.Run]:
    """Start a quiet run recording under the test's ``tmp_path``: ``quiet_run(name="x")``."""

    def start(**options: Any) -> traintel.Run:
        return traintel.init(**{"project": "test", "dir": str(tmp_path), **quiet, **options})

    return start


@pytest.fixture(scope="session")
def assert_catalog() -> Callable[[list[tuple[str, float, dict[str, str]]]], None]:
    """Check samplers' readings: each a catalog metric with exactly its extra labels (the run
    adds the base labels)."""

    def check(readings: list[tuple[str, float, dict[str, str]]]) -> None:
        assert readings
        for name, value, labels in readings:
            metric = catalog.BY_NAME[name]
            assert set(labels) == set(metric.all_labels) - set(catalog.BASE_LABELS), name
            assert isinstance(value, float) and all(isinstance(v, str) for v in labels.values())

    return check


@pytest.fixture(scope="session")
def recorded() -> Callable[[Path], Lines]:
    """Read a run's record: ``recorded(run.dir).of("step")``."""
    return read_lines


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Keep what the reliability tests measured for docs/reliability.md."""
    reliability_log.write()
