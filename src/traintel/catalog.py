"""Every metric traintel emits, in one place.

The catalog is the contract between the library, the collector pipeline, the Prometheus rules and
the Grafana dashboards: exporters register instruments from it, the rules and dashboards are
checked against it, and ``docs/metrics.md`` is rendered from it.

Names are Prometheus names (``_total`` for counters, base units as suffixes). The OTel instrument
carries the same name and a UCUM unit chosen so that the collector's Prometheus translation
(which appends a unit suffix and ``_total`` unless already present) leaves the name unchanged.
Where an OpenTelemetry semantic convention exists it is recorded in ``semconv``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]

#: Labels on every series traintel emits.
BASE_LABELS: tuple[str, ...] = ("project", "run", "rank")
#: Labels naming one GPU.
GPU_LABELS: tuple[str, ...] = ("gpu", "gpu_uuid", "gpu_name")

#: Bucket boundaries (seconds) for step and operation durations: 1 ms to 10 min.
DURATION_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
)


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Kind
    unit: str
    description: str
    labels: tuple[str, ...] = ()
    group: str = "training"
    semconv: str | None = None

    @property
    def all_labels(self) -> tuple[str, ...]:
        return BASE_LABELS + self.labels


def _m(name: str, kind: Kind, unit: str, description: str, labels: tuple[str, ...] = (),
       group: str = "training", semconv: str | None = None) -> Metric:
    return Metric(name, kind, unit, description, tuple(labels), group, semconv)


METRICS: tuple[Metric, ...] = (
    # --- run lifecycle and progress ---
    _m("traintel_run_info", "gauge", "", "Always 1; labels describe the run.",
       ("run_name", "host", "world_size"), "run"),
    _m("traintel_run_status", "gauge", "",
       "1 for the run's current status, 0 for the others (a Prometheus state set).",
       ("status",), "run"),
    _m("traintel_run_start_time_seconds", "gauge", "s", "Unix time the run started.", (), "run"),
    _m("traintel_run_progress_ratio", "gauge", "1",
       "Fraction of planned steps done (0-1); absent while the total is unknown.", (), "run"),
    _m("traintel_run_eta_seconds", "gauge", "s", "Estimated seconds until the planned end.", (),
       "run"),
    _m("traintel_run_steps_planned", "gauge", "", "Total steps planned, when known.", (), "run"),
    _m("traintel_epoch", "gauge", "", "Current epoch (0-based).", (), "run"),
    _m("traintel_last_step_timestamp_seconds", "gauge", "s",
       "Unix time of the latest completed step: the stall alert's input.", (), "run"),
    # --- per-step training metrics ---
    _m("traintel_steps_total", "counter", "", "Training steps completed."),
    _m("traintel_samples_total", "counter", "", "Samples processed."),
    _m("traintel_tokens_total", "counter", "", "Tokens processed."),
    _m("traintel_steps_per_second", "gauge", "", "Step rate over the recent window."),
    _m("traintel_samples_per_second", "gauge", "", "Sample throughput over the recent window."),
    _m("traintel_tokens_per_second", "gauge", "", "Token throughput over the recent window."),
    _m("traintel_loss", "gauge", "", "Latest finite training loss."),
    _m("traintel_learning_rate", "gauge", "", "Latest learning rate."),
    _m("traintel_grad_norm", "gauge", "", "Latest global gradient norm."),
    _m("traintel_nonfinite_loss_total", "counter", "",
       "Loss values that were NaN or infinite (kept out of averages)."),
    _m("traintel_step_duration_seconds", "histogram", "s",
       "Wall time of one training step, data wait included."),
    _m("traintel_data_wait_seconds_total", "counter", "s",
       "Time spent waiting for the next batch from the data loader."),
    _m("traintel_compute_seconds_total", "counter", "s",
       "Time spent in the loop body (forward, backward, optimizer)."),
    _m("traintel_metric", "gauge", "", "Latest value of a user metric passed to run.log().",
       ("metric",)),
    # --- evaluation ---
    _m("traintel_eval_value", "gauge", "", "Latest value of an eval metric.", ("metric",), "eval"),
    _m("traintel_eval_best", "gauge", "", "Best value so far of an eval metric.", ("metric",),
       "eval"),
    # --- user instruments (run.counter / run.gauge / run.histogram / run.timer) ---
    _m("traintel_user_counter_total", "counter", "", "A user counter.", ("metric",), "custom"),
    _m("traintel_user_gauge", "gauge", "", "A user gauge.", ("metric",), "custom"),
    _m("traintel_user_histogram", "histogram", "", "A user histogram.", ("metric",), "custom"),
    _m("traintel_user_timer_seconds", "histogram", "s", "A user timer.", ("metric",), "custom"),
    _m("traintel_operation_duration_seconds", "histogram", "s",
       "Duration of a run.operation()/run.span() block.", ("operation",), "custom"),
    # --- events and errors ---
    _m("traintel_events_total", "counter", "", "Structured events (milestones, checkpoints, ...).",
       ("event",), "errors"),
    _m("traintel_errors_total", "counter", "", "Errors captured, by classification.",
       ("error_type", "severity"), "errors"),
    # --- GPU (NVML) ---
    _m("traintel_gpu_memory_used_bytes", "gauge", "By", "GPU framebuffer memory in use.",
       GPU_LABELS, "gpu", "hw.gpu.memory.usage"),
    _m("traintel_gpu_memory_total_bytes", "gauge", "By", "GPU framebuffer memory size.",
       GPU_LABELS, "gpu", "hw.gpu.memory.limit"),
    _m("traintel_gpu_utilization_ratio", "gauge", "1", "GPU (SM) utilisation, 0-1.", GPU_LABELS,
       "gpu", "hw.gpu.utilization"),
    _m("traintel_gpu_memory_utilization_ratio", "gauge", "1",
       "Fraction of time GPU memory was read or written, 0-1.", GPU_LABELS, "gpu"),
    _m("traintel_gpu_power_watts", "gauge", "W", "GPU power draw.", GPU_LABELS, "gpu"),
    _m("traintel_gpu_power_limit_watts", "gauge", "W", "GPU enforced power limit.", GPU_LABELS,
       "gpu"),
    _m("traintel_gpu_energy_joules_total", "counter", "J",
       "GPU energy consumed since the driver loaded.", GPU_LABELS, "gpu", "hw.energy"),
    _m("traintel_gpu_temperature_celsius", "gauge", "Cel", "GPU core temperature.", GPU_LABELS,
       "gpu", "hw.temperature"),
    _m("traintel_gpu_sm_clock_hertz", "gauge", "Hz", "GPU SM clock.", GPU_LABELS, "gpu"),
    _m("traintel_gpu_throttled", "gauge", "",
       "1 while the GPU clocks are held down for this reason (idle excluded).",
       GPU_LABELS + ("reason",), "gpu"),
    _m("traintel_gpu_ecc_errors_uncorrected_total", "counter", "",
       "Uncorrected (double-bit) ECC errors, volatile count.", GPU_LABELS, "gpu"),
    _m("traintel_gpu_pcie_bytes_per_second", "gauge", "By/s", "PCIe throughput.",
       GPU_LABELS + ("direction",), "gpu"),
    # --- CUDA caching allocator (torch) ---
    _m("traintel_cuda_memory_allocated_bytes", "gauge", "By",
       "Memory held by live tensors (torch.cuda.memory_allocated).", ("device",), "cuda"),
    _m("traintel_cuda_memory_reserved_bytes", "gauge", "By",
       "Memory reserved by the caching allocator.", ("device",), "cuda"),
    _m("traintel_cuda_memory_peak_allocated_bytes", "gauge", "By",
       "Peak allocated memory since the run started.", ("device",), "cuda"),
    _m("traintel_cuda_memory_reserved_unallocated_bytes", "gauge", "By",
       "Reserved but not allocated: fragmentation and cache.", ("device",), "cuda"),
    _m("traintel_cuda_alloc_retries_total", "counter", "",
       "cudaMalloc retries after freeing the cache.", ("device",), "cuda"),
    _m("traintel_cuda_ooms_total", "counter", "", "CUDA out-of-memory errors.", ("device",),
       "cuda"),
    # --- system (psutil) ---
    _m("traintel_process_cpu_utilization_ratio", "gauge", "1",
       "Training process CPU use, in cores (can exceed 1).", (), "system",
       "process.cpu.utilization"),
    _m("traintel_process_memory_rss_bytes", "gauge", "By", "Training process resident memory.", (),
       "system", "process.memory.usage"),
    _m("traintel_host_cpu_utilization_ratio", "gauge", "1", "Host CPU use, 0-1.", (), "system",
       "system.cpu.utilization"),
    _m("traintel_host_memory_used_bytes", "gauge", "By", "Host memory in use.", (), "system",
       "system.memory.usage"),
    _m("traintel_host_memory_total_bytes", "gauge", "By", "Host memory size.", (), "system"),
    _m("traintel_disk_used_bytes", "gauge", "By",
       "Used space on the filesystem holding the run directory.", (), "system"),
    _m("traintel_disk_total_bytes", "gauge", "By",
       "Size of the filesystem holding the run directory.", (), "system"),
    _m("traintel_dataloader_workers", "gauge", "", "Live data-loader worker processes.", (),
       "system"),
    # --- traintel's own health ---
    _m("traintel_record_dropped_total", "counter", "",
       "Record lines that could not be written (disk full, unwritable directory).", (),
       "telemetry"),
    _m("traintel_record_queue_depth", "gauge", "", "Records waiting for the background writer.",
       (), "telemetry"),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}


def get(name: str) -> Metric:
    """The catalog entry for ``name``; a clear error for names the catalog does not know."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(
            f"unknown traintel metric {name!r}: every metric must be declared in "
            "traintel.catalog.METRICS"
        ) from None


def prometheus_series_names(metric: Metric) -> tuple[str, ...]:
    """The series names Prometheus stores for ``metric`` (histograms expand into three)."""
    if metric.kind == "histogram":
        return (f"{metric.name}_bucket", f"{metric.name}_sum", f"{metric.name}_count")
    return (metric.name,)


def render_markdown() -> str:
    """The metric reference (docs/metrics.md), generated so it cannot drift from the code."""
    lines = [
        "# Metric reference",
        "",
        "Generated from `src/traintel/catalog.py` by `traintel docs metrics`; do not edit.",
        f"Every series carries the labels {', '.join(f'`{label}`' for label in BASE_LABELS)}.",
        "",
    ]
    groups: dict[str, list[Metric]] = {}
    for metric in METRICS:
        groups.setdefault(metric.group, []).append(metric)
    for group, metrics in groups.items():
        lines += [f"## {group}", "", "| name | type | unit | extra labels | description |",
                  "|---|---|---|---|---|"]
        for m in metrics:
            labels = ", ".join(f"`{label}`" for label in m.labels) or "-"
            semconv = f" (semconv: `{m.semconv}`)" if m.semconv else ""
            lines.append(
                f"| `{m.name}` | {m.kind} | {m.unit or '-'} | {labels} | {m.description}{semconv} |"
            )
        lines.append("")
    return "\n".join(lines)
