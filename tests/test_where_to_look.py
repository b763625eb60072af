"""Where to look, said right: `traintel stack up` prints only what it started and the variable
to set; the demo prints its live page; no link names a page a native stack does not serve."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests


def _traintel(
    *args: str, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "traintel", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.stack
def test_stack_up_prints_only_what_it_started_and_the_endpoint_to_set(tmp_path: Path) -> None:
    run_dir = tmp_path / "stack"
    up = _traintel("stack", "up", "--free-ports", "--run-dir", str(run_dir))
    try:
        assert up.returncode == 0, up.stderr
        printed = dict(re.findall(r"^  (\w+)\s+(\S+)", up.stdout, re.M))
        assert {"otlp_http", "prometheus", "alertmanager"} <= set(printed)
        api = {
            "prometheus": "/api/v1/status/buildinfo",
            "alertmanager": "/api/v2/status",
            "collector_health": "/",
        }
        for name, path in api.items():  # what is printed answers where the line says
            assert requests.get(printed[name] + path, timeout=5).ok, name
        # the native Prometheus serves its web UI when `traintel stack install` could build it
        # (npm reachable), and says it has none otherwise
        ui = requests.get(f"{printed['prometheus']}/query", timeout=5).ok
        line = next(line for line in up.stdout.splitlines() if line.startswith("  prometheus "))
        assert ("no web UI" in line) is not ui
        if "grafana" in printed:  # only where a Grafana binary was supplied and started
            assert requests.get(f"{printed['grafana']}/api/health", timeout=5).ok
        exports = re.findall(r"^export OTEL_EXPORTER_OTLP_ENDPOINT=(\S+)$", up.stdout, re.M)
        assert exports == [printed["otlp_http"]]

        demo = _traintel(
            "demo",
            "--epochs",
            "1",
            "--steps-per-epoch",
            "5",
            "--batch-size",
            "8",
            "--duration",
            "0",
            "--sample-interval",
            "0",
            "--dir",
            str(tmp_path / "runs"),
            env={"OTEL_EXPORTER_OTLP_ENDPOINT": exports[0], "TRAINTEL_PROGRESS": "off"},
        )
        assert demo.returncode == 0, demo.stderr
        assert re.search(r"^live page: http://127\.0\.0\.1:\d+/$", demo.stderr, re.M)
        if not ui:
            assert "/query" not in demo.stderr  # the native Prometheus has no such page
        if "grafana" not in printed:
            assert "Grafana" not in demo.stderr and "dashboards:" not in demo.stderr
    finally:
        _traintel("stack", "down", "--run-dir", str(run_dir))
