"""The installer's Debian fallback, for real: when the Go builds of Prometheus and Alertmanager
fail, `traintel stack install` installs Debian's (older) packages with apt-get, records the version
skew, and the native stack runs on them with the repo's own configs.

Only the Go build is made to fail here (it is replaced by one that raises); apt-get, the packages
and the programs are real. The collector is the one `traintel stack install` built.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

import traintel
from stack_fixture import committed_rules, eventually
from traintel.stack import install, native
from traintel.stack.components import COMPONENTS

ROOT = Path(__file__).resolve().parents[1]
FALLBACK = ("prometheus", "alertmanager")


@pytest.fixture
def fallback_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty install cache holding only the collector already built, with Go builds failing."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("the Debian fallback needs root and apt-get, as the installer does")
    reason = install.missing_reason("otelcol")
    if reason:
        pytest.skip(reason)
    collector = install.load_status()["otelcol"]
    monkeypatch.setenv("TRAINTEL_CACHE", str(tmp_path / "cache"))
    install.status_path().parent.mkdir(parents=True)
    install.status_path().write_text(json.dumps({"otelcol": collector}))

    def go_build_fails(component, dest, log):
        raise install.BuildError(f"{component.name}: Go build refused by this test")

    monkeypatch.setattr(install, "_go_build", go_build_fails)
    return tmp_path


@pytest.mark.slow
def test_debian_packages_stand_in_and_run_the_stack(
    fallback_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    said: list[str] = []
    status = install.install(list(FALLBACK), say=said.append)
    for name in FALLBACK:
        entry = status[name]
        assert entry["ok"] and entry["source"] == "apt", entry
        assert entry["reason"] == f"{name}: Go build refused by this test"
        assert entry["version"] != COMPONENTS[name].version  # the skew is recorded...
        assert any(
            f"{name} ready" in line and f"not {COMPONENTS[name].version}" in line for line in said
        ), said  # ...and said
        shown = subprocess.run(
            [str(install.binary(name)), "--version"], capture_output=True, text=True, timeout=30
        )
        assert entry["version"] in shown.stdout + shown.stderr

    stack = native.NativeStack(fallback_cache / "stack", ports=native.free_ports())
    try:
        stack.up(names=("otelcol", *FALLBACK))
        prometheus = stack.endpoints["prometheus"]

        groups = requests.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
        alerts = {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
        assert alerts == {r["alert"] for r in committed_rules() if "alert" in r}

        def alertmanager_found():
            answer = requests.get(f"{prometheus}/api/v1/alertmanagers", timeout=5).json()
            return answer["data"]["activeAlertmanagers"]

        (found,) = eventually(alertmanager_found, 30, what="Prometheus finding Alertmanager")
        assert found["url"].startswith(stack.endpoints["alertmanager"])

        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", stack.endpoints["otlp_http"])
        monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "1000")
        with traintel.init(
            project="fallback",
            dir=str(fallback_cache / "runs"),
            otlp=True,
            progress="off",
            console_logs=False,
            sample_interval=0,
        ) as run:
            for _ in run.track(range(25)):
                run.log(loss=0.5, samples=4)

        def steps():
            result = requests.get(
                f"{prometheus}/api/v1/query",
                timeout=5,
                params={"query": f'traintel_steps_total{{run="{run.id}"}}'},
            ).json()["data"]["result"]
            return [float(series["value"][1]) for series in result]

        assert eventually(lambda: steps() == [25.0], 60, what="25 steps in Debian's Prometheus")
    finally:
        stack.down()
