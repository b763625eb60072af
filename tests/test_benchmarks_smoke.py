"""The benchmarks run: each at its tiniest size, through the runner, writing its result file.

Only the shape of the results is checked (expected keys, finite numbers), never a timing: timings
belong to `make bench` on a quiet machine, not to unit tests. The wandb/mlflow/TensorBoard
comparisons need the bench extra and are skipped without it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a top-level folder, not part of the package
    sys.path.insert(0, str(ROOT))

from benchmarks import runner, step_cost  # noqa: E402

pytestmark = pytest.mark.slow

#: benchmark -> keys its result must have (besides the runner's own)
EXPECTED = {
    "step_cost": ("modes", "titles", "plan", "skipped"),
    "stalls": ("scenarios", "rate_hz", "late_threshold_ms", "busy_threshold_ms"),
    "job": ("jobs", "rate_hz", "steps_per_round"),
    "gil_profile": ("phases", "effective_rate_hz", "samples"),
    "shutdown": ("scenarios", "shutdown_timeout_s"),
    "real_loop": ("overhead_pct", "step_ms", "batch", "collector", "metrics_server"),
    "memory": ("variants", "steps", "collector"),
    "sampler_cost": ("real", "scaled", "samplers"),
    "logs_summary": ("traintel_cli_s", "jq_best_s", "ratio_jq_over_traintel_cli"),
    "collector_load": (
        "ranks",
        "series_per_rank",
        "active_series",
        "bytes_per_series",
        "metrics",
        "logs",
    ),
    "curve_export": ("keys", "interval_s", "rows", "writer_us_per_step"),
    "sync_throughput": (
        "steps",
        "record_lines",
        "points",
        "log_records",
        "spans",
        "lines_per_s",
        "points_per_s",
    ),
}
ANCHORS = [name for name, case in step_cost.CASES.items() if case.needs]


def numbers(value):
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from numbers(item)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    names = [n for n in runner.BENCHMARKS if n != "logs_summary" or shutil.which("jq")]
    runner.run(names, "tiny", out)
    return out


def test_registry_covers_every_benchmark():
    assert set(runner.BENCHMARKS) == set(EXPECTED)
    for bench in runner.BENCHMARKS.values():
        assert set(bench.profiles) == {"full", "quick", "tiny"}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_result_file(results, name):
    if name == "logs_summary" and not shutil.which("jq"):
        pytest.skip("jq is not installed: logs_summary needs it as its baseline")
    if name == "gil_profile" and not (
        shutil.which("py-spy") or (Path(sys.executable).parent / "py-spy").exists()
    ):
        pytest.skip("py-spy is not installed (the bench extra): gil_profile samples with it")
    result = json.loads((results / f"{name}.json").read_text())
    assert {"benchmark", "profile", "environment", *EXPECTED[name]} <= set(result)
    assert len(result["environment"]["loadavg"]) == 3
    assert all(math.isfinite(x) for x in numbers(result))
    for target in result.get("targets", []):
        assert set(target) == {"target", "measured", "met"}


def test_step_cost_rows(results):
    result = json.loads((results / "step_cost.json").read_text())
    for mode in step_cost.MODES:
        table = result["modes"][mode]
        for name in ("floor", step_cost.TRAINTEL, step_cost.BASELINE, "otel_gauges"):
            assert {"median_us", "p99_us", "x_baseline_median"} <= set(table[name])
    assert {t["target"].split(":")[0] for t in result["targets"]} == set(step_cost.MODES)


@pytest.mark.parametrize("name", ANCHORS)
def test_anchor_comparison(results, name):
    package = step_cost.CASES[name].needs
    if importlib.util.find_spec(package) is None:
        pytest.skip(
            f"{package} is not installed: the comparison needs the bench extra "
            "(`make bench` creates that environment)"
        )
    result = json.loads((results / "step_cost.json").read_text())
    assert name not in result["skipped"]
    for mode in step_cost.MODES:
        assert result["modes"][mode][name]["median_us"] > 0


def test_summary_lists_each_result(results):
    summary = (results / "SUMMARY.md").read_text()
    for name in EXPECTED:
        if (results / f"{name}.json").exists():
            assert f"(`{name}`)" in summary


def test_collector_load_measured_what_it_sent(results):
    """The tiny load reached Prometheus and the Loki stand-in. Per-core figures may be None at
    this size (the collector can use less than one CPU-accounting tick), never zero or less."""
    result = json.loads((results / "collector_load.json").read_text())
    if "metrics" not in result:
        pytest.skip(result.get("skipped", "the stack programs are not installed"))
    metrics, logs = result["metrics"], result["logs"]
    assert result["series_per_rank"] > 20 and metrics["requests_refused"] == 0
    assert metrics["samples_per_s"] > 0 and logs["log_records_per_s"] > 0
    for per_core in (
        metrics["collector_samples_per_core_s"],
        metrics["prometheus_samples_per_core_s"],
        logs["collector_log_records_per_core_s"],
    ):
        assert per_core is None or per_core > 0
