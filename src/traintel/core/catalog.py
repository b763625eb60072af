"""Every metric traintel emits, in one place.

The catalog is the contract between the library, the collector pipeline, the Prometheus rules and
the Grafana dashboards: exporters register instruments from it, the rules and dashboards are
checked against it, and ``docs/metrics.md`` is rendered from it.

Names are Prometheus names (``_total`` for counters, base units as suffixes, no type in the name:
``promtool check metrics`` passes on a run's /metrics). The OTel instrument carries the same name
and a UCUM unit chosen so that the collector's Prometheus translation (which appends a unit suffix
and ``_total`` unless already present) leaves the name unchanged. Every metric records the
OpenTelemetry semantic-convention metric of the same meaning, unit and kind in ``semconv``
("none" where there is none: the conventions define nothing for training runs), and GPU metrics
the dcgm-exporter field in ``dcgm``; a test checks each claimed name against the semantic
conventions package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: "updowncounter": a value that goes up and down and adds up across series (memory in use, a
#: filesystem's size), as the semantic conventions name it: an OTel (observable) UpDownCounter,
#: a Prometheus gauge
Kind = Literal["counter", "gauge", "updowncounter", "histogram"]

#: Labels on every series traintel emits.
BASE_LABELS: tuple[str, ...] = ("project", "run", "rank")
#: Labels naming one GPU: dcgm-exporter's, in Prometheus's snake_case (``gpu`` is the NVML index,
#: ``uuid`` DCGM's ``UUID``, ``model_name`` its ``modelName``, ``pci_bus_id`` NVML's
#: ``00000000:3B:00.0`` form, ``hostname`` its ``Hostname``). The recording rule
#: ``traintel:gpu_run:info`` spells them as DCGM does, so DCGM's series join it on ``UUID``.
GPU_LABELS: tuple[str, ...] = ("gpu", "uuid", "model_name", "pci_bus_id", "hostname")
#: Labels naming one MIG instance: its GPU's, plus DCGM's GPU-instance id and profile (1g.10gb).
MIG_LABELS: tuple[str, ...] = GPU_LABELS + ("gpu_i_id", "gpu_i_profile")

#: Bucket boundaries (seconds) for step and operation durations: 1 ms to 10 min.
DURATION_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
#: Bucket boundaries of a ``run.histogram`` given none of its own: the OpenTelemetry SDK's default
#: explicit bucket boundaries (the metrics SDK specification's), for values of any kind.
DEFAULT_HISTOGRAM_BUCKETS: tuple[float, ...] = (
    0.0,
    5.0,
    10.0,
    25.0,
    50.0,
    75.0,
    100.0,
    250.0,
    500.0,
    750.0,
    1000.0,
    2500.0,
    5000.0,
    7500.0,
    10000.0,
)


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Kind
    unit: str
    description: str
    labels: tuple[str, ...] = ()
    group: str = "training"
    #: OpenTelemetry semantic-convention metric of the same meaning ("none" where there is none)
    semconv: str = "none"
    #: the dcgm-exporter field of the same meaning (GPU metrics only; "none" where there is none)
    dcgm: str | None = None
    #: the ``run.log`` keys this metric shows the latest value of, its own name first, aliases
    #: after (``lr``, ``learning_rate``): the one declaration the state, the exporters, the
    #: integrations and the capacity calculator derive their tables from
    keys: tuple[str, ...] = ()
    #: the unit docs/metrics.md shows where ``unit`` must stay empty (see the rate gauges)
    doc_unit: str = ""

    @property
    def all_labels(self) -> tuple[str, ...]:
        return BASE_LABELS + self.labels


def _m(
    name: str,
    kind: Kind,
    unit: str,
    description: str,
    labels: tuple[str, ...] = (),
    group: str = "training",
    semconv: str = "none",
    keys: tuple[str, ...] = (),
) -> Metric:
    return Metric(name, kind, unit, description, tuple(labels), group, semconv, keys=keys)


def _gpu(
    name: str,
    kind: Kind,
    unit: str,
    description: str,
    labels: tuple[str, ...] = (),
    *,
    dcgm: str,
    semconv: str = "none",
) -> Metric:
    return Metric(name, kind, unit, description, GPU_LABELS + labels, "gpu", semconv, dcgm)


def _mig(
    name: str, kind: Kind, unit: str, description: str, *, dcgm: str, semconv: str = "none"
) -> Metric:
    return Metric(name, kind, unit, description, MIG_LABELS, "gpu", semconv, dcgm)


METRICS: tuple[Metric, ...] = (
    # --- run lifecycle and progress ---
    _m(
        "traintel_run_info",
        "gauge",
        "",
        "Always 1; labels describe the run (`tags` "
        "comma-joined). `hostname` as on the GPU series (dcgm-exporter's `Hostname`).",
        ("run_name", "hostname", "world_size", "group", "tags"),
        "run",
    ),
    _m(
        "traintel_run_status",
        "gauge",
        "",
        "1 for the run's current status, 0 for the others (a Prometheus state set).",
        ("status",),
        "run",
    ),
    _m("traintel_run_start_time_seconds", "gauge", "s", "Unix time the run started.", (), "run"),
    _m(
        "traintel_run_progress_ratio",
        "gauge",
        "1",
        "Fraction of planned steps done (0-1); absent while the total is unknown.",
        (),
        "run",
    ),
    _m(
        "traintel_run_eta_seconds",
        "gauge",
        "s",
        "Estimated seconds until the planned end.",
        (),
        "run",
    ),
    _m("traintel_run_steps_planned", "gauge", "", "Total steps planned, when known.", (), "run"),
    _m("traintel_epoch", "gauge", "", "Current epoch (0-based).", (), "run"),
    _m(
        "traintel_last_step_timestamp_seconds",
        "gauge",
        "s",
        "Unix time of the latest completed step: the stall alert's input.",
        (),
        "run",
    ),
    _m(
        "traintel_first_error_timestamp_seconds",
        "gauge",
        "s",
        "Unix time of the run's first error: the rank with the earliest is the job's root cause "
        "(named by RunFailed).",
        (),
        "run",
    ),
    # --- per-step training metrics ---
    _m("traintel_steps_total", "counter", "", "Training steps completed."),
    _m("traintel_samples_total", "counter", "", "Samples processed."),
    _m("traintel_tokens_total", "counter", "", "Tokens processed."),
    # The rate as the run sees it, at once and without a query (the progress line, /status, the
    # throughput alert); over time, rate() of the counters is the exact figure: the recording
    # rules traintel:<steps|samples|tokens>_per_second:rate2m. Their OTel unit stays empty: with
    # "{step}/s" the collector's Prometheus translation (0.159) names them ..._per_second_per_second
    # (measured with the native stack); ``doc_unit`` gives the unit in docs/metrics.md.
    Metric(
        "traintel_steps_per_second",
        "gauge",
        "",
        "Step rate over the recent window (for graphs: rate(traintel_steps_total[2m])).",
        doc_unit="{step}/s",
    ),
    Metric(
        "traintel_samples_per_second",
        "gauge",
        "",
        "Sample throughput over the recent window (for graphs: rate(traintel_samples_total[2m])).",
        doc_unit="{sample}/s",
    ),
    Metric(
        "traintel_tokens_per_second",
        "gauge",
        "",
        "Token throughput over the recent window (for graphs: rate(traintel_tokens_total[2m])).",
        doc_unit="{token}/s",
    ),
    _m("traintel_loss", "gauge", "", "Latest finite training loss.", keys=("loss",)),
    _m(
        "traintel_learning_rate", "gauge", "", "Latest learning rate.", keys=("lr", "learning_rate")
    ),
    _m("traintel_grad_norm", "gauge", "", "Latest global gradient norm.", keys=("grad_norm",)),
    _m(
        "traintel_nonfinite_loss_total",
        "counter",
        "",
        "Loss values that were NaN or infinite (kept out of averages).",
    ),
    _m(
        "traintel_step_duration_seconds",
        "histogram",
        "s",
        "Wall time of one training step, data wait included.",
    ),
    _m(
        "traintel_data_wait_seconds_total",
        "counter",
        "s",
        "Time spent waiting for the next batch from the data loader.",
    ),
    _m(
        "traintel_compute_seconds_total",
        "counter",
        "s",
        "Time spent in the loop body (forward, backward, optimizer).",
    ),
    _m(
        "traintel_metric",
        "gauge",
        "",
        "Latest value of a user metric passed to run.log().",
        ("metric",),
    ),
    _m(
        "traintel_summary_value",
        "gauge",
        "",
        "A number the run kept in run.summary (W&B's run.summary), by key.",
        ("key",),
    ),
    # Every value between two exports, not only the latest: `metric` is the run.log key (loss,
    # lr, grad_norm or a user metric). Min and max cover the values logged since the previous
    # export; the counts are cumulative (per interval: increase()).
    _m(
        "traintel_logged_min",
        "gauge",
        "",
        "Smallest finite value of a run.log() key since the previous export.",
        ("metric",),
    ),
    _m(
        "traintel_logged_max",
        "gauge",
        "",
        "Largest finite value of a run.log() key since the previous export: a spike between two "
        "exports shows here.",
        ("metric",),
    ),
    _m(
        "traintel_logged_values_total",
        "counter",
        "",
        "Values logged for a run.log() key, finite or not.",
        ("metric",),
    ),
    _m(
        "traintel_logged_nonfinite_total",
        "counter",
        "",
        "NaN or infinite values logged for a run.log() key: a NaN between two exports shows here.",
        ("metric",),
    ),
    # --- evaluation ---
    _m("traintel_eval_value", "gauge", "", "Latest value of an eval metric.", ("metric",), "eval"),
    _m(
        "traintel_eval_best",
        "gauge",
        "",
        "Best value so far of an eval metric.",
        ("metric",),
        "eval",
    ),
    # --- user instruments (run.counter / run.gauge / run.histogram / run.timer), by name ---
    _m(
        "traintel_user_total", "counter", "", "A user counter (run.counter).", ("metric",), "custom"
    ),
    _m("traintel_user_value", "gauge", "", "A user gauge (run.gauge).", ("metric",), "custom"),
    _m(
        "traintel_user_observations",
        "histogram",
        "",
        "Values observed by a user histogram (run.histogram), in its own buckets.",
        ("metric",),
        "custom",
    ),
    _m(
        "traintel_user_timer_seconds",
        "histogram",
        "s",
        "Seconds per call of a user timer (run.timer).",
        ("metric",),
        "custom",
    ),
    _m(
        "traintel_operation_duration_seconds",
        "histogram",
        "s",
        "Duration of a run.operation()/run.span() block.",
        ("operation",),
        "custom",
    ),
    # --- events and errors ---
    _m(
        "traintel_events_total",
        "counter",
        "",
        "Structured events (milestones, checkpoints, ...).",
        ("event",),
        "errors",
    ),
    _m(
        "traintel_errors_total",
        "counter",
        "",
        "Errors captured, by classification.",
        ("error_type", "severity"),
        "errors",
    ),
    # --- GPU (NVML): dcgm-exporter's labels; see docs/gpu.md for each field's NVML source ---
    _gpu(
        "traintel_gpu_info",
        "gauge",
        "",
        "Always 1 for each whole GPU this process uses: the device to join dcgm-exporter "
        "series with (traintel:gpu_run:info).",
        ("driver_version",),
        dcgm="none",
    ),
    _gpu(
        "traintel_gpu_memory_used_bytes",
        "updowncounter",
        "By",
        "GPU framebuffer memory in use.",
        dcgm="DCGM_FI_DEV_FB_USED (MiB)",
        semconv="hw.gpu.memory.usage",
    ),
    _gpu(
        "traintel_gpu_memory_total_bytes",
        "updowncounter",
        "By",
        "GPU framebuffer memory size.",
        dcgm="DCGM_FI_DEV_FB_TOTAL (MiB)",
        semconv="hw.gpu.memory.limit",
    ),
    _gpu(
        "traintel_gpu_utilization_ratio",
        "gauge",
        "1",
        "Fraction of time a kernel ran on the GPU, 0-1 (not how many SMs were busy).",
        dcgm="DCGM_FI_DEV_GPU_UTIL (%)",
        semconv="hw.gpu.utilization",
    ),
    _gpu(
        "traintel_gpu_memory_controller_utilization_ratio",
        "gauge",
        "1",
        "Fraction of time GPU memory was read or written, 0-1 (memory-controller busy time, "
        "not memory used).",
        dcgm="DCGM_FI_DEV_MEM_COPY_UTIL (%)",
    ),
    _gpu(
        "traintel_gpu_power_watts",
        "gauge",
        "W",
        "GPU power draw.",
        dcgm="DCGM_FI_DEV_POWER_USAGE",
        semconv="hw.power",
    ),
    _gpu(
        "traintel_gpu_power_limit_watts",
        "gauge",
        "W",
        "GPU enforced power limit.",
        dcgm="DCGM_FI_DEV_ENFORCED_POWER_LIMIT",
    ),
    _gpu(
        "traintel_gpu_energy_joules_total",
        "counter",
        "J",
        "GPU energy consumed since the driver loaded.",
        dcgm="DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION (mJ)",
        semconv="hw.energy",
    ),
    _gpu(
        "traintel_gpu_temperature_celsius",
        "gauge",
        "Cel",
        "GPU core temperature.",
        dcgm="DCGM_FI_DEV_GPU_TEMP",
        semconv="hw.temperature",
    ),
    _gpu(
        "traintel_gpu_memory_temperature_celsius",
        "gauge",
        "Cel",
        "GPU memory (HBM) temperature.",
        dcgm="DCGM_FI_DEV_MEMORY_TEMP",
        semconv="hw.temperature",
    ),
    _gpu(
        "traintel_gpu_sm_clock_hertz",
        "gauge",
        "Hz",
        "GPU SM clock.",
        dcgm="DCGM_FI_DEV_SM_CLOCK (MHz)",
    ),
    _gpu(
        "traintel_gpu_memory_clock_hertz",
        "gauge",
        "Hz",
        "GPU memory clock.",
        dcgm="DCGM_FI_DEV_MEM_CLOCK (MHz)",
    ),
    _gpu(
        "traintel_gpu_throttled",
        "gauge",
        "",
        "1 while the GPU clocks are held down for this reason (idle excluded).",
        ("reason",),
        dcgm="DCGM_FI_DEV_CLOCKS_EVENT_REASONS (a bit mask)",
    ),
    _gpu(
        "traintel_gpu_ecc_errors_uncorrected_total",
        "counter",
        "",
        "Uncorrected (double-bit) ECC errors, volatile count.",
        dcgm="DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        semconv="hw.errors",
    ),
    _gpu(
        "traintel_gpu_remapped_rows_total",
        "counter",
        "",
        "Memory rows remapped to spares, by the kind of error that caused it.",
        ("cause",),
        dcgm="DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS, DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
    ),
    _gpu(
        "traintel_gpu_row_remap_pending",
        "gauge",
        "",
        "1 while a row remapping waits for the next GPU reset.",
        dcgm="DCGM_FI_DEV_ROW_REMAP_PENDING",
    ),
    _gpu(
        "traintel_gpu_row_remap_failed",
        "gauge",
        "",
        "1 once a row remapping has failed: the GPU should be replaced.",
        dcgm="DCGM_FI_DEV_ROW_REMAP_FAILURE",
    ),
    _gpu(
        "traintel_gpu_recovery_action",
        "gauge",
        "",
        "The recovery NVML asks for: 0 none, 1 GPU reset, 2 node reboot, 3 drain peer-to-peer, "
        "4 drain and reset.",
        dcgm="DCGM_FI_DEV_GET_GPU_RECOVERY_ACTION",
    ),
    _gpu(
        "traintel_gpu_xid_errors_total",
        "counter",
        "",
        "NVIDIA Xid errors by code, seen while the run sampled the GPU.",
        ("xid",),
        dcgm="DCGM_FI_DEV_XID_ERRORS (the last code, a gauge)",
        semconv="hw.errors",
    ),
    # A rate sampled by NVML, not hw.gpu.io (a cumulative byte counter): no convention matches.
    _gpu(
        "traintel_gpu_pcie_bytes_per_second",
        "gauge",
        "By/s",
        "PCIe throughput (a 20 ms average at sampling time).",
        ("direction",),
        dcgm="DCGM_FI_PROF_PCIE_TX_BYTES, DCGM_FI_PROF_PCIE_RX_BYTES",
    ),
    _gpu(
        "traintel_gpu_pcie_replays_total",
        "counter",
        "",
        "PCIe replays (link-level retries): a rising count means a degraded link.",
        dcgm="DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
        semconv="hw.errors",
    ),
    _gpu(
        "traintel_gpu_nvlink_bytes_total",
        "counter",
        "By",
        "NVLink data bytes over all links (protocol overhead excluded).",
        ("direction",),
        dcgm="DCGM_FI_PROF_NVLINK_TX_BYTES, DCGM_FI_PROF_NVLINK_RX_BYTES (rates)",
        semconv="hw.gpu.io",
    ),
    _gpu(
        "traintel_gpu_nvlink_errors_total",
        "counter",
        "",
        "NVLink errors over all links, by type (crc_flit, crc_data, replay, recovery).",
        ("type",),
        dcgm="DCGM_FI_DEV_NVLINK_{CRC_FLIT,CRC_DATA,REPLAY,RECOVERY}_ERROR_COUNT_TOTAL",
        semconv="hw.errors",
    ),
    _gpu(
        "traintel_gpu_engine_active_ratio",
        "gauge",
        "1",
        "Fraction of time the graphics/compute engine was active, 0-1 (NVML GPM, Hopper+).",
        dcgm="DCGM_FI_PROF_GR_ENGINE_ACTIVE",
    ),
    _gpu(
        "traintel_gpu_sm_active_ratio",
        "gauge",
        "1",
        "Fraction of SM cycles with at least one warp resident, 0-1 (NVML GPM, Hopper+).",
        dcgm="DCGM_FI_PROF_SM_ACTIVE",
    ),
    _gpu(
        "traintel_gpu_sm_occupancy_ratio",
        "gauge",
        "1",
        "Resident warps over the SMs' maximum, 0-1 (NVML GPM, Hopper+).",
        dcgm="DCGM_FI_PROF_SM_OCCUPANCY",
    ),
    _gpu(
        "traintel_gpu_tensor_active_ratio",
        "gauge",
        "1",
        "Fraction of cycles a tensor pipe was active, 0-1 (NVML GPM, Hopper+).",
        dcgm="DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
    ),
    _gpu(
        "traintel_gpu_dram_active_ratio",
        "gauge",
        "1",
        "Fraction of peak memory bandwidth used, 0-1 (NVML GPM, Hopper+).",
        dcgm="DCGM_FI_PROF_DRAM_ACTIVE",
    ),
    # --- MIG instances (labels of their GPU plus GPU_I_ID and GPU_I_PROFILE, as DCGM's) ---
    _mig(
        "traintel_gpu_mig_info",
        "gauge",
        "",
        "Always 1 for each MIG instance this process uses (DCGM's join: traintel:gpu_run:info).",
        dcgm="none",
    ),
    _mig(
        "traintel_gpu_mig_memory_used_bytes",
        "updowncounter",
        "By",
        "Memory in use in the MIG instance.",
        dcgm="DCGM_FI_DEV_FB_USED (MiB)",
        semconv="hw.gpu.memory.usage",
    ),
    _mig(
        "traintel_gpu_mig_memory_total_bytes",
        "updowncounter",
        "By",
        "Memory of the MIG instance.",
        dcgm="DCGM_FI_DEV_FB_TOTAL (MiB)",
        semconv="hw.gpu.memory.limit",
    ),
    _mig(
        "traintel_gpu_mig_engine_active_ratio",
        "gauge",
        "1",
        "Fraction of time the instance's engine was active, 0-1 (NVML GPM, Hopper+).",
        dcgm="DCGM_FI_PROF_GR_ENGINE_ACTIVE",
    ),
    # --- CUDA caching allocator (torch) ---
    _m(
        "traintel_cuda_memory_allocated_bytes",
        "gauge",
        "By",
        "Memory held by live tensors (torch.cuda.memory_allocated).",
        ("device",),
        "cuda",
    ),
    _m(
        "traintel_cuda_memory_reserved_bytes",
        "gauge",
        "By",
        "Memory reserved by the caching allocator.",
        ("device",),
        "cuda",
    ),
    _m(
        "traintel_cuda_memory_peak_allocated_bytes",
        "gauge",
        "By",
        "Peak allocated memory since the run started.",
        ("device",),
        "cuda",
    ),
    _m(
        "traintel_cuda_memory_reserved_unallocated_bytes",
        "gauge",
        "By",
        "Reserved but not allocated: fragmentation and cache.",
        ("device",),
        "cuda",
    ),
    _m(
        "traintel_cuda_alloc_retries_total",
        "counter",
        "",
        "cudaMalloc retries after freeing the cache.",
        ("device",),
        "cuda",
    ),
    _m(
        "traintel_cuda_ooms_total", "counter", "", "CUDA out-of-memory errors.", ("device",), "cuda"
    ),
    # --- system (psutil) ---
    _m(
        "traintel_process_cpu_utilization_ratio",
        "gauge",
        "1",
        "Training process CPU time over elapsed time and the CPUs it may run on, 0-1.",
        (),
        "system",
        "process.cpu.utilization",
    ),
    _m(
        "traintel_process_memory_rss_bytes",
        "updowncounter",
        "By",
        "Training process resident memory.",
        (),
        "system",
        "process.memory.usage",
    ),
    _m(
        "traintel_host_cpu_utilization_ratio",
        "gauge",
        "1",
        "Host CPU use, 0-1.",
        (),
        "system",
        "system.cpu.utilization",
    ),
    _m(
        "traintel_host_memory_used_bytes",
        "updowncounter",
        "By",
        "Host memory in use.",
        (),
        "system",
        "system.memory.usage",
    ),
    _m(
        "traintel_host_memory_total_bytes",
        "updowncounter",
        "By",
        "Host memory size.",
        (),
        "system",
        "system.memory.limit",
    ),
    _m(
        "traintel_disk_used_bytes",
        "updowncounter",
        "By",
        "Used space on the filesystem holding the run directory.",
        (),
        "system",
        "system.filesystem.usage",
    ),
    _m(
        "traintel_disk_total_bytes",
        "updowncounter",
        "By",
        "Size of the filesystem holding the run directory.",
        (),
        "system",
        "system.filesystem.limit",
    ),
    _m(
        "traintel_dataloader_workers",
        "gauge",
        "",
        "Live data-loader worker processes.",
        (),
        "system",
    ),
    # --- traintel's own health ---
    _m(
        "traintel_record_dropped_total",
        "counter",
        "",
        "Record lines that could not be written (disk full, unwritable or deleted directory, "
        "or steps past the record queue's limit when the writer fell behind).",
        (),
        "telemetry",
    ),
    _m(
        "traintel_refused_total",
        "counter",
        "",
        "Inputs a run refused and went on without (a value that is no number, a name beyond the "
        "rules or the budget, a negative count, an unprintable field), by reason.",
        ("reason",),
        "telemetry",
    ),
    _m(
        "traintel_export_failures_total",
        "counter",
        "",
        "OTLP exports that failed (refused, no answer, throttled by Retry-After, rejected).",
        ("signal",),
        "telemetry",
    ),
    _m(
        "traintel_record_queue_depth",
        "gauge",
        "",
        "Records waiting for the background writer.",
        (),
        "telemetry",
    ),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}
#: ``run.log`` key (aliases included) -> the catalog metric that shows its latest value
METRIC_FOR_KEY: dict[str, str] = {key: m.name for m in METRICS for key in m.keys}
#: ``run.log`` key -> the name it is counted and windowed under (the ``metric`` label of the
#: ``traintel_logged_*`` series): every alias of a metric shares its first key
LOGGED_NAME_FOR_KEY: dict[str, str] = {key: m.keys[0] for m in METRICS for key in m.keys}


def get(name: str) -> Metric:
    """The catalog entry for ``name``; a clear error for names the catalog does not know."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(
            f"unknown traintel metric {name!r}: every metric must be declared in "
            "traintel.core.catalog.METRICS"
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
        "Generated from `src/traintel/core/catalog.py` by `traintel docs metrics`; do not edit.",
        f"Every series carries the labels {', '.join(f'`{label}`' for label in BASE_LABELS)}.",
        "Each metric names the OpenTelemetry semantic-convention metric of the same meaning, unit "
        "and kind (none: the conventions define none), and each GPU metric the dcgm-exporter "
        "field it corresponds to.",
        "",
    ]
    groups: dict[str, list[Metric]] = {}
    for metric in METRICS:
        groups.setdefault(metric.group, []).append(metric)
    for group, metrics in groups.items():
        gpu = any(m.dcgm for m in metrics)
        lines += [
            f"## {group}",
            "",
            "| name | type | unit | extra labels | description | semantic convention |"
            + (" DCGM |" if gpu else ""),
            "|---|---|---|---|---|---|" + ("---|" if gpu else ""),
        ]
        for m in metrics:
            labels = ", ".join(f"`{label}`" for label in m.labels) or "-"
            unit = m.unit or (f"{m.doc_unit} (OTel: none)" if m.doc_unit else "-")
            row = (
                f"| `{m.name}` | {m.kind} | {unit} | {labels} | {m.description} | "
                f"{_code(m.semconv)} |"
            )
            lines.append(row + (f" {_code(m.dcgm or 'none')} |" if gpu else ""))
        lines.append("")
    return "\n".join(lines)


def _code(name: str) -> str:
    return "none" if name == "none" else f"`{name}`"
