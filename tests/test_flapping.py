"""A collector that keeps crashing pages someone: killed with SIGKILL five times while a run
trains, with the real collector, Prometheus and Alertmanager, StackComponentRestarting and
RunExportsFailing fire and reach Alertmanager.

The stack is a private one (not the session's): its rules are rendered from
``traintel.stack.rules.Config`` with 2-minute windows instead of 15, and Prometheus scrapes and
evaluates every second, so that five crashes fit in about a minute; the expressions are the
committed ones.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import requests
import yaml

from reliability_log import record
from stack_fixture import REQUIRED, eventually, promql
from traintel.stack import native, rules
from traintel.stack import project as files

pytestmark = pytest.mark.stack

#: the windows of the alerts under test, shortened to fit a test (the defaults are 15m)
FAST = rules.Config(component_restart_window="2m", export_failure_window="2m")
KILLS = 5
DOWN_S = 3.0

TRAIN = textwrap.dedent("""\
    import sys, time, traintel
    with traintel.init(project="flap", name="flapping", progress="off", sample_interval=0) as run:
        for i in run.track(range(100000)):
            run.log(loss=1.0 / (i + 1), samples=4)
            time.sleep(0.05)
            if time.time() > float(sys.argv[1]):
                break
    """)


@pytest.fixture(scope="module")
def fast_stack(tmp_path_factory: pytest.TempPathFactory):
    """The stack's own files with the rules rendered from :data:`FAST` and 1 s scrapes and
    evaluations, started natively on free ports."""
    configs = tmp_path_factory.mktemp("configs")
    for relative in files.project_files():
        (configs / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(files.root() / relative, configs / relative)
    rules.write(configs / "prometheus" / "rules", FAST)
    prometheus_yml = configs / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(prometheus_yml.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    prometheus_yml.write_text(yaml.safe_dump(config, sort_keys=False))
    running = native.NativeStack(
        tmp_path_factory.mktemp("stack"), ports=native.free_ports(), sink=True, configs=configs
    )
    try:
        running.up(names=(*REQUIRED, native.SINK.name))
        yield running
    finally:
        running.down()


def _alerts(stack: native.NativeStack) -> list[dict]:
    body = requests.get(f"{stack.endpoints['prometheus']}/api/v1/alerts", timeout=10).json()
    return body["data"]["alerts"]


def _states(stack: native.NativeStack, name: str) -> set[str]:
    return {a["state"] for a in _alerts(stack) if a["labels"]["alertname"] == name}


def _firing(stack: native.NativeStack, name: str) -> list[dict]:
    """The alerts named ``name`` that Prometheus has firing now."""
    return [
        a for a in _alerts(stack) if a["labels"]["alertname"] == name and a["state"] == "firing"
    ]


def test_a_collector_killed_five_times_fires_an_alert(fast_stack, tmp_path):
    stack = fast_stack
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": stack.endpoints["otlp_http"],
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1000",
        "TRAINTEL_DIR": str(tmp_path),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", TRAIN, str(time.time() + 150)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: dict[str, set[str]] = {"StackComponentDown": set(), "TelemetryPipelineFailing": set()}
    started = time.monotonic()
    try:
        eventually(
            lambda: promql(stack, 'traintel_steps_total{run!=""}'),
            60,
            what="the run's first steps in Prometheus",
        )
        for _ in range(KILLS):
            pid = stack.pid("otelcol")
            assert pid, "the collector runs"
            os.kill(pid, signal.SIGKILL)
            stack.stop("otelcol")  # reaps the killed process
            time.sleep(DOWN_S)
            stack.start("otelcol")
            time.sleep(DOWN_S)
            for name in seen:
                seen[name] |= _states(stack, name)
        restarting = eventually(
            lambda: _firing(stack, "StackComponentRestarting"),
            60,
            what="StackComponentRestarting firing",
        )
        assert {a["labels"]["job"] for a in restarting} == {"otel-collector"}
        assert float(restarting[0]["value"]) >= FAST.component_restarts
        fired_after = time.monotonic() - started
        exports = eventually(
            lambda: _firing(stack, "RunExportsFailing"),
            60,
            what="RunExportsFailing firing once the run reaches the collector again",
        )
        assert {a["labels"]["rank"] for a in exports} == {"0"}
        assert "metrics" in {a["labels"]["signal"] for a in exports}

        def in_alertmanager() -> set[str]:
            got = requests.get(
                f"{stack.endpoints['alertmanager']}/api/v2/alerts", timeout=10
            ).json()
            names = {a["labels"]["alertname"] for a in got}
            return names if {"StackComponentRestarting", "RunExportsFailing"} <= names else set()

        eventually(in_alertmanager, 60, what="both alerts in Alertmanager")
        for name in seen:
            seen[name] |= _states(stack, name)
    finally:
        proc.kill()
        proc.wait()
    # StackComponentDown (`up == 0` for 5 minutes) restarts its `for` at every crash and
    # TelemetryPipelineFailing reads the collector's own counters, which a dead collector does
    # not move: neither can fire for a flapping collector; StackComponentRestarting is the one.
    assert "firing" not in seen["StackComponentDown"]
    record(
        "collector killed 5 times (SIGKILL) while a run trains",
        "StackComponentRestarting and RunExportsFailing fire and reach Alertmanager",
        f"{KILLS} kills, {DOWN_S:.0f} s down each; StackComponentRestarting firing "
        f"{fired_after:.0f} s after the run's first steps (2-minute window, 1 s scrapes); "
        f"RunExportsFailing firing for signals {sorted({a['labels']['signal'] for a in exports})}; "
        f"StackComponentDown seen {sorted(seen['StackComponentDown']) or ['inactive']}, "
        f"TelemetryPipelineFailing seen "
        f"{sorted(seen['TelemetryPipelineFailing']) or ['inactive']}",
    )
