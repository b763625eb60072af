"""Shutdown: wall time from ``run.finish()`` to process exit when the collector is not there.

A child process starts a run with OTLP export to the given collector, logs steps at 100 a second
for ``seconds`` (metrics exported every second, so an export is under way or retrying), notes
``time.monotonic()``, calls ``run.finish()`` and exits; the parent notes the time it saw the child
exit. For scale, the same with the plain OTel SDK (global providers, OTLP exporters, their
default shutdown at interpreter exit), which is what the anchors measured at 8-16 s.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from typing import Any

from benchmarks import harness

TARGET_S = 2.0
EXPORT_INTERVAL_MS = 1000
#: scenario -> (child function, collector kind)
SCENARIOS = {
    "traintel_unreachable": ("benchmarks.shutdown:traintel_exit", "unreachable"),
    "traintel_slow": ("benchmarks.shutdown:traintel_exit", "slow"),
    "otel_sdk_unreachable": ("benchmarks.shutdown:otel_sdk_exit", "unreachable"),
}


def _paced(seconds: float, record) -> None:
    for i in range(int(seconds * 100)):
        record(i)
        time.sleep(0.01)


def traintel_exit(seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="traintel-bench-") as tmp:
        run = harness.traintel_run(tmp, otlp=True, step_span_every=10)
        batches = run.track(itertools.count())

        def record(i: int) -> None:
            next(batches)
            run.log(**harness.step_values(i))

        _paced(seconds, record)
        called = time.monotonic()
        run.finish()
        return {"called": called, "returned": time.monotonic()}


def otel_sdk_exit(seconds: float) -> dict[str, float]:
    from opentelemetry import metrics, trace
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(
        MeterProvider(metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())])
    )
    tracer = trace.get_tracer("bench")
    meter = metrics.get_meter("bench")
    gauges = {key: meter.create_gauge(f"bench_{key}") for key in harness.step_values(0)}

    def record(i: int) -> None:
        with tracer.start_as_current_span("train_step", attributes={"step": i}):
            for key, value in harness.step_values(i).items():
                gauges[key].set(value, {"run": "r1"})

    _paced(seconds, record)
    now = time.monotonic()
    return {"called": now, "returned": now}  # the SDK shuts down in atexit, after this


def run(repeats: int, seconds: float, scenarios: list[str] | None = None) -> dict[str, Any]:
    names = scenarios or list(SCENARIOS)
    exit_s: dict[str, list[float]] = {name: [] for name in names}
    finish_s: dict[str, list[float]] = {name: [] for name in names}
    behind = {}
    for _, name in harness.interleaved(names, repeats):
        function, kind = SCENARIOS[name]
        with harness.collector(kind) as (url, what):
            out = harness.in_child(
                function,
                env=harness.otlp_env(url, EXPORT_INTERVAL_MS),
                timeout=120,
                seconds=seconds,
            )
        behind[name] = what
        exit_s[name].append(out["exited_at"] - out["called"])
        finish_s[name].append(out["returned"] - out["called"])
    table = {
        name: {
            "collector": behind[name],
            "exit_s": exit_s[name],
            "exit_s_max": max(exit_s[name]),
            "finish_s": finish_s[name],
            "finish_s_max": max(finish_s[name]),
        }
        for name in names
    }
    return {
        "repeats": repeats,
        "seconds_of_steps": seconds,
        "shutdown_timeout_s": TARGET_S,
        "scenarios": table,
        "targets": [
            harness.target(
                f"{name}: finish() to exit <= {TARGET_S:g} s (worst of {repeats})",
                row["exit_s_max"],
                row["exit_s_max"] <= TARGET_S,
            )
            for name, row in table.items()
            if name.startswith("traintel")
        ],
    }


def render(result: dict[str, Any]) -> list[str]:
    lines = [
        "| scenario | finish() to exit, each | worst | of which finish() itself, each | "
        "collector |",
        "|---|---|---|---|---|",
    ]
    for name, row in result["scenarios"].items():
        lines.append(
            f"| {name} | {', '.join(f'{s:.2f}' for s in row['exit_s'])} s | "
            f"{row['exit_s_max']:.2f} s | "
            f"{', '.join(f'{s:.2f}' for s in row['finish_s'])} s | {row['collector']} |"
        )
    return lines + [
        "",
        f"Default `shutdown_timeout` ({result['shutdown_timeout_s']:g} s); "
        f"{result['seconds_of_steps']:g} s of steps before finishing; wall time "
        "from just before `finish()` to the parent seeing the child exit. "
        "`otel_sdk_unreachable`: the plain SDK, from the last step to exit.",
    ]


BENCHMARK = harness.Benchmark(
    name="shutdown",
    title="Shutdown with the collector unreachable or slow",
    profiles={
        "full": {"repeats": 3, "seconds": 3.0},
        "quick": {"repeats": 1, "seconds": 2.0},
        "tiny": {"repeats": 1, "seconds": 0.2, "scenarios": ["traintel_slow"]},
    },
    run=run,
    render=render,
)
