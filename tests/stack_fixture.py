"""The ``stack`` fixture: the real collector, Prometheus, Alertmanager (and Loki) for tests.

It starts the programs with the same code as ``traintel stack up`` (traintel.stack.native), on
free loopback ports and in a temporary run directory, once per session. Tests marked
``@pytest.mark.stack`` skip, with the installer's recorded reason, when a program they need is
not built; ``@pytest.mark.stack("loki")`` adds optional programs to what a test needs.
Fault tests stop and start single programs with ``stack.stop(name)`` / ``stack.start(name)``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from traintel.stack import install, native

REPO = Path(__file__).resolve().parents[1]
#: the rule files Prometheus loads, as committed (``make generate`` writes them)
RULE_FILES = sorted((REPO / "prometheus/rules").glob("*.yml"))

#: what every stack test needs; Loki and Tempo are asked for per test
REQUIRED = ("otelcol", "prometheus", "alertmanager")
#: the checks of ``traintel doctor`` that pass against the running stack (once Prometheus has
#: scraped its targets)
DOCTOR_PASSES = (
    "collector otlp",
    "collector health",
    "prometheus",
    "prometheus scraping",
    "alertmanager",
    "clock",
)


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("stack")
    if marker is None:
        return
    for name in (*REQUIRED, *marker.args):
        reason = install.missing_reason(name)
        if reason:
            pytest.skip(reason)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """A running NativeStack; ``stack.endpoints`` has the URLs, ``stack.tap_file("traces")``
    what the collector received (a file exporter added to every pipeline)."""
    reasons = [r for r in map(install.missing_reason, REQUIRED) if r]
    if reasons:
        pytest.skip("; ".join(reasons))
    running = native.NativeStack(
        tmp_path_factory.mktemp("stack"), ports=native.free_ports(), tap=True, sink=True
    )
    try:
        running.up()
    except native.StackError:
        running.down()
        raise
    yield running
    running.down()


def require(stack: native.NativeStack, *names: str) -> None:
    """Skip the calling test unless these programs are running in ``stack``."""
    for name in names:
        if name in stack.unavailable:
            pytest.skip(stack.unavailable[name])


def eventually(probe, timeout: float = 90.0, interval: float = 1.0, what: str = ""):
    """Call ``probe`` until it returns something truthy and return that; fail naming ``what``
    (data crosses the collector's batches and export intervals before a backend has it)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}: last {last!r}")


def prometheus_query(base: str, expr: str, timeout: float = 30, **params: str) -> list[dict]:
    """An instant query against the Prometheus HTTP API at ``base`` (a Prometheus, Thanos Query)
    with further ``params`` (``time``, ``dedup``): the result's series, a scalar as one series
    without labels; a failed query fails the test."""
    body = requests.get(
        f"{base}/api/v1/query", params={"query": expr, **params}, timeout=timeout
    ).json()
    assert body["status"] == "success", (base, expr, body)
    data = body["data"]
    if data["resultType"] in ("scalar", "string"):
        return [{"metric": {}, "value": data["result"]}]
    return data["result"]


def promql(stack: native.NativeStack, expr: str) -> list[dict]:
    """An instant query against the stack's Prometheus, now; a failed query fails the test."""
    return prometheus_query(stack.endpoints["prometheus"], expr, timeout=10)


#: the demo run the stack proofs train (end to end, Thanos, sync): two epochs of 40 steps of 16
#: samples, a NaN loss at step 10 and a data error at step 15, samplers every second
PROOF_RUN = (
    "--epochs",
    "2",
    "--steps-per-epoch",
    "40",
    "--batch-size",
    "16",
    "--nan-at-step",
    "10",
    "--error-at-step",
    "15",
    "--sample-interval",
    "1",
)


def demo_command(*options: str) -> list[str]:
    """``traintel demo`` as a child process, its steps not padded to a wall-clock duration."""
    return [sys.executable, "-m", "traintel.cli", "demo", "--duration", "0", *options]


def demo_env(otlp_endpoint: str, runs: Path, progress: str = "lines") -> dict[str, str]:
    """The environment of a run exporting to the collector at ``otlp_endpoint`` every second
    (spans and logs every 0.5 s) and recording under ``runs``."""
    return {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        "OTEL_BSP_SCHEDULE_DELAY": "500",
        "OTEL_BLRP_SCHEDULE_DELAY": "500",
        "TRAINTEL_DIR": str(runs),
        "TRAINTEL_PROGRESS": progress,
    }


def committed_rules() -> list[dict]:
    """Every rule of the committed rule files, recording and alerting, file by file."""
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def evaluate_every_second(stack: native.NativeStack, *rule_files: Path) -> None:
    """Have the running Prometheus evaluate its rules, and ``rule_files`` beside them, every
    second rather than every 15 s: its rendered config is edited, then reloaded (SIGHUP)."""
    path = stack.run_dir / "prometheus" / "rendered-prometheus.yml"
    config = yaml.safe_load(path.read_text())
    config["global"]["evaluation_interval"] = "1s"
    if rule_files:
        config["rule_files"] = [*config.get("rule_files", []), *map(str, rule_files)]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    os.kill(stack.pid("prometheus"), signal.SIGHUP)
