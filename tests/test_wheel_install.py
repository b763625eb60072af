"""From `pip install` to a running stack, outside the checkout: the wheel, installed into a fresh
virtual environment (dependencies from the shared environment: see wheel_build.fresh_venv), used
from a directory that is not the checkout, as a user would.

It runs the demo; writes a compose project with `traintel stack init` and checks every config in
it with the real programs (otelcol validate, promtool check config/rules and test rules, amtool
check-config, and compose-go for the compose file and its .env, as `docker compose config`
loads them); starts `traintel stack up` with those configs, sends a run and reads it back from
Prometheus; and stops it with `traintel stack down`.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import requests

from deploy_tools import tool
from stack_fixture import REQUIRED, eventually
from traintel.stack import install
from wheel_build import REPO, build_wheel, fresh_venv

pytestmark = [pytest.mark.slow, pytest.mark.stack]


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for name in REQUIRED:
        if install.missing_reason(name):
            pytest.skip(install.missing_reason(name))
    return fresh_venv(
        tmp_path_factory.mktemp("venv") / "env", build_wheel(tmp_path_factory.mktemp("wheel"))
    )


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("user")  # a directory that is not the checkout


def _env(**extra: str) -> dict[str, str]:
    """The user's environment: no PYTHONPATH (scripts/venv.sh points it at the checkout's src/),
    no OTEL_* from the test session."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "PYTHONPATH" and not k.startswith(("OTEL_", "TRAINTEL_DIR"))
    }
    return {**env, **extra}


def _traintel(
    venv: Path, cwd: Path, *argv: str, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(venv / "bin" / "traintel"), *argv],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"traintel {' '.join(argv)}:\n{done.stdout}\n{done.stderr}"
    return done


def _check(*argv: str, cwd: Path | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd)
    assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def test_traintel_comes_from_the_wheel(venv, user_dir):
    code = "import traintel, traintel.stack.project as f; print(traintel.__file__); print(f.root())"
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        cwd=user_dir,
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    module, root = done.stdout.split()
    assert module.startswith(str(venv)) and root.startswith(str(venv)), done.stdout
    assert not module.startswith(str(REPO))
    version = _traintel(venv, user_dir, "--version").stdout
    assert "version" in version


def test_the_demo_runs_from_the_installed_wheel(venv, user_dir):
    done = _traintel(
        venv,
        user_dir,
        "demo",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "10",
        "--batch-size",
        "8",
        "--sample-interval",
        "0",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
        TRAINTEL_PROGRESS="off",
    )
    assert "no collector at http://127.0.0.1:9: local record only" in done.stderr
    (run_dir,) = (user_dir / "traintel-runs").iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 10


def test_stack_init_writes_configs_the_real_programs_accept(venv, user_dir):
    done = _traintel(venv, user_dir, "stack", "init", "project")
    project = user_dir / "project"
    assert "Grafana admin password (shown once" in done.stdout
    otelcol = str(install.binary("otelcol"))
    promtool = str(install.binary("prometheus", "promtool"))
    amtool = str(install.binary("alertmanager", "amtool"))
    # the collector's config as the native stack runs it (its container paths made local:
    # file_storage needs its directory to exist)
    rendered = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sys; from traintel.stack.native import NativeStack; "
            "print(NativeStack(sys.argv[1], configs=sys.argv[2]).render('otelcol')[2])",
            str(user_dir / "render"),
            str(project),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    _check(otelcol, "validate", "--config", rendered)
    assert "SUCCESS" in _check(
        promtool, "check", "config", str(project / "prometheus/prometheus.yml")
    )
    rules = sorted(str(p) for p in (project / "prometheus/rules").glob("*.yml"))
    assert len(rules) >= 2
    _check(promtool, "check", "rules", *rules)
    tests = sorted(
        str(p.relative_to(project / "prometheus"))
        for p in (project / "prometheus/tests").glob("*.yml")
    )
    assert "SUCCESS" in _check(promtool, "test", "rules", *tests, cwd=project / "prometheus")
    _check(amtool, "check-config", str(project / "alertmanager/alertmanager.yml"))
    # the compose file and its .env, loaded as Docker Compose loads them
    compose = tool("compose-check")
    resolved = _check(compose, str(project))
    password = next(
        line.split("=", 1)[1]
        for line in (project / ".env").read_text().splitlines()
        if line.startswith("GRAFANA_ADMIN_PASSWORD=")
    )
    assert f"GF_SECURITY_ADMIN_PASSWORD: {password}" in resolved
    (project / ".env").rename(project / "env.saved")
    refused = subprocess.run([compose, str(project)], capture_output=True, text=True)
    (project / "env.saved").rename(project / ".env")
    assert refused.returncode == 1
    assert "required variable GRAFANA_ADMIN_PASSWORD is missing a value" in refused.stderr


def test_stack_up_receives_a_run_and_stack_down_stops_it(venv, user_dir):
    project = user_dir / "project"
    if not (project / "docker-compose.yml").exists():
        _traintel(venv, user_dir, "stack", "init", "project")
    # the installer finds its programs built for the same inputs (the wheel's manifest and
    # go.mod are the checkout's): nothing to build
    installed = _traintel(
        venv,
        user_dir,
        "stack",
        "install",
        "--only",
        "otelcol",
        "--only",
        "prometheus",
        "--only",
        "alertmanager",
        timeout=120,
    )
    assert "building" not in installed.stderr and "ready: " in installed.stderr
    run_dir = user_dir / "stack-run"
    up = _traintel(
        venv,
        user_dir,
        "stack",
        "up",
        "--free-ports",
        "--configs",
        str(project),
        "--run-dir",
        str(run_dir),
        timeout=240,
    )
    state = json.loads((run_dir / "stack.json").read_text())
    try:
        assert state["configs"] == str(project.resolve())
        endpoints = state["endpoints"]
        assert endpoints["prometheus"] in up.stdout
        status = _traintel(venv, user_dir, "stack", "status", "--run-dir", str(run_dir)).stdout
        assert "prometheus    ready" in status and "otelcol       ready" in status
        demo = _traintel(
            venv,
            user_dir,
            "demo",
            "--epochs",
            "1",
            "--steps-per-epoch",
            "20",
            "--batch-size",
            "8",
            "--duration",
            "4",
            "--sample-interval",
            "1",
            "--project",
            "wheel",
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoints["otlp_http"],
            OTEL_METRIC_EXPORT_INTERVAL="1000",
            TRAINTEL_PROGRESS="off",
        )
        assert f"collector listening at {endpoints['otlp_http']}" in demo.stderr
        summaries = [
            json.loads(p.read_text()) for p in (user_dir / "traintel-runs").glob("*/summary.json")
        ]
        run_id = next(s["run"] for s in summaries if s["project"] == "wheel")

        def steps() -> float | None:
            found = requests.get(
                f"{endpoints['prometheus']}/api/v1/query",
                timeout=10,
                params={"query": f'traintel_steps_total{{project="wheel",run="{run_id}"}}'},
            ).json()
            values = [float(r["value"][1]) for r in found["data"]["result"]]
            return values[0] if values and values[0] == 20 else None

        assert eventually(steps, 90, 1.0, "the run's 20 steps in Prometheus") == 20
    finally:
        down = _traintel(venv, user_dir, "stack", "down", "--run-dir", str(run_dir))
    assert "stopped" in down.stdout
    for name in ("otelcol", "prometheus", "alertmanager"):
        assert not (run_dir / name / f"{name}.pid").exists()
    after = _traintel(venv, user_dir, "stack", "status", "--run-dir", str(run_dir)).stdout
    states: dict[str, str] = {}  # the programs' table first; the endpoints' lines follow
    for line in after.splitlines():
        if line.strip():
            states.setdefault(line.split()[0], line.split()[1])
    assert [states[name] for name in ("otelcol", "prometheus", "alertmanager")] == ["down"] * 3
