"""A run's figures, computed one way: ``summary.json`` and ``traintel logs summary`` both fold
step lines with :class:`StepFigures`, the writer as it writes them and the reader as it reads
them, so the two always agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict

from ..stats import RunningStats, Statistics
from ..state import RunState
from .format import InstrumentKind, Metrics, ObservationKind, RunStatus


class LossFigures(TypedDict):
    final: float | None
    best: float | None
    min: float | None
    max: float | None
    mean: float | None
    std: float | None
    count: int
    nonfinite: int


class Throughput(TypedDict):
    steps_per_s: float | None
    samples_per_s: float | None
    tokens_per_s: float | None


class StepTime(TypedDict):
    mean_s: float | None
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    data_wait_fraction: float | None


class StepFigures:
    """Steps, samples, tokens, loss, throughput and step times of one rank, folded step by step.

    ``percentiles`` keeps a bounded reservoir of step times for p50/p95/p99 (summary.json, the
    report); without it a step costs a few additions, which matters when ``traintel logs``
    reads a record of millions of lines. Values a record cannot hold as numbers (non-finite
    ones are text) are counted apart or left out, so a foreign or torn record never raises.
    """

    __slots__ = ("steps", "samples", "tokens", "first_ts", "last_ts", "loss", "nonfinite_loss",
                 "step_time", "data_wait")

    def __init__(self, percentiles: bool = True) -> None:
        self.steps = 0
        self.samples = 0
        self.tokens = 0
        #: when the first step started (its own time counts as training) and the last ended
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self.loss = RunningStats(reservoir=0)
        self.nonfinite_loss = 0
        self.step_time = RunningStats() if percentiles else RunningStats(reservoir=0)
        self.data_wait = 0.0

    def add(self, ts: float, step_s: float | None, data_wait_s: float | None,
            metrics: Metrics | None) -> None:
        self.steps += 1
        if self.first_ts is None:
            self.first_ts = ts - (step_s or 0.0)
        self.last_ts = ts
        if step_s is not None:
            self.step_time.add(step_s)
            if data_wait_s is not None:
                self.data_wait += data_wait_s
        if not metrics:
            return
        loss = metrics.get("loss")
        if type(loss) is float or type(loss) is int:
            self.loss.add(loss)
        elif type(loss) is str:  # NaN and infinities are written as text
            self.nonfinite_loss += 1
        samples = metrics.get("samples")
        if type(samples) is int or type(samples) is float:
            self.samples += int(samples)
        tokens = metrics.get("tokens")
        if type(tokens) is int or type(tokens) is float:
            self.tokens += int(tokens)

    def active_s(self) -> float:
        """Seconds from the start of the first step to the end of the last."""
        if self.first_ts is None or self.last_ts is None:
            return 0.0
        return self.last_ts - self.first_ts

    def per_second(self, count: float) -> float | None:
        active = self.active_s()
        return count / active if active > 0 else None

    def loss_figures(self) -> LossFigures:
        loss = self.loss
        counted = loss.count > 0
        return {"final": loss.last, "best": loss.min if counted else None,
                "min": loss.min if counted else None, "max": loss.max if counted else None,
                "mean": loss.mean, "std": loss.std, "count": loss.count,
                "nonfinite": self.nonfinite_loss}

    def throughput(self) -> Throughput:
        return {"steps_per_s": self.per_second(self.steps),
                "samples_per_s": self.per_second(self.samples),
                "tokens_per_s": self.per_second(self.tokens)}

    def step_times(self) -> StepTime:
        times = self.step_time
        quantiles = times.quantiles() if times.count else {}
        return {"mean_s": times.mean, "p50_s": quantiles.get(50), "p95_s": quantiles.get(95),
                "p99_s": quantiles.get(99),
                "data_wait_fraction": self.data_wait / times.total if times.total else None}


class EvalFigures(TypedDict):
    last: float
    best: float | None


class ErrorCounts(TypedDict):
    total: int
    by_type: dict[str, int]


class RecordHealth(TypedDict):
    lines: int
    dropped: int


class ExportFigures(TypedDict):
    """Failed OTLP exports by signal, and the last reason (None: export off or all went out)."""

    failures: dict[str, int]
    last_error: str | None


class InstrumentFigures(Statistics):
    """One custom instrument: histograms, timers and operations with their statistics, counters
    by their total, gauges by their last value."""

    kind: InstrumentKind


class RunSummary(TypedDict):
    """summary.json (docs/record-format.md)."""

    run: str
    project: str
    name: str
    rank: int
    world_size: int
    status: RunStatus
    start_ts: float
    end_ts: float
    duration_s: float
    steps: int
    epochs: int
    samples: int
    tokens: int
    loss: LossFigures
    eval: dict[str, EvalFigures]
    throughput: Throughput
    step_time: StepTime
    errors: ErrorCounts
    instruments: dict[str, InstrumentFigures]
    record: RecordHealth
    export: ExportFigures
    config_hash: str


class RunAbout(TypedDict):
    """What summary.json says about the run itself."""

    run: str
    project: str
    name: str
    rank: int
    world_size: int
    config_hash: str


def build_summary(about: RunAbout, state: RunState, figures: StepFigures, lines: int,
                  instruments: list[tuple[str, InstrumentFigures]], end_ts: float) -> RunSummary:
    """summary.json from the figures the record writer folded line by line, so that they equal
    what a reader recomputes from events.jsonl; evaluations and errors from the run state."""
    errors_by_type: dict[str, int] = {}
    for (error_type, _severity), count in state.errors.items():
        errors_by_type[error_type] = errors_by_type.get(error_type, 0) + count
    evals: dict[str, EvalFigures] = {name: {"last": last, "best": state.eval_best.get(name)}
                                     for name, last in state.eval_latest.items()}
    return {
        "run": about["run"], "project": about["project"], "name": about["name"],
        "rank": about["rank"], "world_size": about["world_size"], "status": state.status,
        "start_ts": state.start_ts, "end_ts": end_ts, "duration_s": end_ts - state.start_ts,
        "steps": figures.steps, "epochs": state.epoch + 1 if figures.steps else 0,
        "samples": figures.samples, "tokens": figures.tokens, "loss": figures.loss_figures(),
        "eval": evals, "throughput": figures.throughput(), "step_time": figures.step_times(),
        "errors": {"total": sum(errors_by_type.values()), "by_type": errors_by_type},
        "instruments": dict(instruments),
        "record": {"lines": lines, "dropped": state.dropped},
        "export": export_figures(state),
        "config_hash": about["config_hash"],
    }


def instrument_summaries(observations: Mapping[tuple[ObservationKind, str], RunningStats],
                         counters: Mapping[str, float],
                         gauges: Mapping[str, float]) -> list[tuple[str, InstrumentFigures]]:
    """Every custom instrument by name, summarised once for both the record's ``instrument``
    lines and summary.json: histograms, timers and operations from the writer's observations
    (p50/p95/p99), counters by their total, gauges by their last value."""
    entries: list[tuple[str, InstrumentFigures]] = [
        (name, {"kind": kind, **stats.summary()}) for (kind, name), stats in observations.items()]
    entries += [(name, {"kind": "counter", "total": value}) for name, value in counters.items()]
    entries += [(name, {"kind": "gauge", "last": value}) for name, value in gauges.items()]
    return entries


def export_figures(state: RunState) -> ExportFigures:
    """The run's export failures as summary.json and ``/status`` say them."""
    return {"failures": dict(state.export_failures), "last_error": state.export_error}
