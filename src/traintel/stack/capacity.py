"""How much telemetry a run produces, computed from the metric catalog: for sizing the stack.

Every series carries project/run/rank, so series grow linearly with ranks; within a rank they
grow with the GPUs it samples and the distinct names the code uses (metric keys, eval metrics,
instruments, span names, event names, error kinds). Histograms count their bucket, sum and count
series. ``docs/scaling.md`` tabulates these functions (a test keeps the table equal to them).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from traintel.core.catalog import DEFAULT_HISTOGRAM_BUCKETS, DURATION_BUCKETS, METRICS, Metric
from traintel.record.format import STATUSES
from traintel.run.progress import MILESTONES
from traintel.samplers.gpu import THROTTLE_REASONS

#: log records every rank sends whatever it does: "recording to ..." at start, run_end at finish
LOGS_PER_RANK = 2
#: run.log keys with a catalog metric of their own that a training loop logs (loss, lr,
#: grad_norm): each also has its traintel_logged_* series
LOGGED_BUILTIN_KEYS = tuple(metric.keys[0] for metric in METRICS if metric.keys)
#: span names every rank uses: training_run, epoch, train_step
BUILTIN_SPANS = 3
#: duration buckets of the collector's spanmetrics connector (otel-collector/config.yaml)
SPANMETRICS_BUCKETS = 16


@dataclass(frozen=True)
class Workload:
    """What one run does, in the quantities that decide its series count."""

    ranks: int = 1
    #: GPUs each rank samples (1 with one GPU per rank; all of the node's with all_gpus=True)
    gpus_per_rank: int = 0
    #: distinct run.log keys other than loss, lr, grad_norm, samples and tokens
    user_metrics: int = 0
    eval_metrics: int = 0
    counters: int = 0
    gauges: int = 0
    histograms: int = 0
    timers: int = 0
    #: distinct run.span/run.operation names
    operations: int = 0
    #: distinct event names, built-in ones included (milestone, eval, best_eval, checkpoint, ...)
    events: int = 0
    #: distinct (error type, severity) pairs seen
    error_kinds: int = 0
    #: the run exports over OTLP (an export-failure counter per signal, zero while all goes out)
    otlp: bool = True
    #: the psutil sampler runs (sample_interval > 0)
    system: bool = True
    #: distinct refusal reasons seen (``traintel_refused_total``: none in a healthy run)
    refusal_reasons: int = 0
    #: keys written into ``run.summary`` (``traintel_summary_value``)
    summary_keys: int = 0


def _label_values(metric: Metric, label: str, w: Workload) -> int:
    """How many values ``label`` takes on ``metric`` in one rank (labels that only describe
    another label, such as gpu_uuid for gpu, count 1)."""
    # the traintel_logged_* series: every run.log key, loss, lr and grad_norm included
    logged = w.user_metrics + len(LOGGED_BUILTIN_KEYS)
    by_metric = {
        "traintel_metric": w.user_metrics,
        "traintel_eval_value": w.eval_metrics,
        "traintel_logged_min": logged,
        "traintel_logged_max": logged,
        "traintel_logged_values_total": logged,
        "traintel_logged_nonfinite_total": logged,
        "traintel_eval_best": w.eval_metrics,
        "traintel_user_total": w.counters,
        "traintel_user_value": w.gauges,
        "traintel_user_observations": w.histograms,
        "traintel_user_timer_seconds": w.timers,
    }
    if label == "metric":
        return by_metric[metric.name]
    if metric.name == "traintel_refused_total":  # its reason is a refusal's, not a GPU's
        return w.refusal_reasons
    if metric.name == "traintel_summary_value":
        return w.summary_keys
    return {
        "status": len(STATUSES),
        "gpu": w.gpus_per_rank,
        "reason": len(THROTTLE_REASONS) + 1,  # + "other"
        "direction": 2,
        "device": 1 if w.gpus_per_rank else 0,
        "operation": w.operations,
        "event": w.events,
        "error_type": w.error_kinds,
        "signal": 3 if w.otlp else 0,
    }.get(label, 1)


def series_by_metric(w: Workload) -> dict[str, int]:
    """Series per catalog metric for one rank (zero for metrics this workload never emits)."""
    counts = {}
    for metric in METRICS:
        if (
            metric.group in ("gpu", "cuda")
            and not w.gpus_per_rank
            or metric.group == "system"
            and not w.system
        ):
            counts[metric.name] = 0
            continue
        n = 1
        for label in metric.labels:
            n *= _label_values(metric, label, w)
        if metric.kind == "histogram":  # user histograms: the default buckets (their own vary)
            bounds = (
                DEFAULT_HISTOGRAM_BUCKETS
                if metric.name == "traintel_user_observations"
                else DURATION_BUCKETS
            )
            n *= len(bounds) + 1 + 2  # buckets, +Inf, _sum, _count
        counts[metric.name] = n
    return counts


def series_per_run(w: Workload) -> int:
    """Active series one run keeps in Prometheus (an upper bound: some appear only once their
    value is known, e.g. the ETA)."""
    return w.ranks * sum(series_by_metric(w).values())


def spanmetrics_series_per_run(w: Workload) -> int:
    """Series the collector's spanmetrics connector derives from the run's spans: per rank and
    span name (status unset), a calls counter and a duration histogram."""
    per_name = 1 + SPANMETRICS_BUCKETS + 1 + 2  # calls; buckets, +Inf, _sum, _count
    return w.ranks * (BUILTIN_SPANS + w.operations) * per_name


def log_records_per_run(
    w: Workload, evals: int = 0, checkpoints: int = 0, milestones: bool = True, other: int = 0
) -> int:
    """Log records the run sends to Loki: each rank's start and end lines and milestones, plus
    evaluations and checkpoints, which the integrations record on rank 0 only, plus ``other``
    (user events, errors, log lines). Step values never become log records."""
    per_rank = LOGS_PER_RANK + (len(MILESTONES) if milestones else 0)
    return w.ranks * per_rank + evals + checkpoints + other


def spans_per_run(
    w: Workload, steps: int, epochs: int = 1, step_span_every: int = 100, operation_calls: int = 0
) -> int:
    """Spans the run sends to Tempo: per rank one run span, one per epoch, one every
    ``step_span_every`` steps and one per ``run.span`` call."""
    sampled = steps // step_span_every if step_span_every else 0
    return w.ranks * (1 + epochs + sampled + operation_calls)


def samples_per_second(w: Workload, export_interval_s: float = 60.0) -> float:
    """Samples per second the run adds to Prometheus (one per series per export)."""
    return series_per_run(w) / export_interval_s


#: the workloads docs/scaling.md tabulates: (description, workload)
TABLE: tuple[tuple[str, Workload], ...] = (
    (
        "laptop, CPU, 1 process",
        Workload(user_metrics=4, eval_metrics=2, operations=2, events=5, error_kinds=1),
    ),
    (
        "1 node, 1 GPU",
        Workload(
            gpus_per_rank=1, user_metrics=4, eval_metrics=2, operations=2, events=5, error_kinds=1
        ),
    ),
    (
        "1 node, 8 GPUs (8 ranks)",
        Workload(
            ranks=8,
            gpus_per_rank=1,
            user_metrics=4,
            eval_metrics=2,
            operations=2,
            events=5,
            error_kinds=1,
        ),
    ),
    (
        "8 nodes, 64 GPUs",
        Workload(
            ranks=64,
            gpus_per_rank=1,
            user_metrics=4,
            eval_metrics=2,
            operations=2,
            events=5,
            error_kinds=1,
        ),
    ),
    (
        "64 nodes, 512 GPUs",
        Workload(
            ranks=512,
            gpus_per_rank=1,
            user_metrics=4,
            eval_metrics=2,
            operations=2,
            events=5,
            error_kinds=1,
        ),
    ),
    (
        "64 nodes, 512 GPUs, 50 user metrics",
        Workload(
            ranks=512,
            gpus_per_rank=1,
            user_metrics=50,
            eval_metrics=10,
            operations=10,
            events=10,
            error_kinds=3,
        ),
    ),
)


def render_table(
    steps: int = 100_000, epochs: int = 10, evals: int = 100, checkpoints: int = 20
) -> str:
    """The markdown table in docs/scaling.md."""
    lines = [
        "| workload | ranks | series per rank | series per run | + spanmetrics series "
        "| samples/s at 60 s | samples/s at 15 s | log records per run | spans per run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for description, w in TABLE:
        per_rank = sum(series_by_metric(w).values())
        lines.append(
            f"| {description} | {w.ranks} | {per_rank:,} | {series_per_run(w):,} "
            f"| {spanmetrics_series_per_run(w):,} | {samples_per_second(w, 60):,.0f} "
            f"| {samples_per_second(w, 15):,.0f} "
            f"| {log_records_per_run(w, evals, checkpoints):,} "
            f"| {spans_per_run(w, steps, epochs):,} |"
        )
    return "\n".join(lines)


#: recording-rule series per rank that a sizing adds (prometheus/rules/recording.yml)
RECORDING_SERIES_PER_RANK = 11
#: the job sizes docs/scaling.md sizes: 1,000 and 10,000 GPUs, one rank per GPU
SIZED_GPUS = (1_000, 10_000)


def sizing_series(gpus: int, export_interval_s: float = 15.0) -> tuple[int, int, int, float]:
    """Active series of a job of ``gpus`` ranks of the table's standard workload (catalog, span
    metrics, recording rules) and its samples per second at ``export_interval_s``."""
    workload = replace(dict(TABLE)["64 nodes, 512 GPUs"], ranks=gpus)
    catalog = series_per_run(workload)
    spans = spanmetrics_series_per_run(workload)
    rules = RECORDING_SERIES_PER_RANK * gpus
    return catalog, spans, rules, (catalog + spans + rules) / export_interval_s


def render_sizing_rows() -> str:
    """The two derived rows of docs/scaling.md's sizing table (series and samples/s), rounded as
    the table shows them: to 1,000 series and 100 samples/s."""

    def rounded(n: float, to: int) -> str:
        return f"{int(round(n / to) * to):,}"

    series, samples = [], []
    for gpus in SIZED_GPUS:
        catalog, spans, rules, per_second = sizing_series(gpus)
        series.append(
            f"{rounded(catalog, 1000)} + {rounded(spans, 1000)} + {rounded(rules, 1000)}"
            f" = {rounded(catalog + spans + rules, 1000)}"
        )
        samples.append(rounded(per_second, 100))
    return (
        f"| active series (catalog + span metrics + recording rules) | {series[0]} | "
        f"{series[1]} |\n| samples/s | {samples[0]} | {samples[1]} |"
    )
