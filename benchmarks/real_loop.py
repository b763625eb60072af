"""Real-loop overhead: a small CPU model trained with and without traintel, interleaved.

An MLP (256-512-512-10, SGD, gradient clipping, ``torch.set_num_threads(1)``) whose batch size is
calibrated so that a step takes about ``step_ms`` on this machine now. Each round trains
``steps`` steps without traintel and ``steps`` steps with a fresh run that has everything on:
step spans (every 100 steps), samplers at the default interval, the local record, OTLP export to
a collector (metrics and spans every 5 s), and /metrics served and scraped every 5 s from another
process. The overhead of a round is (traintel - bare) / bare of the mean step time; the result is
the median and IQR of those paired differences. Run start and finish are outside the timing.

Three clocks time each round: wall time (what training feels, but on a shared machine mostly
the other tenants' load), the CPU time of the whole process (every thread: training plus
traintel's writer, exporters, samplers and server; an upper bound on the slowdown since
background threads may run on another core), and the CPU time of the training thread alone.
Other tenants move CPU times too (shared caches and cores), so a fourth figure accounts for the
direct cost instead of differencing: the wall time of the loop outside the model step (``next()``
on the batches and ``run.log``) plus the CPU of the process's other threads, over the bare step's
training-thread CPU. It misses indirect costs (GIL waits, caches), which the differences catch.
"""

from __future__ import annotations

import importlib.util
import itertools
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks import harness

EXPORT_INTERVAL_MS = 5000
SCRAPE_EVERY_S = 5.0
TARGET_PCT = 1.0
MODES = ("bare", "traintel")
CLOCKS = {
    "wall": time.perf_counter,
    "cpu_process": time.process_time,
    "cpu_main_thread": time.thread_time,
}


def trainer(batch: int) -> Callable[[], tuple[float, float]]:
    """One training step of a fresh model on a fixed synthetic batch: (loss, grad norm)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(batch, 256), torch.randint(0, 10, (batch,))

    def step() -> tuple[float, float]:
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        norm = nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.item(), norm.item()

    return step


def calibrate(step_ms: float) -> int:
    """The batch size whose step takes about ``step_ms`` now (two proportional corrections)."""
    batch = 64
    for _ in range(2):
        step = trainer(batch)
        step()
        start = time.perf_counter()
        for _ in range(10):
            step()
        measured_ms = (time.perf_counter() - start) * 100
        batch = max(1, round(batch * step_ms / measured_ms))
    return batch


def train(
    step: Callable[[], tuple[float, float]], steps: int, batch: int, run=None
) -> dict[str, float]:
    """Mean ms per step on each clock over ``steps`` steps, recorded with ``run`` when given;
    ``outside_step`` is the wall time spent around the model step (batches and recording)."""
    clock = time.perf_counter
    batches = run.track(itertools.count()) if run else itertools.count()
    outside = 0.0
    start = {name: read() for name, read in CLOCKS.items()}
    for _ in range(steps):
        before = clock()
        next(batches)
        middle = clock()
        loss, norm = step()
        after = clock()
        if run:
            run.log(
                loss=loss,
                lr=0.01,
                grad_norm=norm,
                samples=batch,
                tokens=batch * 256,
                accuracy=0.5,
                aux_loss=0.01,
                clip_frac=0.1,
            )
        outside += middle - before + clock() - after
    result = {name: (read() - start[name]) * 1e3 / steps for name, read in CLOCKS.items()}
    return {**result, "outside_step": outside * 1e3 / steps}


def accounted(bare: dict[str, float], ours: dict[str, float]) -> float:
    """Direct cost in % of the bare step: extra time around the step plus other threads' CPU."""

    def others(r: dict[str, float]) -> float:
        return r["cpu_process"] - r["cpu_main_thread"]

    extra = ours["outside_step"] - bare["outside_step"] + others(ours) - others(bare)
    return extra / bare["cpu_main_thread"] * 100


def observed(stack: ExitStack, directory: Path):
    """A run with everything on, its /metrics scraped; finished when ``stack`` closes."""
    has_server = importlib.util.find_spec("traintel.export.server") is not None
    run = harness.traintel_run(directory, otlp=True, http_port=0 if has_server else None)
    stack.callback(run.finish)
    if has_server:
        port = run.server.port
    else:  # stand-in until traintel.export.server exists: the same registry over prometheus-client
        from prometheus_client import start_http_server

        server, _ = start_http_server(0, addr="127.0.0.1", registry=run.registry)
        stack.callback(server.shutdown)
        port = server.server_port
    stack.enter_context(harness.scraper(f"http://127.0.0.1:{port}/metrics", SCRAPE_EVERY_S))
    return run


def run(
    steps: int, rounds: int, step_ms: float = 10.0, warmup: int = 50, collector: str = "healthy"
) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    batch = calibrate(step_ms)
    step = trainer(batch)
    per_step: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    with (
        tempfile.TemporaryDirectory(prefix="traintel-bench-") as tmp,
        harness.collector(collector) as (url, behind),
        harness.environment(**harness.otlp_env(url, EXPORT_INTERVAL_MS)),
    ):

        def session(mode: str, n: int) -> dict[str, float]:
            with ExitStack() as stack:
                run = (
                    observed(stack, Path(tempfile.mkdtemp(dir=tmp))) if mode == "traintel" else None
                )
                return train(step, n, batch, run)

        for mode in MODES:  # first-run costs (imports, allocator) out of the way
            session(mode, warmup)
        for _, mode in harness.interleaved(MODES, rounds):
            per_step[mode].append(session(mode, steps))
    pairs = list(zip(per_step["bare"], per_step["traintel"]))
    overhead = {
        clock: [(ours[clock] - bare[clock]) / bare[clock] * 100 for bare, ours in pairs]
        for clock in CLOCKS
    }
    overhead["accounted"] = [accounted(bare, ours) for bare, ours in pairs]
    summary = {name: harness.spread(values) for name, values in overhead.items()}
    metrics_server = (
        "traintel (http_port=0)"
        if importlib.util.find_spec("traintel.export.server")
        else "stand-in: prometheus_client.start_http_server on run.registry "
        "(traintel.export.server not present)"
    )
    return {
        "batch": batch,
        "steps": steps,
        "rounds": rounds,
        "step_ms_target": step_ms,
        "step_ms": {
            mode: {
                clock: harness.spread(r[clock] for r in each) for clock in [*CLOCKS, "outside_step"]
            }
            for mode, each in per_step.items()
        },
        "overhead_pct_each": overhead,
        "overhead_pct": summary,
        "collector": behind,
        "metrics_server": metrics_server,
        "export_interval_ms": EXPORT_INTERVAL_MS,
        "scrape_every_s": SCRAPE_EVERY_S,
        "targets": [
            harness.target(
                f"overhead < {TARGET_PCT:g} % at a ~{step_ms:g} ms step "
                f"({name}, median of paired rounds)",
                summary[name]["median"],
                summary[name]["median"] < TARGET_PCT,
            )
            for name in ("cpu_process", "accounted")
        ],
    }


def render(result: dict[str, Any]) -> list[str]:
    lines = [
        "| measure | bare, ms/step | traintel, ms/step | overhead, median of paired rounds | IQR |",
        "|---|---|---|---|---|",
    ]
    for name, pct in result["overhead_pct"].items():
        if name in result["step_ms"]["bare"]:
            bare, ours = (f"{result['step_ms'][mode][name]['median']:.3f}" for mode in MODES)
        else:
            bare, ours = "", ""
        lines.append(
            f"| {name} | {bare} | {ours} | {pct['median']:+.2f} % | "
            f"{pct['p25']:+.2f} to {pct['p75']:+.2f} % |"
        )
    outside = result["step_ms"]
    return lines + [
        "",
        f"{result['rounds']} interleaved rounds of {result['steps']} steps "
        f"each, batch {result['batch']}; OTLP to {result['collector']}, export "
        f"every {result['export_interval_ms']} ms; /metrics: "
        f"{result['metrics_server']}, scraped every "
        f"{result['scrape_every_s']:g} s. Around the model step (batches and "
        f"recording): {outside['bare']['outside_step']['median'] * 1e3:.1f} µs "
        f"bare, {outside['traintel']['outside_step']['median'] * 1e3:.1f} µs "
        "with traintel.",
    ]


BENCHMARK = harness.Benchmark(
    name="real_loop",
    title="Overhead on a real (small, CPU) training loop",
    profiles={
        "full": {"steps": 1000, "rounds": 10},
        "quick": {"steps": 300, "rounds": 4},
        "tiny": {"steps": 5, "rounds": 1, "step_ms": 2.0, "warmup": 2, "collector": "sink"},
    },
    run=run,
    render=render,
)
