"""The benchmarks other modules own, run through their own ``main()``: ``sampler_cost.py``
(the sampler thread's CPU) and ``logs_summary.py`` (``traintel logs summary`` against jq)."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

from benchmarks import harness


def _main(module: ModuleType, argv: list[str]) -> None:
    with mock.patch.object(sys, "argv", [module.__name__, *argv]):
        module.main()


def sampler_cost(seconds: float, interval: float) -> dict[str, Any]:
    from benchmarks import sampler_cost as bench

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "result.json"
        with mock.patch.object(bench, "RESULTS", path):  # it has no --output option
            _main(bench, ["--seconds", str(seconds), "--interval", str(interval)])
        result = json.loads(path.read_text())
    pct = result["real"]["pct_of_one_core"]
    return {
        **result,
        "targets": [
            harness.target(
                f"sampler thread < {result['target_pct_of_one_core']:g} % of one core "
                f"(at {interval:g} s)",
                pct,
                pct < result["target_pct_of_one_core"],
            )
        ],
    }


def render_sampler_cost(result: dict[str, Any]) -> list[str]:
    real, scaled = result["real"], result["scaled"]
    return [
        "| samplers | readings | sample wall (median / max) | CPU, real | CPU, scaled |",
        "|---|---|---|---|---|",
        f"| {', '.join(result['samplers'])} | {result['readings_per_sample']} | "
        f"{result['sample_wall_ms_median']:.2f} / {result['sample_wall_ms_max']:.2f} ms | "
        f"{real['pct_of_one_core']:.3f} % of a core ({real['batches']} samples at "
        f"{real['interval_s']:g} s) | {scaled['pct_of_one_core']:.3f} % |",
        "",
        _render_nvml(result.get("nvml") or {"skipped": "not measured"}),
    ]


def _render_nvml(nvml: dict[str, Any]) -> str:
    if "fields" not in nvml:
        return f"NVML fields: {nvml['skipped']}."
    costs = {**nvml["fields"], "xid_poll": nvml["xid_poll"]}
    return f"NVML fields on {nvml['gpu']} (median ms wall / CPU): " + "; ".join(
        f"{name} {cost}"
        if isinstance(cost, str)
        else f"{name} {cost['wall_ms']:.3f} / {cost['cpu_ms']:.3f}"
        for name, cost in costs.items()
    )


def logs_summary(size_mb: int) -> dict[str, Any]:
    if shutil.which("jq") is None:
        raise harness.Skipped("jq is not installed (the baseline): apt-get install -y jq")
    from benchmarks import logs_summary as bench

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "result.json"
        _main(bench, ["--size-mb", str(size_mb), "--output", str(path)])
        return json.loads(path.read_text())


def render_logs_summary(result: dict[str, Any]) -> list[str]:
    return [
        "| record | traintel CLI | in process | jq (best) | jq / traintel |",
        "|---|---|---|---|---|",
        f"| {result['size_mib']} MiB, {result['lines']:,} lines | "
        f"{result['traintel_cli_s']:.2f} s | {result['traintel_in_process_s']:.2f} s | "
        f"{result['jq_best_s']:.2f} s | {result['ratio_jq_over_traintel_cli']}x |",
    ]


SAMPLER_COST = harness.Benchmark(
    name="sampler_cost",
    title="Sampler thread CPU (benchmarks/sampler_cost.py)",
    profiles={
        "full": {"seconds": 60.0, "interval": 5.0},
        "quick": {"seconds": 11.0, "interval": 5.0},
        "tiny": {"seconds": 0.5, "interval": 0.1},
    },
    run=sampler_cost,
    render=render_sampler_cost,
)
LOGS_SUMMARY = harness.Benchmark(
    name="logs_summary",
    title="`traintel logs summary` against jq (benchmarks/logs_summary.py)",
    profiles={"full": {"size_mb": 1024}, "quick": {"size_mb": 128}, "tiny": {"size_mb": 1}},
    run=logs_summary,
    render=render_logs_summary,
)
