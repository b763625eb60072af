"""The ``stack`` fixture: the real collector, Prometheus, Alertmanager (and Loki) for tests.

It starts the programs with the same code as ``traintel stack up`` (traintel.stack.native), on
free loopback ports and in a temporary run directory, once per session. Tests marked
``@pytest.mark.stack`` skip, with the installer's recorded reason, when a program they need is
not built; ``@pytest.mark.stack("loki")`` adds optional programs to what a test needs.
Fault tests stop and start single programs with ``stack.stop(name)`` / ``stack.start(name)``.
"""

from __future__ import annotations

import time

import pytest
import requests

from traintel.stack import install, native

#: what every stack test needs; Loki and Tempo are asked for per test
REQUIRED = ("otelcol", "prometheus", "alertmanager")


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


def promql(stack: native.NativeStack, expr: str) -> list[dict]:
    """An instant query against the stack's Prometheus; a failed query fails the test."""
    response = requests.get(
        f"{stack.endpoints['prometheus']}/api/v1/query", params={"query": expr}, timeout=10
    )
    body = response.json()
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]
