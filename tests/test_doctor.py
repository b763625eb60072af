"""``traintel doctor`` against nothing, against the real native stack, and with one program of
it stopped. Endpoints are always given explicitly (free ports, or the stack fixture's), so a
stack the developer runs on the default ports does not change the results.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from stack_fixture import DOCTOR_PASSES, eventually, require
from traintel.cli import main
from traintel.stack.native import free_port


def _nothing() -> dict[str, str]:
    """An endpoint option for every service, each a port nobody listens on."""
    urls = {
        name: f"http://127.0.0.1:{free_port()}"
        for name in (
            "collector",
            "collector-health",
            "prometheus",
            "alertmanager",
            "loki",
            "tempo",
            "grafana",
        )
    }
    urls["collector-health"] += "/"
    return urls


def _doctor(urls: dict[str, str], *extra: str) -> tuple[int, dict[str, dict]]:
    args = ["doctor", "--format", "json", "--timeout", "2", *extra]
    for name, url in urls.items():
        args += [f"--{name}", url]
    result = CliRunner().invoke(main, args)
    checks = json.loads(result.output)["checks"]
    return result.exit_code, {c["name"]: c for c in checks}


def _statuses(checks: dict[str, dict]) -> dict[str, str]:
    return {name: c["status"] for name, c in checks.items()}


def test_doctor_with_nothing_running_fails_and_says_why(tmp_path):
    code, checks = _doctor(_nothing(), "--run-dir", str(tmp_path / "runs"))
    assert code == 1
    assert _statuses(checks) | {"gpus": "-"} == {
        "collector otlp": "fail",
        "collector health": "fail",
        "prometheus": "fail",
        "prometheus scraping": "fail",
        "alertmanager": "fail",
        "loki": "warn",
        "tempo": "warn",
        "grafana": "warn",
        "run directory": "pass",
        "clock": "warn",
        "gpus": "-",
    }
    assert "Connection refused" in checks["collector otlp"]["detail"]
    assert "traintel stack up" in checks["prometheus"]["detail"]
    assert checks["gpus"]["status"] == ("pass" if torch.cuda.is_available() else "warn")


def test_doctor_table_is_plain_text_when_piped(tmp_path):
    args = ["doctor", "--timeout", "2", "--run-dir", str(tmp_path)]
    for name, url in _nothing().items():
        args += [f"--{name}", url]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    header, *rows, totals = result.output.splitlines()
    assert header.split() == ["check", "status", "target", "detail"]
    assert rows[0].split()[:3] == ["collector", "otlp", "fail"]
    assert "[" not in result.output.split("\n", 1)[0] and totals.endswith("5 failed")


def test_doctor_reads_endpoints_from_the_environment(tmp_path, monkeypatch):
    urls = _nothing()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", urls["collector"])
    monkeypatch.setenv("TRAINTEL_PROMETHEUS_URL", urls["prometheus"])
    code, checks = _doctor({}, "--run-dir", str(tmp_path))
    assert checks["collector otlp"]["target"] == f"{urls['collector']}/v1/traces"
    assert checks["prometheus"]["target"] == f"{urls['prometheus']}/-/ready"


def test_unwritable_run_directory_fails(tmp_path):
    code, checks = _doctor(_nothing(), "--run-dir", "/sys/traintel-runs")  # sysfs: even root
    assert checks["run directory"]["status"] == "fail"
    assert "not writable" in checks["run directory"]["detail"]


class _FakeGrafana(BaseHTTPRequestHandler):
    __module__ = __name__
    healthy = True

    def do_GET(self) -> None:
        body = json.dumps({"database": "ok" if self.healthy else "failing"}).encode()
        self.send_response(200 if self.healthy else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("healthy, status", [(True, "pass"), (False, "fail")])
def test_grafana_health(tmp_path, healthy, status):
    # Grafana cannot be built or run here: a stand-in serving its documented /api/health answer.
    handler = type("Grafana", (_FakeGrafana,), {"healthy": healthy})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        urls = _nothing() | {"grafana": f"http://127.0.0.1:{server.server_address[1]}"}
        _, checks = _doctor(urls, "--run-dir", str(tmp_path))
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert checks["grafana"]["status"] == status


# -- the real stack ------------------------------------------------------------------------


def _stack_urls(stack) -> dict[str, str]:
    """The stack's URLs; Grafana's, and Loki's where the sink (not Loki) listens on its port,
    are ports where nothing answers, as on a host without them."""
    e = stack.endpoints
    nowhere = {name: f"http://127.0.0.1:{free_port()}" for name in ("loki", "grafana")}
    return {
        "collector": e["otlp_http"],
        "collector-health": e["collector_health"],
        "prometheus": e["prometheus"],
        "alertmanager": e["alertmanager"],
        "loki": nowhere["loki"] if "loki" in stack.sink_covers else e["loki"],
        "tempo": e["tempo"],
        "grafana": nowhere["grafana"],
    }


def _until_scraping(stack, tmp_path) -> tuple[int, dict[str, dict]]:
    """Prometheus reports targets up only after its first scrape."""

    def scraping() -> tuple[int, dict[str, dict]] | None:
        code, checks = _doctor(_stack_urls(stack), "--run-dir", str(tmp_path))
        return (code, checks) if checks["prometheus scraping"]["status"] == "pass" else None

    return eventually(scraping, 60, 2, "doctor's 'prometheus scraping' to pass")


@pytest.mark.stack
def test_doctor_passes_against_the_running_stack(stack, tmp_path):
    code, checks = _until_scraping(stack, tmp_path)
    statuses = _statuses(checks)
    for name in (*DOCTOR_PASSES, "run directory"):
        assert statuses[name] == "pass", checks[name]
    for optional in ("loki", "tempo"):
        assert statuses[optional] == ("warn" if optional in stack.unavailable else "pass")
    assert statuses["grafana"] == "warn"  # not part of the native stack
    assert code == 0


@pytest.mark.stack
@pytest.mark.parametrize(
    "program, check",
    [("otelcol", "collector otlp"), ("prometheus", "prometheus"), ("alertmanager", "alertmanager")],
)
def test_doctor_fails_when_one_program_is_stopped(stack, tmp_path, program, check):
    stack.stop(program)
    try:
        code, checks = _doctor(_stack_urls(stack), "--run-dir", str(tmp_path))
    finally:
        stack.start(program)
    assert code == 1
    assert checks[check]["status"] == "fail"
    failed = {name for name, c in checks.items() if c["status"] == "fail"}
    assert failed <= {check, "collector health", "prometheus scraping"}


@pytest.mark.stack("loki")
def test_doctor_warns_only_when_loki_is_stopped(stack, tmp_path):
    require(stack, "loki")
    stack.stop("loki")
    try:
        code, checks = _doctor(_stack_urls(stack), "--run-dir", str(tmp_path))
    finally:
        stack.start("loki")
    assert checks["loki"]["status"] == "warn"


@pytest.mark.skipif(Path("/proc/driver/nvidia/version").exists(), reason="a driver is loaded")
def test_no_driver_is_said_as_the_run_says_it_not_as_a_missing_package():
    """A wheel installed without the gpu extra on a machine with no NVIDIA driver: installing
    nvidia-ml-py would not help, so doctor does not ask for it."""
    from traintel.reports.doctor import gpus_visible
    from traintel.samplers.gpu import driver_present

    if driver_present():
        pytest.skip("NVML's library is installed here")
    code = (
        "import sys; sys.modules['pynvml'] = None\n"  # as if nvidia-ml-py were not installed
        "from traintel.reports.doctor import gpus_visible; print(gpus_visible().detail)"
    )
    said = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert said.startswith("no NVIDIA driver")
    assert "nvidia-ml-py" not in said
    assert gpus_visible().status == "warn"
