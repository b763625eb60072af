"""What it costs to represent every value logged between two exports, two ways.

Per-interval statistics (what traintel exports): per run.log key, the latest value plus min and
max of the interval and cumulative counts of values and of non-finite values, a fixed number of
points per export whatever the step rate. Per-step points: every logged value as its own gauge
point with its own timestamp, which grows with the step rate.

Both are built as the OTLP exporter gets them (SDK ``Metric`` objects) and encoded with the OTLP
protobuf encoder the HTTP exporter uses; encoding runs on the export thread and holds the
interpreter lock, so its time is time the training thread may wait (benchmarks/stalls.py shows
what 20 ms of it does to a paced loop). The record writer's cost per step (folding the values
into the windows, or keeping every point) is measured too; the training thread pays neither.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from benchmarks import harness

KEYS = ("loss", "lr", "grad_norm", "accuracy")
INTERVAL_S = 15.0


def _metrics(points: dict[str, list[tuple[float, int, dict[str, str]]]]) -> Any:
    """MetricsData with one gauge per name: (value, time_unix_nano, attributes) points."""
    from opentelemetry.sdk.metrics.export import (
        Gauge,
        Metric,
        MetricsData,
        NumberDataPoint,
        ResourceMetrics,
        ScopeMetrics,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    metrics = [
        Metric(
            name=name,
            description="",
            unit="",
            data=Gauge(
                data_points=[
                    NumberDataPoint(
                        attributes=attributes,
                        start_time_unix_nano=0,
                        time_unix_nano=ts,
                        value=value,
                    )
                    for value, ts, attributes in series
                ]
            ),
        )
        for name, series in points.items()
    ]
    return MetricsData(
        resource_metrics=[
            ResourceMetrics(
                resource=Resource.create({"service.name": "bench"}),
                schema_url="",
                scope_metrics=[
                    ScopeMetrics(
                        scope=InstrumentationScope("traintel"), metrics=metrics, schema_url=""
                    )
                ],
            )
        ]
    )


def _encode(data: Any) -> int:
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics

    return len(encode_metrics(data).SerializeToString())


def _timed(fn, repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def run(
    rates: tuple[float, ...] = (1, 10, 100, 1000), repeats: int = 5, fold_steps: int = 20_000
) -> dict[str, Any]:
    from traintel.core.state import IntervalStats

    base = {"project": "bench", "run": "r1", "rank": "0"}
    labelled = {key: {**base, "metric": key} for key in KEYS}
    now = time.time_ns()
    rows = []
    for rate in rates:
        steps = max(1, int(rate * INTERVAL_S))
        values = [{key: 1.0 / (i + 1) for key in KEYS} for i in range(steps)]

        # the window as the record writer has folded it by export time (its cost is the
        # writer's, measured below)
        window = {key: (min(v[key] for v in values), max(v[key] for v in values)) for key in KEYS}

        def stats_export() -> int:
            points = {
                "traintel_logged_min": [(lo, now, labelled[k]) for k, (lo, _) in window.items()],
                "traintel_logged_max": [(hi, now, labelled[k]) for k, (_, hi) in window.items()],
                "traintel_logged_values_total": [(steps, now, labelled[k]) for k in KEYS],
                "traintel_logged_nonfinite_total": [(0, now, labelled[k]) for k in KEYS],
                "traintel_metric": [(values[-1][k], now, labelled[k]) for k in KEYS],
            }
            return _encode(_metrics(points))

        step_ns = int(INTERVAL_S * 1e9 / steps)

        def per_step_export() -> int:
            points = {
                "traintel_metric": [
                    (v[k], now + i * step_ns, labelled[k])
                    for i, v in enumerate(values)
                    for k in KEYS
                ]
            }
            return _encode(_metrics(points))

        stats_s, stats_bytes = _timed(stats_export, repeats)
        # the per-step window of one interval is built from the values here, so the two are
        # compared on the same work: building the points and encoding them
        per_step_s, per_step_bytes = _timed(per_step_export, max(1, repeats // (1 + steps // 5000)))
        rows.append(
            {
                "steps_per_s": rate,
                "steps_per_export": steps,
                "stats": {
                    "points": 5 * len(KEYS),
                    "export_ms": stats_s * 1e3,
                    "bytes": stats_bytes,
                    "prometheus_samples_per_s": 5 * len(KEYS) / INTERVAL_S,
                },
                "per_step": {
                    "points": steps * len(KEYS),
                    "export_ms": per_step_s * 1e3,
                    "bytes": per_step_bytes,
                    "prometheus_samples_per_s": steps * len(KEYS) / INTERVAL_S,
                },
            }
        )

    stats = IntervalStats()
    take = stats.reader()
    step = {"loss": 0.5, "lr": 1e-3, "grad_norm": 2.0, "accuracy": 0.9, "samples": 32}
    started = time.perf_counter()
    for _ in range(fold_steps):
        stats.fold(step)
    fold_us = (time.perf_counter() - started) / fold_steps * 1e6
    take()
    kept: list[tuple[float, dict[str, Any]]] = []
    started = time.perf_counter()
    for i in range(fold_steps):
        kept.append((i, step))  # what per-step points must keep until the export takes them
    keep_us = (time.perf_counter() - started) / fold_steps * 1e6
    return {
        "keys": list(KEYS),
        "interval_s": INTERVAL_S,
        "rows": rows,
        "writer_us_per_step": {"stats_fold": fold_us, "per_step_keep": keep_us},
    }


def render(result: dict[str, Any]) -> list[str]:
    lines = [
        "| steps/s | points per export: stats / per step | encode ms per export: stats / "
        "per step | bytes: stats / per step | Prometheus samples/s: stats / per step |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        s, p = row["stats"], row["per_step"]
        lines.append(
            f"| {row['steps_per_s']:g} | {s['points']} / {p['points']} | "
            f"{s['export_ms']:.2f} / {p['export_ms']:.2f} | {s['bytes']} / "
            f"{p['bytes']} | {s['prometheus_samples_per_s']:.1f} / "
            f"{p['prometheus_samples_per_s']:.1f} |"
        )
    writer = result["writer_us_per_step"]
    lines += [
        "",
        f"{len(result['keys'])} keys per step, one export every "
        f"{result['interval_s']:g} s. Record writer per step (off the training thread): "
        f"folding into the windows {writer['stats_fold']:.2f} µs, keeping the step for "
        f"per-step points {writer['per_step_keep']:.2f} µs.",
    ]
    return lines


BENCHMARK = harness.Benchmark(
    name="curve_export",
    title="Every value between two exports: per-interval statistics against per-step points",
    profiles={
        "full": {"repeats": 7},
        "quick": {"repeats": 3},
        "tiny": {"rates": (1, 10), "repeats": 1, "fold_steps": 100},
    },
    run=run,
    render=render,
)
