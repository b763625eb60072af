"""Memory: resident set growth over many steps while the collector is unreachable.

A child process starts a run exporting to a closed port (metrics and spans every second, so the
export path retries and its queues fill), logs ``warmup`` steps, lets the record writer drain,
reads RSS, logs ``steps`` more (RSS read every 1000 steps for the peak), then waits until the
record writer has caught up (its queue empty; at least ``settle_s``) and reads RSS again.
Three variants, each in its own process:

- ``tight``: defaults (a span every 100 steps), as fast as the loop goes: steps come faster
  than the writer turns them into lines, so the record queue fills to its high-water mark and
  the loop waits for the writer from there (``traintel.record.queue``);
- ``tight_span_every_step``: a span every step, so the span queue is full all the time;
- ``paced_1khz``: defaults, 1 ms sleep between steps (a fast but real training loop);
- ``control``: the tight loop without traintel (the same 8 values made each step): what the
  interpreter itself grows by, so that traintel's share is the difference (target: under
  ``OVER_CONTROL_MB`` for the tight loop over 100,000 steps).
"""

from __future__ import annotations

import itertools
import tempfile
import time
from typing import Any

from benchmarks import harness

TARGET_MB = 50.0
OVER_CONTROL_MB = 32.0
EXPORT_INTERVAL_MS = 1000
MB = 1024 * 1024
#: variant -> (step_span_every, sleep between steps in seconds)
VARIANTS = {
    "tight": (100, 0.0),
    "tight_span_every_step": (1, 0.0),
    "paced_1khz": (100, 0.001),
    "control": (0, 0.0),
}


def grow(
    steps: int, warmup: int, settle_s: float, step_span_every: int, pace_s: float
) -> dict[str, Any]:
    import psutil

    rss = psutil.Process().memory_info
    if not step_span_every:
        return _control(steps, warmup, settle_s, rss)
    with tempfile.TemporaryDirectory(prefix="traintel-bench-") as tmp:
        run = harness.traintel_run(tmp, otlp=True, step_span_every=step_span_every)
        batches = run.track(itertools.count())
        log = run.log
        for i in range(warmup):
            next(batches)
            log(**harness.step_values(i))
        time.sleep(settle_s)
        before = peak = rss().rss
        started = time.perf_counter()
        for i in range(steps):
            next(batches)
            log(**harness.step_values(i))
            if i % 1000 == 0:
                peak = max(peak, rss().rss)
            if pace_s:
                time.sleep(pace_s)
        loop_s = time.perf_counter() - started
        time.sleep(settle_s)
        while run.state.queue_depth and time.perf_counter() - started < loop_s + 120:
            time.sleep(0.5)
        caught_up_s = time.perf_counter() - started - loop_s
        after = rss().rss
        peak = max(peak, after)
        queued, dropped = run.state.queue_depth, run.state.dropped
        run.finish()
    return {
        "rss_before_mb": before / MB,
        "rss_after_mb": after / MB,
        "rss_peak_mb": peak / MB,
        "growth_mb": (after - before) / MB,
        "peak_growth_mb": (peak - before) / MB,
        "loop_s": loop_s,
        "writer_caught_up_s": caught_up_s,
        "record_queue_after": queued,
        "record_dropped": dropped,
    }


def _control(steps: int, warmup: int, settle_s: float, rss: Any) -> dict[str, Any]:
    """The same loop and values without traintel."""
    kept = None
    for i in range(warmup):
        kept = harness.step_values(i)
    time.sleep(settle_s)
    before = peak = rss().rss
    started = time.perf_counter()
    for i in range(steps):
        kept = harness.step_values(i)
        if i % 1000 == 0:
            peak = max(peak, rss().rss)
    loop_s = time.perf_counter() - started
    time.sleep(settle_s)
    after = rss().rss
    del kept
    return {
        "rss_before_mb": before / MB,
        "rss_after_mb": after / MB,
        "rss_peak_mb": max(peak, after) / MB,
        "growth_mb": (after - before) / MB,
        "peak_growth_mb": (max(peak, after) - before) / MB,
        "loop_s": loop_s,
        "writer_caught_up_s": 0.0,
        "record_queue_after": 0,
        "record_dropped": 0,
    }


def run(
    steps: int, warmup: int = 1000, settle_s: float = 3.0, variants: list[str] | None = None
) -> dict[str, Any]:
    table = {}
    with harness.collector("unreachable") as (url, behind):
        for name in variants or VARIANTS:
            span_every, pace_s = VARIANTS[name]
            out = harness.in_child(
                "benchmarks.memory:grow",
                env=harness.otlp_env(url, EXPORT_INTERVAL_MS),
                steps=steps,
                warmup=warmup,
                settle_s=settle_s,
                step_span_every=span_every,
                pace_s=pace_s,
            )
            table[name] = {key: value for key, value in out.items() if key != "exited_at"}
    return {
        "steps": steps,
        "collector": behind,
        "export_interval_ms": EXPORT_INTERVAL_MS,
        "variants": table,
        "targets": [
            harness.target(
                f"{name}: RSS growth over {steps} steps < {TARGET_MB:g} MB",
                row["growth_mb"],
                row["growth_mb"] < TARGET_MB,
            )
            for name, row in table.items()
            if name != "control"
        ]
        + [
            harness.target(
                f"{name}: RSS growth over the control's < {OVER_CONTROL_MB:g} MB",
                row["growth_mb"] - table["control"]["growth_mb"],
                row["growth_mb"] - table["control"]["growth_mb"] < OVER_CONTROL_MB,
            )
            for name, row in table.items()
            if name.startswith("tight") and "control" in table
        ],
    }


def render(result: dict[str, Any]) -> list[str]:
    lines = [
        "| variant | RSS before | after | growth | peak growth | loop | writer caught up after |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in result["variants"].items():
        lines.append(
            f"| {name} | {row['rss_before_mb']:.1f} MB | {row['rss_after_mb']:.1f} MB | "
            f"{row['growth_mb']:+.1f} MB | {row['peak_growth_mb']:+.1f} MB | "
            f"{row['loop_s']:.1f} s | {row['writer_caught_up_s']:.1f} s |"
        )
    return lines + [
        "",
        f"{result['steps']} steps per variant; OTLP to {result['collector']}, "
        f"export every {result['export_interval_ms']} ms.",
    ]


BENCHMARK = harness.Benchmark(
    name="memory",
    title="Memory growth with the collector unreachable",
    profiles={
        "full": {"steps": 100_000},
        "quick": {"steps": 30_000},
        "tiny": {"steps": 200, "warmup": 10, "settle_s": 0.1, "variants": ["tight", "control"]},
    },
    run=run,
    render=render,
)
