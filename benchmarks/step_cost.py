"""Per-step recording cost: traintel against what users would pick instead, in one process.

Every case records the same 8 metrics per step (``harness.step_values``) with project/run/rank
labels where the library has labels. All cases are set up first and stay alive together; rounds
are interleaved (every case once per round, order rotated) and every step is timed on its own
with ``perf_counter_ns``. Two modes: a tight loop, and a paced loop that sleeps 1 ms
(``time.sleep``, the GIL released as during GPU work) between steps, which is closer to training:
caches go cold and background threads get their turn.

The traintel case is a run with everything on (OTLP export to a closed port, step spans every
100 steps, samplers, the local record); a step is ``next()`` on ``run.track`` plus ``run.log``.
The OTel SDK cases record into an in-memory reader / a discarding span exporter, so only the
recording call is measured, not export. Ratios are against prometheus-client with pre-bound
children, the cheapest way to put a number where something can read it.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import harness

LABELS = {"project": "bench", "run": "r1", "rank": "0"}
BASELINE = "prometheus_prebound"
TRAINTEL = "traintel"
MODES = ("tight", "paced")

Step = Callable[[dict[str, Any]], None]


@dataclass
class Case:
    title: str
    #: builds the case in a directory of its own; registers its clean-up on the stack
    setup: Callable[[ExitStack, Path], Step]
    #: an optional package the case needs (skipped without it)
    needs: str | None = None


def floor(stack: ExitStack, directory: Path) -> Step:
    return lambda values: None


def traintel_case(stack: ExitStack, directory: Path) -> Step:
    url, _ = stack.enter_context(harness.collector("unreachable"))
    with harness.environment(OTEL_EXPORTER_OTLP_ENDPOINT=url):
        run = harness.traintel_run(directory, otlp=True)
    stack.callback(run.finish)
    batches = run.track(itertools.count())
    log = run.log

    def step(values: dict[str, Any]) -> None:
        next(batches)
        log(**values)

    return step


def _prometheus_gauges() -> list:
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    return [
        Gauge(f"bench_{key}", key, list(LABELS), registry=registry)
        for key in harness.step_values(0)
    ]


def prometheus_prebound(stack: ExitStack, directory: Path) -> Step:
    children = [gauge.labels(*LABELS.values()) for gauge in _prometheus_gauges()]

    def step(values: dict[str, Any]) -> None:
        for child, value in zip(children, values.values()):
            child.set(value)

    return step


def prometheus_labels(stack: ExitStack, directory: Path) -> Step:
    gauges = _prometheus_gauges()
    project, run, rank = LABELS.values()

    def step(values: dict[str, Any]) -> None:
        for gauge, value in zip(gauges, values.values()):
            gauge.labels(project, run, rank).set(value)

    return step


def otel_gauges(stack: ExitStack, directory: Path) -> Step:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    provider = MeterProvider(metric_readers=[InMemoryMetricReader()], shutdown_on_exit=False)
    stack.callback(provider.shutdown)
    meter = provider.get_meter("bench")
    gauges = [meter.create_gauge(f"bench_{key}") for key in harness.step_values(0)]

    def step(values: dict[str, Any]) -> None:
        for gauge, value in zip(gauges, values.values()):
            gauge.set(value, LABELS)

    return step


def otel_span(stack: ExitStack, directory: Path) -> Step:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Discard(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    stack.callback(provider.shutdown)
    tracer = provider.get_tracer("bench")
    counter = itertools.count()

    def step(values: dict[str, Any]) -> None:
        tracer.start_span("train_step", attributes={"step": next(counter), "epoch": 0}).end()

    return step


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "ts": record.created,
                "level": record.levelname,
                "message": record.getMessage(),
                **LABELS,
                **record.metrics,
            }
        )


def logging_json(stack: ExitStack, directory: Path) -> Step:
    directory.mkdir(parents=True)
    handler = logging.FileHandler(directory / "steps.jsonl")
    handler.setFormatter(_JsonFormatter())
    stack.callback(handler.close)
    logger = logging.getLogger("bench.steps")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    info = logger.info
    return lambda values: info("step", extra={"metrics": values})


def wandb_offline(stack: ExitStack, directory: Path) -> Step:
    import wandb

    directory.mkdir(parents=True)
    with harness.environment(WANDB_SILENT="true"):
        run = wandb.init(
            mode="offline",
            dir=str(directory),
            project="bench",
            settings=wandb.Settings(console="off"),
        )
    stack.callback(run.finish)
    return run.log


def mlflow_async(stack: ExitStack, directory: Path) -> Step:
    # MLflow 3 refuses its file store unless asked; the anchors measured the file store
    with harness.environment(MLFLOW_ALLOW_FILE_STORE="true"):
        import mlflow

        mlflow.set_tracking_uri(directory.absolute().as_uri())
        mlflow.set_experiment("bench")
        mlflow.start_run()
    stack.callback(mlflow.end_run)
    log_metrics = mlflow.log_metrics
    counter = itertools.count()
    return lambda values: log_metrics(values, step=next(counter), synchronous=False)


def tensorboard(stack: ExitStack, directory: Path) -> Step:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(directory))
    stack.callback(writer.close)
    add_scalar = writer.add_scalar
    counter = itertools.count()

    def step(values: dict[str, Any]) -> None:
        i = next(counter)
        for key, value in values.items():
            add_scalar(key, value, i)

    return step


CASES: dict[str, Case] = {
    "floor": Case("empty step (timer and call floor)", floor),
    TRAINTEL: Case(
        "**traintel** `run.log` (8 metrics) in `run.track`, everything on", traintel_case
    ),
    BASELINE: Case("prometheus-client Gauge, children pre-bound, `.set` x8", prometheus_prebound),
    "prometheus_labels": Case(
        "prometheus-client `.labels(...).set` x8 every call", prometheus_labels
    ),
    "otel_gauges": Case("OTel SDK synchronous Gauge `.set` x8 (attributes each call)", otel_gauges),
    "otel_span": Case("one OTel span start/end (2 attributes), batch processor", otel_span),
    "logging_json": Case("stdlib logging + JSON formatter to a file", logging_json),
    "wandb": Case("wandb `run.log` offline", wandb_offline, needs="wandb"),
    "mlflow": Case(
        "mlflow `log_metrics`, file store, `synchronous=False`", mlflow_async, needs="mlflow"
    ),
    "tensorboard": Case(
        "TensorBoard `add_scalar` x8 (torch SummaryWriter)", tensorboard, needs="tensorboard"
    ),
}


def time_steps(
    steps: dict[str, Step], values: list[dict[str, Any]], rounds: int, warmup: int, pace_s: float
) -> dict[str, list[int]]:
    """Nanoseconds of each step of each case, over interleaved rounds."""
    for step in steps.values():
        for v in values[:warmup]:
            step(v)
    samples: dict[str, list[int]] = {name: [] for name in steps}
    clock, sleep = time.perf_counter_ns, time.sleep
    for _, name in harness.interleaved(steps, rounds):
        step, out = steps[name], samples[name]
        for v in values:
            start = clock()
            step(v)
            out.append(clock() - start)
            if pace_s:
                sleep(pace_s)
    return samples


def summarize(samples: dict[str, list[int]], rounds: int) -> dict[str, dict[str, Any]]:
    table = {}
    for name, ns in samples.items():
        per_round = len(ns) // rounds
        table[name] = {
            "median_us": harness.quantile(ns, 0.5) / 1e3,
            "p99_us": harness.quantile(ns, 0.99) / 1e3,
            "round_medians_us": [
                harness.quantile(ns[r * per_round : (r + 1) * per_round], 0.5) / 1e3
                for r in range(rounds)
            ],
            "steps": len(ns),
        }
    base = table.get(BASELINE)
    for row in table.values():
        if base:
            row["x_baseline_median"] = row["median_us"] / base["median_us"]
            row["x_baseline_p99"] = row["p99_us"] / base["p99_us"]
    return table


def run(
    tight_rounds: int,
    tight_steps: int,
    paced_rounds: int,
    paced_steps: int,
    warmup: int,
    pace_s: float = 0.001,
    cases: list[str] | None = None,
) -> dict[str, Any]:
    names = cases or list(CASES)
    skipped = {
        name: f"{CASES[name].needs} is not installed (it comes with the bench extra: `make bench`)"
        for name in names
        if CASES[name].needs and importlib.util.find_spec(CASES[name].needs) is None
    }
    plan = {"tight": (tight_rounds, tight_steps, 0.0), "paced": (paced_rounds, paced_steps, pace_s)}
    values = [harness.step_values(i) for i in range(max(tight_steps, paced_steps, warmup))]
    modes = {}
    with tempfile.TemporaryDirectory(prefix="traintel-bench-") as tmp, ExitStack() as stack:
        steps = {
            name: CASES[name].setup(stack, Path(tmp) / name)
            for name in names
            if name not in skipped
        }
        for mode, (rounds, n, pace) in plan.items():
            modes[mode] = summarize(time_steps(steps, values[:n], rounds, warmup, pace), rounds)
    return {
        "titles": {name: CASES[name].title for name in names},
        "plan": {
            mode: {"rounds": r, "steps_per_round": n, "pace_s": p}
            for mode, (r, n, p) in plan.items()
        },
        "pacing": "time.sleep between steps (outside the timed region)",
        "baseline": BASELINE,
        "modes": modes,
        "skipped": skipped,
        "targets": targets(modes),
    }


def targets(modes: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    out = []
    for mode, table in modes.items():
        ours = table.get(TRAINTEL)
        if not ours:
            continue
        if BASELINE in table:
            ratio = ours["x_baseline_median"]
            out.append(
                harness.target(
                    f"{mode}: traintel <= 1.5x prometheus-client pre-bound (median)",
                    ratio,
                    ratio <= 1.5,
                )
            )
        for other, factor in (("otel_gauges", 10), ("wandb", 50)):
            if other in table:
                ratio = table[other]["median_us"] / ours["median_us"]
                out.append(
                    harness.target(
                        f"{mode}: traintel >= {factor}x cheaper than {other} (median)",
                        ratio,
                        ratio >= factor,
                    )
                )
    return out


def render(result: dict[str, Any]) -> list[str]:
    tight, paced = result["modes"]["tight"], result["modes"]["paced"]
    lines = [
        "| method | tight median | tight p99 | x prom | paced median | paced p99 | x prom |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, title in result["titles"].items():
        if name not in tight:
            continue
        cells = [title]
        for row in (tight[name], paced[name]):
            cells += [
                _us(row["median_us"]),
                _us(row["p99_us"]),
                f"{row.get('x_baseline_median', float('nan')):.2f}x",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    plan = result["plan"]
    lines += [
        "",
        f"Tight: {plan['tight']['rounds']} rounds x {plan['tight']['steps_per_round']} "
        f"steps; paced: {plan['paced']['rounds']} rounds x "
        f"{plan['paced']['steps_per_round']} steps, {result['pacing']} "
        f"({plan['paced']['pace_s'] * 1e3:g} ms). x prom: median (per-step) over the "
        "prometheus-client pre-bound median.",
    ]
    lines += [f"Skipped: {name}: {why}" for name, why in result["skipped"].items()]
    return lines


def _us(value: float) -> str:
    return f"{value:.1f} µs" if value < 1000 else f"{value / 1e3:.2f} ms"


BENCHMARK = harness.Benchmark(
    name="step_cost",
    title="Per-step recording cost (8 metrics), side by side in one process",
    profiles={
        "full": {
            "tight_rounds": 10,
            "tight_steps": 2000,
            "paced_rounds": 5,
            "paced_steps": 600,
            "warmup": 300,
        },
        "quick": {
            "tight_rounds": 4,
            "tight_steps": 500,
            "paced_rounds": 3,
            "paced_steps": 200,
            "warmup": 100,
        },
        "tiny": {
            "tight_rounds": 1,
            "tight_steps": 20,
            "paced_rounds": 1,
            "paced_steps": 5,
            "warmup": 2,
        },
    },
    run=run,
    render=render,
)
