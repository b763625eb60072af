"""One way to find the native stack: ``stack up`` writes stack.json; doctor, demo, ``stack
status``, sync and ``traintel.init`` read it (traintel.core.discovery) when no URL is given.

The stack fixture is ``traintel stack up --free-ports --run-dir <tmp>``: the same code, ports
anything, a run directory that is not the default. ``TRAINTEL_STACK_DIR`` names it as a user's
shell would; one test starts a second stack through the command line in its default run dir.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from stack_fixture import DOCTOR_PASSES, demo_command, eventually
from traintel.cli import main
from traintel.core import discovery
from traintel.export import selection
from traintel.stack.native import NativeStack

#: every variable through which a user gives an endpoint: none is set in these tests
URL_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    "TRAINTEL_COLLECTOR_HEALTH_URL",
    "TRAINTEL_PROMETHEUS_URL",
    "TRAINTEL_ALERTMANAGER_URL",
    "TRAINTEL_LOKI_URL",
    "TRAINTEL_TEMPO_URL",
    "TRAINTEL_GRAFANA_URL",
)


@pytest.fixture
def found(stack: NativeStack, monkeypatch: pytest.MonkeyPatch) -> NativeStack:
    """The fixture's stack, named by TRAINTEL_STACK_DIR, and no endpoint variable set."""
    for name in URL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRAINTEL_STACK_DIR", str(stack.run_dir))
    return stack


def test_no_stack_json_or_a_stopped_stack_means_compose(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINTEL_STACK_DIR", str(tmp_path))
    assert discovery.running() is None
    assert discovery.endpoint("prometheus") == "http://127.0.0.1:9090"
    # stack.json outlives `stack down`; a pid file naming a process that is not our binary
    (tmp_path / "otelcol").mkdir()
    (tmp_path / "stack.json").write_text(
        json.dumps(
            {"endpoints": {"otlp_http": "http://127.0.0.1:1", "prometheus": "http://127.0.0.1:2"}}
        )
    )
    (tmp_path / "otelcol" / "otelcol.pid").write_text(f"{os.getpid()}\n/no/such/otelcol\n")
    assert discovery.running() is None
    assert discovery.endpoint("otlp_http") == "http://127.0.0.1:4318"
    assert discovery.endpoint("prometheus", "http://given:1") == "http://given:1"


@pytest.mark.stack
def test_the_running_stack_is_found_in_a_non_default_run_dir(found):
    assert discovery.running() == {
        k: v for k, v in found.endpoints.items() if k.split("_")[0] not in found.unavailable
    }
    assert found.endpoints["otlp_http"] != "http://127.0.0.1:4318"  # --free-ports
    # traintel.init and traintel sync: the stack's collector unless a variable says otherwise
    assert selection.http_url("metrics") == f"{found.endpoints['otlp_http']}/v1/metrics"
    exporter = selection.otlp_http("traces")
    assert exporter._endpoint == f"{found.endpoints['otlp_http']}/v1/traces"
    from traintel.sync.target import Target

    assert Target().urls["logs"] == f"{found.endpoints['otlp_http']}/v1/logs"  # traintel sync


@pytest.mark.stack
def test_a_variable_still_wins_over_the_running_stack(found, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector.example:4318")
    assert selection.http_url("logs") == "http://collector.example:4318/v1/logs"
    assert selection.otlp_http("logs")._endpoint == "http://collector.example:4318/v1/logs"


@pytest.mark.stack
def test_doctor_finds_the_stack_and_its_collector_health_port(found, tmp_path):

    def scraping() -> tuple[Any, dict[str, dict]] | None:
        result = CliRunner().invoke(
            main, ["doctor", "--format", "json", "--run-dir", str(tmp_path)]
        )
        checks = {c["name"]: c for c in json.loads(result.output)["checks"]}
        return (result, checks) if checks["prometheus scraping"]["status"] == "pass" else None

    # a fresh Prometheus finds its targets within seconds
    result, checks = eventually(scraping, 90, 2, "doctor's 'prometheus scraping' to pass")
    assert checks["collector health"]["target"].startswith(found.endpoints["collector_health"])
    assert ":13133" not in checks["collector health"]["target"]
    for name in DOCTOR_PASSES:
        assert checks[name]["status"] == "pass", checks[name]
    assert checks["prometheus"]["target"].startswith(found.endpoints["prometheus"])
    assert result.exit_code == 0, result.output


@pytest.mark.stack
def test_stack_status_lists_every_endpoint_including_otlp(found):
    result = CliRunner().invoke(main, ["stack", "status", "--run-dir", str(found.run_dir)])
    assert result.exit_code == 0, result.output
    for name in ("otlp_http", "otlp_grpc", "collector_health", "prometheus", "alertmanager"):
        assert f"{name} " in result.output
        assert found.endpoints[name] in result.output


@pytest.mark.stack
def test_demo_exports_to_the_stack_it_finds(found, tmp_path):
    pytest.importorskip("torch")
    env = {k: v for k, v in os.environ.items() if k not in URL_VARIABLES}
    done = subprocess.run(
        demo_command(
            "--epochs",
            "1",
            "--steps-per-epoch",
            "5",
            "--dir",
            str(tmp_path / "runs"),
            "--sample-interval",
            "60",
        ),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert f"collector listening at {found.endpoints['otlp_http']}" in done.stderr
    # the demo links Prometheus's UI only where the native one serves it; else its API
    if found.prometheus_ui:
        assert f"{found.endpoints['prometheus']}/query?g0.expr=traintel_loss" in done.stderr
    else:
        assert f"{found.endpoints['prometheus']}/api/v1/query?query=traintel_loss" in done.stderr
        assert "/query?g0" not in done.stderr
    # a native stack serves no Grafana: no dashboard link (a page that is not there); each URL
    # printed stays on one line of the redirected log (rich wraps at 80 columns there)
    assert "dashboards: " not in done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("Prometheus: ")]
    assert re.fullmatch(r"Prometheus: http://127\.0\.0\.1:\d+/\S+traintel_loss", line), line


@pytest.mark.stack
def test_stack_up_free_ports_in_the_default_run_dir_then_doctor_passes(tmp_path, monkeypatch):
    """As a user does it: `traintel stack up --free-ports` with no --run-dir, then `traintel
    doctor` with no URL at all (TRAINTEL_STACK_DIR stands for the default run dir here so that
    a developer's own stack is left alone)."""
    env = {k: v for k, v in os.environ.items() if k not in URL_VARIABLES}
    env["TRAINTEL_STACK_DIR"] = str(tmp_path / "stack")
    traintel = [sys.executable, "-m", "traintel"]
    up = subprocess.run(
        [*traintel, "stack", "up", "--free-ports"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "Alertmanager serves its API but no web UI" in up.stdout  # nothing links to it
        for _ in range(30):
            doctor = subprocess.run(
                [*traintel, "doctor", "--format", "json", "--run-dir", str(tmp_path / "runs")],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
            if checks["prometheus scraping"]["status"] == "pass":
                break
            time.sleep(2)
        assert doctor.returncode == 0, doctor.stdout
        state = json.loads((tmp_path / "stack" / "stack.json").read_text())
        assert checks["collector otlp"]["target"].startswith(state["endpoints"]["otlp_http"])
    finally:
        subprocess.run([*traintel, "stack", "down"], env=env, timeout=120)
    assert Path(tmp_path / "stack" / "stack.json").exists()


@pytest.mark.stack
def test_the_native_prometheus_serves_its_web_ui(found):
    """Built from Prometheus's own sources by `traintel stack install` (pnpm, as its Makefile
    does) and served as compose's image serves it: the pages and every asset they load."""
    from traintel.stack import install

    if not found.prometheus_ui:
        pytest.skip(f"Prometheus's web UI was not built: {install.build_prometheus_ui()}")
    base = found.endpoints["prometheus"]
    for page in ("/query", "/alerts", "/targets", "/"):
        response = requests.get(f"{base}{page}", timeout=10)
        assert response.status_code == 200, page
        assert '<div id="root">' in response.text, page
    html = requests.get(f"{base}/query", timeout=10).text
    assets = re.findall(r'(?:src|href)="\./([^"]+)"', html)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        response = requests.get(f"{base}/{asset}", timeout=10)
        assert response.status_code == 200 and response.content, asset
    state = json.loads((found.run_dir / "stack.json").read_text())
    assert state["ui"] == {"prometheus": True, "alertmanager": False}
    assert discovery.web_ui("prometheus") and not discovery.web_ui("alertmanager")
