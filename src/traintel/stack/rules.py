"""Prometheus rules as data: one config of thresholds and durations renders every rule file.

``python -m traintel.stack.rules [--runbook-url-base URL] [DIR]`` (``make generate``) writes
``prometheus/rules/recording.yml`` and ``prometheus/rules/alerts.yml`` from :class:`Config`, the
way kubernetes-mixin renders its alerts from ``config.libsonnet``: every threshold, window and
``for`` duration is a field with a documented default, and each alert's summary and description
quote the same numbers, so a tuned copy explains itself. The YAML is committed (compose, the
native stack and the Helm chart load it as it is); a test checks that it equals what this module
renders, and ``prometheus/tests/*.yml`` unit-test every alert with ``promtool test rules``.

Keep to PromQL that Prometheus 2.42 also understands: the native test stack may fall back to it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import NamedTuple

from traintel.samplers.xid import NEEDS_RESET
from traintel.stack import project

#: Rate window of the recording rules, part of their names (``traintel:...:rate2m``, which the
#: dashboards read): at least two samples at traintel's 15 s export interval, and at the SDK's
#: default of 60 s.
RATE_WINDOW = "2m"

#: Where the committed rule files live.
DEFAULT_DIR = project.CHECKOUT / "prometheus" / "rules"

#: The runbooks page (docs/runbooks.md) as published with the source. Alertmanager and Grafana
#: show ``runbook_url`` as a link, so it must be absolute: render with your own base
#: (``--runbook-url-base``) when your team keeps the runbooks elsewhere (a wiki, an internal
#: mirror of the repository).
DEFAULT_RUNBOOK_URL_BASE = "https://github.com/traintel/traintel/blob/main/docs/runbooks.md"


@dataclass(frozen=True)
class Config:
    """Every threshold and duration of the rules. Durations are Prometheus durations."""

    #: ``runbook_url`` of each alert: ``<base>#<alert name in lower case>``
    runbook_url_base: str = DEFAULT_RUNBOOK_URL_BASE
    # -- runs --------------------------------------------------------------------------------
    #: no completed step for this many seconds while running: stalled
    stall_seconds: int = 900
    stall_for: str = "2m"
    #: how far back a run counts as having said "running"
    stopped_reporting_lookback: str = "1h"
    #: after the series went stale (5 minutes after its last sample)
    stopped_reporting_for: str = "5m"

    # -- training ----------------------------------------------------------------------------
    nonfinite_window: str = "5m"
    #: the recent mean loss above this multiple of its recent minimum: diverging
    divergence_factor: float = 2.0
    divergence_window: str = "5m"
    divergence_baseline: str = "1h"
    divergence_for: str = "10m"
    #: throughput below this fraction of its own median: dropped
    throughput_drop_ratio: float = 0.5
    throughput_baseline: str = "1h"
    throughput_for: str = "10m"
    #: share of loop time spent waiting for the next batch
    data_wait_fraction: float = 0.3
    data_wait_for: str = "15m"
    #: one rank's mean step time over the median of its run's ranks
    straggler_ratio: float = 1.25
    straggler_for: str = "15m"
    #: errors of one type in ``error_window`` over all ranks of a run
    error_count: int = 5
    error_window: str = "10m"

    # -- GPU ---------------------------------------------------------------------------------
    gpu_memory_fraction: float = 0.97
    gpu_memory_for: str = "10m"
    gpu_temperature_celsius: float = 85
    gpu_hot_for: str = "5m"
    #: NVML throttle reasons that mean trouble (sw_power_cap is normal under full load)
    gpu_throttle_reasons: tuple[str, ...] = (
        "hw_slowdown",
        "hw_thermal",
        "sw_thermal",
        "hw_power_brake",
    )
    gpu_throttle_for: str = "15m"
    #: busy less than this share of the time while steps complete: idle
    gpu_idle_utilization: float = 0.3
    gpu_idle_for: str = "15m"
    #: Xid codes meaning the GPU is lost or must be reset (or the node rebooted): by default
    #: those NVIDIA's Xid catalog sends to a GPU reset or a reboot (traintel.samplers.xid)
    gpu_xid_reset_codes: tuple[int, ...] = NEEDS_RESET
    gpu_xid_window: str = "15m"
    #: NVLink errors (CRC, replay, recovery) of one type on one GPU within the window
    gpu_nvlink_error_count: int = 100
    gpu_nvlink_window: str = "10m"

    # -- the stack ---------------------------------------------------------------------------
    #: an exporter's sending queue fuller than this
    pipeline_queue_fraction: float = 0.5
    pipeline_for: str = "5m"
    #: Prometheus scrape jobs of the stack's own programs
    stack_jobs: tuple[str, ...] = ("otel-collector", "prometheus", "alertmanager", "loki", "tempo")
    component_down_for: str = "5m"
    #: restarts of one stack program within the window: a crash loop that a restart policy (or
    #: an operator) hides from StackComponentDown, whose ``for`` starts again at every restart
    component_restarts: int = 3
    component_restart_window: str = "15m"
    #: OTLP exports of one signal that one rank of a run failed within the window (the SDK has
    #: already retried each; every failed one left a gap in the live view until `traintel sync`)
    export_failure_count: int = 3
    export_failure_window: str = "15m"
    #: failed notification attempts over all attempts, per integration
    notification_failure_ratio: float = 0.0
    notification_failure_window: str = "5m"
    notification_failure_for: str = "10m"


class Rule(NamedTuple):
    """One recording or alerting rule, with the comment that says why it is written so."""

    name: str
    expr: str
    comment: str = ""
    #: alerts only
    for_: str = ""
    severity: str = ""
    summary: str = ""
    description: str = ""

    @property
    def is_alert(self) -> bool:
        return bool(self.severity)


class Group(NamedTuple):
    name: str
    rules: list[Rule]


# --- the rules ----------------------------------------------------------------------------------

RUN = "project, run, rank"
#: the labels naming a GPU on traintel's GPU series: dcgm-exporter's, in Prometheus's snake_case
GPU = "gpu, uuid, model_name, pci_bus_id, hostname"
#: dcgm-exporter's spelling of each of them (and of a MIG instance's): traintel:gpu_run:info
#: carries these, so that DCGM's series join it on (UUID, GPU_I_ID) as they are
DCGM_SPELLING = {
    "uuid": "UUID",
    "model_name": "modelName",
    "hostname": "Hostname",
    "gpu_i_id": "GPU_I_ID",
    "gpu_i_profile": "GPU_I_PROFILE",
}


def _dcgm_labels(expr: str, labels: str) -> str:
    """``max by (<labels in DCGM's spelling>)`` of ``expr`` with each snake_case GPU label copied
    to dcgm-exporter's name (``label_replace``), so the result has DCGM's label names only."""
    for ours, theirs in DCGM_SPELLING.items():
        if ours in labels.split(", "):
            expr = f'label_replace({expr}, "{theirs}", "$1", "{ours}", "(.*)")'
    spelled = ", ".join(DCGM_SPELLING.get(label, label) for label in labels.split(", "))
    return f"max by ({spelled}) (\n  {expr}\n)"


def recording(c: Config) -> list[Group]:
    w = RATE_WINDOW
    running = f'and on ({RUN})\n(max by ({RUN}) (traintel_run_status{{status="running"}}) == 1)'
    per_rank = f"sum by ({RUN})"
    return [
        Group(
            "traintel-recording",
            [
                Rule(
                    f"traintel:steps_per_second:rate{w}",
                    f"{per_rank} (rate(traintel_steps_total[{w}]))",
                    "--- throughput ---",
                ),
                Rule(
                    f"traintel:samples_per_second:rate{w}",
                    f"{per_rank} (rate(traintel_samples_total[{w}]))",
                ),
                Rule(
                    f"traintel:tokens_per_second:rate{w}",
                    f"{per_rank} (rate(traintel_tokens_total[{w}]))",
                ),
                Rule(
                    f"traintel:samples_per_second:job_rate{w}",
                    f"sum by (project, run) (traintel:samples_per_second:rate{w})",
                    "The job's throughput: every rank's rate added up, as each rank processes its own "
                    "share of the data (rules of one group run in order: these read the ones above).",
                ),
                Rule(
                    f"traintel:tokens_per_second:job_rate{w}",
                    f"sum by (project, run) (traintel:tokens_per_second:rate{w})",
                ),
                Rule(
                    f"traintel:step_seconds:mean_rate{w}",
                    f"{per_rank} (rate(traintel_step_duration_seconds_sum[{w}]))\n/\n"
                    f"({per_rank} (rate(traintel_step_duration_seconds_count[{w}])) > 0)",
                    "--- step time ---",
                ),
                Rule(
                    f"traintel:step_seconds:p95_rate{w}",
                    "histogram_quantile(0.95,\n"
                    f"  sum by ({RUN}, le) (rate(traintel_step_duration_seconds_bucket[{w}])))",
                ),
                Rule(
                    f"traintel:data_wait_seconds_per_step:rate{w}",
                    f"{per_rank} (rate(traintel_data_wait_seconds_total[{w}]))\n/\n"
                    f"({per_rank} (rate(traintel_steps_total[{w}])) > 0)",
                    "Seconds per step spent waiting for data and in the loop body: the step-time split.",
                ),
                Rule(
                    f"traintel:compute_seconds_per_step:rate{w}",
                    f"{per_rank} (rate(traintel_compute_seconds_total[{w}]))\n/\n"
                    f"({per_rank} (rate(traintel_steps_total[{w}])) > 0)",
                ),
                Rule(
                    f"traintel:data_wait_fraction:rate{w}",
                    f"{per_rank} (rate(traintel_data_wait_seconds_total[{w}]))\n/\n(\n  (\n"
                    f"    {per_rank} (rate(traintel_data_wait_seconds_total[{w}]))\n"
                    f"    + {per_rank} (rate(traintel_compute_seconds_total[{w}]))\n  ) > 0\n)",
                    "Fraction of loop time spent waiting for the next batch (0-1): high means "
                    "input-bound.",
                ),
                Rule(
                    f"traintel:step_seconds:median_over_ranks_rate{w}",
                    f"quantile by (project, run) (0.5, traintel:step_seconds:mean_rate{w})",
                    "--- stragglers (rules of one group run in order: these read the mean above) ---",
                ),
                Rule(
                    f"traintel:step_seconds:straggler_ratio_rate{w}",
                    f"traintel:step_seconds:mean_rate{w}\n/ on (project, run) group_left ()\n"
                    f"(traintel:step_seconds:median_over_ranks_rate{w} > 0)",
                    "Each rank's mean step time over the median of its run's ranks: 1 for a balanced "
                    "run.",
                ),
                Rule(
                    "traintel:gpu_memory_used:ratio",
                    f"max by ({RUN}, {GPU}) (traintel_gpu_memory_used_bytes)\n/\n"
                    f"(max by ({RUN}, {GPU}) (traintel_gpu_memory_total_bytes) > 0)",
                    "--- GPU ---",
                ),
                Rule(
                    "traintel:gpu_run:info",
                    f"{_dcgm_labels('traintel_gpu_info', f'{RUN}, {GPU}')}\n{running}\nor\n"
                    f"{_dcgm_labels('traintel_gpu_mig_info', f'{RUN}, {GPU}, gpu_i_id, gpu_i_profile')}"
                    f"\n{running}",
                    "Joining dcgm-exporter (docs/gpu.md): which run and rank use each GPU (or MIG "
                    "instance) now, labelled as dcgm-exporter labels its series (UUID, modelName, "
                    "Hostname, GPU_I_ID, GPU_I_PROFILE, where traintel's own series say uuid, "
                    "model_name, ...): "
                    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE * on (UUID, GPU_I_ID) group_left (project, run, "
                    "rank) traintel:gpu_run:info puts the run and rank next to a DCGM field. Running "
                    "runs only, so that a finished run's last samples never claim the GPU.",
                ),
            ],
        )
    ]


def alerts(c: Config) -> list[Group]:
    running = f'and on ({RUN})\nmax by ({RUN}) (traintel_run_status{{status="running"}}) == 1'
    w = RATE_WINDOW
    xids = f'xid=~"{"|".join(map(str, c.gpu_xid_reset_codes))}"'
    jobs = f'job=~"{"|".join(c.stack_jobs)}"'
    return [
        Group(
            "traintel-runs",
            [
                Rule(
                    "TrainingRunStalled",
                    "(\n  time()\n  - (\n"
                    f"    max by ({RUN}) (traintel_last_step_timestamp_seconds)\n"
                    f"    or max by ({RUN}) (traintel_run_start_time_seconds)\n"
                    f"  )\n) > {c.stall_seconds}\n{running}",
                    f"No completed step for {_seconds_words(c.stall_seconds)} while the run says it "
                    "is running; before the first step, counted from the run's start (model "
                    "loading, compilation).",
                    c.stall_for,
                    "critical",
                    "Run {{ $labels.run }} rank {{ $labels.rank }} has made no progress for "
                    "{{ $value | humanizeDuration }}",
                    "Still running, yet no step completed: a hang (collective, data loader, I/O) or "
                    "an unusually slow step. See `traintel logs tail {{ $labels.run }}`.",
                ),
                Rule(
                    "RunFailed",
                    f'max by ({RUN}) (traintel_run_status{{status="failed"}}) == 1',
                    "",
                    "",
                    "critical",
                    "Run {{ $labels.run }} rank {{ $labels.rank }} failed",
                    "The run ended with an exception; `traintel logs errors {{ $labels.run }} -v` "
                    "shows it with hints."
                    # The job's root cause, as torchrun's "Root Cause": the rank of this run whose
                    # first error came first (a peer's failure makes the others fail after it).
                    # Absent (no sentence) where no rank exported its first error.
                    "{{ with query (printf "
                    '"bottomk(1, traintel_first_error_timestamp_seconds{project=%q,run=%q})" '
                    "$labels.project $labels.run) }}{{ range . }} The job's first failure "
                    "(root cause): rank {{ .Labels.rank }}.{{ end }}{{ end }}",
                ),
                Rule(
                    "RunStoppedReporting",
                    f'max by ({RUN}) (last_over_time(traintel_run_status{{status="running"}}'
                    f"[{c.stopped_reporting_lookback}])) == 1\n"
                    f'unless on ({RUN})\ntraintel_run_status{{status="running"}}',
                    'The last status it sent was "running" and it has sent nothing since (a series '
                    "goes stale 5 minutes after its last sample): killed without a chance to report "
                    "(SIGKILL, out-of-memory killer, node lost). The `for` leaves time for "
                    "StackComponentDown / TelemetryPipelineFailing to fire first when the collector "
                    "itself is the problem (Alertmanager then holds these back).",
                    c.stopped_reporting_for,
                    "critical",
                    "Run {{ $labels.run }} rank {{ $labels.rank }} stopped reporting while running",
                    f"No telemetry for {_minutes_words(5 + _minutes(c.stopped_reporting_for))} and "
                    "no final status: killed (out-of-memory killer, scheduler, node failure) or cut "
                    "off from the collector. See `traintel logs tail {{ $labels.run }}`.",
                ),
            ],
        ),
        Group(
            "traintel-training",
            [
                Rule(
                    "LossNotFinite",
                    f"sum by ({RUN}) (increase(traintel_nonfinite_loss_total[{c.nonfinite_window}]))"
                    " > 0\nor\n"
                    f"sum by ({RUN}) (traintel_nonfinite_loss_total unless "
                    f"traintel_nonfinite_loss_total offset {c.nonfinite_window}) > 0",
                    f"A NaN or infinite loss in the last {_duration_words(c.nonfinite_window)} (the "
                    "second line catches the first one of a counter that appears already above "
                    "zero).",
                    "",
                    "critical",
                    "Run {{ $labels.run }} rank {{ $labels.rank }} produced a NaN or infinite loss",
                    f"Non-finite loss in the last {_duration_words(c.nonfinite_window)}: learning "
                    "rate, exploding gradients, fp16 overflow or a bad batch. See "
                    "`traintel logs grep nonfinite {{ $labels.run }}`.",
                ),
                Rule(
                    "LossDiverging",
                    f"min by ({RUN}) (min_over_time(traintel_loss[{c.divergence_window}]))\n"
                    f"> {c.divergence_factor:g} * min by ({RUN}) "
                    f"(min_over_time(traintel_loss[{c.divergence_baseline}] offset "
                    f"{c.divergence_window}) > 0)",
                    f"Every loss of the last {_duration_words(c.divergence_window)} is more than "
                    f"{_times(c.divergence_factor)} the lowest of the "
                    f"{_duration_words(c.divergence_baseline, single=True)} before. Only for "
                    "positive losses. The baseline ends where the recent window starts, so a loss "
                    "that falls fast (its recent mean far above its newest, lowest value) never "
                    "counts; the recent minimum, not the mean, so one spike does not either.",
                    c.divergence_for,
                    "warning",
                    "Loss of run {{ $labels.run }} rank {{ $labels.rank }} is diverging",
                    f"Loss at least {{{{ $value | humanize }}}} for "
                    f"{_duration_words(c.divergence_window)}, more than "
                    f"{_times(c.divergence_factor)} its minimum of the "
                    f"{_duration_words(c.divergence_baseline, single=True)} before.",
                ),
                Rule(
                    "ThroughputDropped",
                    "(\n"
                    f"  max by ({RUN}) (traintel_samples_per_second)\n"
                    f"  < {c.throughput_drop_ratio:g} * max by ({RUN}) (quantile_over_time(0.5, "
                    f"traintel_samples_per_second[{c.throughput_baseline}]))\n"
                    "  or\n"
                    f"  max by ({RUN}) (traintel_steps_per_second)\n"
                    f"  < {c.throughput_drop_ratio:g} * max by ({RUN}) (quantile_over_time(0.5, "
                    f"traintel_steps_per_second[{c.throughput_baseline}]))\n"
                    f")\n{running}",
                    "Samples per second (steps per second when no sample counts are logged) below "
                    f"{_fraction(c.throughput_drop_ratio)} of its own median over the last "
                    f"{_duration_words(c.throughput_baseline, single=True)}, while the run is "
                    "running.",
                    c.throughput_for,
                    "warning",
                    "Throughput of run {{ $labels.run }} rank {{ $labels.rank }} dropped below "
                    f"{_fraction(c.throughput_drop_ratio)} its usual rate",
                    f"Now {{{{ $value | humanize }}}}/s, less than "
                    f"{_fraction(c.throughput_drop_ratio)} its median of the last "
                    f"{_duration_words(c.throughput_baseline, single=True)}.",
                ),
                Rule(
                    "DataWaitDominating",
                    f"traintel:data_wait_fraction:rate{w} > {c.data_wait_fraction:g}",
                    f"More than {c.data_wait_fraction:.0%} of the loop's time goes to waiting for "
                    "the next batch.",
                    c.data_wait_for,
                    "warning",
                    "Run {{ $labels.run }} rank {{ $labels.rank }} spends "
                    "{{ $value | humanizePercentage }} of its time waiting for data",
                    "The data loader cannot keep up with the model: the run is input-bound.",
                ),
                Rule(
                    "StragglerRank",
                    f"traintel:step_seconds:straggler_ratio_rate{w} > {c.straggler_ratio:g}\n"
                    "and on (project, run)\n"
                    f"count by (project, run) (traintel:step_seconds:mean_rate{w}) > 1",
                    f"One rank's mean step time is {c.straggler_ratio - 1:.0%} above the median of "
                    "its run's ranks.",
                    c.straggler_for,
                    "warning",
                    "Rank {{ $labels.rank }} of run {{ $labels.run }} is a straggler",
                    "Its mean step time is {{ $value | humanize }} times the median of the run's "
                    "ranks.",
                ),
                Rule(
                    "ErrorRateHigh",
                    f"sum by (project, run, error_type) (increase(traintel_errors_total"
                    f"[{c.error_window}])) > {c.error_count}",
                    f"More than {c.error_count} errors of one type in "
                    f"{_duration_words(c.error_window)}, over all ranks of a run.",
                    "",
                    "warning",
                    "Run {{ $labels.run }} is logging many {{ $labels.error_type }} errors",
                    f"More than {c.error_count} in {_duration_words(c.error_window)}; "
                    "`traintel logs errors {{ $labels.run }} -v` lists them with hints.",
                ),
            ],
        ),
        Group(
            "traintel-gpu",
            [
                Rule(
                    "GPUMemoryNearlyFull",
                    f"max by ({RUN}, gpu) (traintel:gpu_memory_used:ratio) > "
                    f"{c.gpu_memory_fraction:g}",
                    "",
                    c.gpu_memory_for,
                    "warning",
                    "GPU {{ $labels.gpu }} of run {{ $labels.run }} rank {{ $labels.rank }} is "
                    "{{ $value | humanizePercentage }} full",
                    "A larger batch, a longer sequence or fragmentation can now end in CUDA "
                    "out-of-memory.",
                ),
                Rule(
                    "GPUHot",
                    f"max by ({RUN}, gpu) (traintel_gpu_temperature_celsius) > "
                    f"{c.gpu_temperature_celsius:g}",
                    "",
                    c.gpu_hot_for,
                    "warning",
                    "GPU {{ $labels.gpu }} of run {{ $labels.run }} rank {{ $labels.rank }} is at "
                    "{{ $value }}°C",
                    f"Above {c.gpu_temperature_celsius:g}°C the GPU slows its clocks to protect "
                    "itself: check its cooling.",
                ),
                Rule(
                    "GPUThrottling",
                    f"max by ({RUN}, gpu, reason) (\n"
                    f'  traintel_gpu_throttled{{reason=~"{"|".join(c.gpu_throttle_reasons)}"}}\n'
                    ") == 1",
                    "Thermal and hardware slowdowns only: sw_power_cap (at the power limit) is "
                    "normal under full load, and the other reasons (application clocks, sync "
                    "boost, ...) are settings.",
                    c.gpu_throttle_for,
                    "warning",
                    "GPU {{ $labels.gpu }} of run {{ $labels.run }} rank {{ $labels.rank }} is "
                    "throttled ({{ $labels.reason }})",
                    f"Clocks held down for {_duration_words(c.gpu_throttle_for)}; this rank runs "
                    "slower than the others.",
                ),
                Rule(
                    "GPUIdleWhileTraining",
                    f"avg by ({RUN}) (traintel_gpu_utilization_ratio) < {c.gpu_idle_utilization:g}\n"
                    f"and on ({RUN})\n"
                    f"sum by ({RUN}) (rate(traintel_steps_total[5m])) > 0",
                    f"Steps complete, yet the GPUs are busy less than {c.gpu_idle_utilization:.0%} "
                    "of the time: input- or CPU-bound.",
                    c.gpu_idle_for,
                    "warning",
                    "GPUs of run {{ $labels.run }} rank {{ $labels.rank }} are "
                    "{{ $value | humanizePercentage }} busy while training",
                    "Steps complete, but the data pipeline, CPU-side work or a small batch keeps the "
                    "GPU waiting.",
                ),
                Rule(
                    "GPUXidNeedsReset",
                    f"sum by ({RUN}, {GPU}, xid) (increase(traintel_gpu_xid_errors_total{{{xids}}}"
                    f"[{c.gpu_xid_window}])) > 0\nor\n"
                    f"sum by ({RUN}, {GPU}, xid) (traintel_gpu_xid_errors_total{{{xids}}} unless "
                    f"traintel_gpu_xid_errors_total{{{xids}}} offset {c.gpu_xid_window}) > 0",
                    "An Xid error that NVIDIA's Xid catalog answers with a GPU reset or a node "
                    "reboot (the GPU fell off the bus, an uncontained ECC error, firmware stopped "
                    "answering...). The second line catches a counter whose first sample is already "
                    "above zero.",
                    "",
                    "critical",
                    "GPU {{ $labels.gpu }} on {{ $labels.hostname }} (run {{ $labels.run }} rank "
                    "{{ $labels.rank }}) reported Xid {{ $labels.xid }}: it needs a reset",
                    "The training on this GPU is lost or will be: drain the node, reset the GPU "
                    "(or reboot), and restart the run from its last checkpoint. "
                    "`traintel logs grep gpu_xid {{ $labels.run }}` shows the Xid's meaning.",
                ),
                Rule(
                    "GPUNVLinkErrors",
                    f"sum by ({RUN}, {GPU}, type) (increase(traintel_gpu_nvlink_errors_total"
                    f"[{c.gpu_nvlink_window}])) > {c.gpu_nvlink_error_count}",
                    f"More than {c.gpu_nvlink_error_count} NVLink errors of one type (CRC, replay, "
                    f"recovery) on one GPU in {_duration_words(c.gpu_nvlink_window)}: a degrading "
                    "link slows every collective of the run.",
                    "",
                    "warning",
                    "NVLink of GPU {{ $labels.gpu }} on {{ $labels.hostname }} (run "
                    "{{ $labels.run }} rank {{ $labels.rank }}) logs {{ $labels.type }} errors",
                    f"More than {c.gpu_nvlink_error_count} {{{{ $labels.type }}}} errors in "
                    f"{_duration_words(c.gpu_nvlink_window)}: check the link with "
                    "`nvidia-smi nvlink -e` and plan to drain the node.",
                ),
                Rule(
                    "GPURowRemapFailed",
                    f"max by ({RUN}, {GPU}) (traintel_gpu_row_remap_failed) == 1",
                    "The GPU could not remap a failing memory row to a spare: NVIDIA's RMA "
                    "condition.",
                    "",
                    "critical",
                    "GPU {{ $labels.gpu }} ({{ $labels.uuid }}) on {{ $labels.hostname }} failed to "
                    "remap a memory row",
                    "Its memory is failing and cannot be repaired in the field: drain the node and "
                    "replace the GPU. Run {{ $labels.run }} should resume elsewhere from its last "
                    "checkpoint.",
                ),
            ],
        ),
        Group(
            "traintel-pipeline",
            [
                Rule(
                    "TelemetryPipelineFailing",
                    "\nor ".join(
                        f"sum by (job, instance, exporter) (rate(otelcol_exporter_{what}_{signal}"
                        "[5m])) > 0"
                        for what in ("send_failed", "enqueue_failed")
                        for signal in ("metric_points", "log_records", "spans")
                    )
                    + "\nor max by (job, instance, exporter) (otelcol_exporter_queue_size / "
                    f"otelcol_exporter_queue_capacity) > {c.pipeline_queue_fraction:g}",
                    "The collector drops data (sends that failed for good, or a full queue), or its "
                    f"queue to a backend is more than {_fraction(c.pipeline_queue_fraction)} full. "
                    "The collector's own metrics keep their OTel instrument names (counters "
                    "without _total) with the reader in otel-collector/config.yaml.",
                    c.pipeline_for,
                    "warning",
                    "The collector's {{ $labels.exporter }} exporter is failing",
                    "Data for {{ $labels.exporter }} is dropped or backing up: dashboards and "
                    "alerts may miss it (local run records are complete).",
                ),
                Rule(
                    "StackComponentDown",
                    f'up{{job=~"{"|".join(c.stack_jobs)}"}} == 0',
                    "",
                    c.component_down_for,
                    "warning",
                    "{{ $labels.job }} ({{ $labels.instance }}) is down",
                    f"Prometheus could not scrape it for {_duration_words(c.component_down_for)}; "
                    "see `docker compose logs {{ $labels.job }}` or `traintel stack status`.",
                ),
                Rule(
                    "StackComponentRestarting",
                    f"max by (job, instance) (\n"
                    f"  changes(process_start_time_seconds{{{jobs}}}[{c.component_restart_window}])\n"
                    f"  or label_replace(resets(otelcol_process_uptime{{{jobs}}}"
                    f'[{c.component_restart_window}]), "restarts_from", "uptime", "", "")\n'
                    f"  or label_replace(floor(changes(up{{{jobs}}}[{c.component_restart_window}]) / 2),"
                    f' "restarts_from", "up", "", "")\n'
                    f") >= {c.component_restarts}",
                    "Restarts counted three ways, the largest wins: a new process start time (Go "
                    "programs: Prometheus, Alertmanager, Loki, Tempo), the collector's uptime counter "
                    "starting again (it exports no process_start_time_seconds), and down-up "
                    "transitions of `up` (a program killed and restarted between two scrapes shows "
                    "only in the first two). No `for`: the window is the duration.",
                    "",
                    "warning",
                    "{{ $labels.job }} ({{ $labels.instance }}) keeps restarting",
                    f"{{{{ $value }}}} restarts in the last "
                    f"{_duration_words(c.component_restart_window)} (alert from "
                    f"{c.component_restarts}): a crash loop. While it is down, runs' live "
                    "telemetry is lost or delayed (their local records are complete; `traintel "
                    "sync` fills the gaps). See `docker compose logs {{ $labels.job }}` or "
                    "`traintel stack status`.",
                ),
                Rule(
                    "RunExportsFailing",
                    f"sum by ({RUN}, signal) (increase(traintel_export_failures_total"
                    f"[{c.export_failure_window}])) > {c.export_failure_count}\nor\n"
                    f"sum by ({RUN}, signal) (traintel_export_failures_total unless "
                    f"traintel_export_failures_total offset {c.export_failure_window}) > "
                    f"{c.export_failure_count}",
                    "The runs' own count of OTLP exports that failed after the SDK's retries: the "
                    "only witness of a collector that flaps or refuses data, since the collector's "
                    "own send-failure counters stay at zero when the collector itself is what is "
                    "down. Counted once the run reaches a collector again (the counter is "
                    "cumulative); the second line catches a counter whose first sample is already "
                    "above the threshold (a run that started during an outage).",
                    "",
                    "warning",
                    "Run {{ $labels.run }} rank {{ $labels.rank }} fails to export "
                    "{{ $labels.signal }}",
                    f"More than {c.export_failure_count} failed {{{{ $labels.signal }}}} exports in "
                    f"{_duration_words(c.export_failure_window)}: the collector was unreachable, "
                    "refused or throttled them, and dashboards and alerts miss what they carried "
                    "(the local record has it: `traintel sync` sends it). "
                    "`traintel status` shows the last export error.",
                ),
                Rule(
                    "AlertmanagerNotificationsFailing",
                    "sum by (job, instance, integration) (rate(alertmanager_notifications_failed_total"
                    f"[{c.notification_failure_window}]))\n/\n"
                    "sum by (job, instance, integration) (rate(alertmanager_notifications_total"
                    f"[{c.notification_failure_window}]))\n> {c.notification_failure_ratio:g}",
                    "Alertmanager tries to deliver notifications and they fail (a wrong webhook URL, "
                    "an expired Slack token, an unreachable mail server): every other alert is then "
                    "silent where the team looks. This alert itself may not get through the same "
                    "integration; it shows in Prometheus, Alertmanager and Grafana.",
                    c.notification_failure_for,
                    "critical",
                    "Alertmanager {{ $labels.instance }} cannot deliver {{ $labels.integration }} "
                    "notifications",
                    f"{{{{ $value | humanizePercentage }}}} of its {{{{ $labels.integration }}}} "
                    f"notifications in the last {_duration_words(c.notification_failure_window)} "
                    f"failed, and failures have gone on for "
                    f"{_duration_words(c.notification_failure_for)}: alerts are not reaching "
                    "anyone. Its log says why (`docker compose logs alertmanager`).",
                ),
            ],
        ),
    ]


# --- rendering ----------------------------------------------------------------------------------

#: file name (without .yml) -> the groups it holds
FILES = {"recording": recording, "alerts": alerts}

_HEADERS = {
    "recording": (
        "Recording rules: the dashboards' and alerts' heavier expressions, precomputed every\n"
        "evaluation. Names follow level:metric:operation; every result keeps the labels project,\n"
        "run and rank (GPU ones also gpu, uuid, model_name, pci_bus_id and hostname)."
    ),
    "alerts": (
        "Alerts for a training team. Each has a severity label (critical: the run is lost or\n"
        "wasting its GPUs now; warning: it is slower or riskier than it should be), a summary, a\n"
        "description and an absolute runbook_url (one section per alert in docs/runbooks.md).\n"
        "Thresholds are starting points: tune them in traintel.stack.rules.Config.\n"
        "Unit tests: prometheus/tests/ (promtool test rules)."
    ),
}


def runbook_url(config: Config, alert: str) -> str:
    return f"{config.runbook_url_base}#{alert.lower()}"


def render(name: str, config: Config | None = None) -> str:
    """The text of ``prometheus/rules/<name>.yml``: YAML with each rule's comment above it."""
    config = config or Config()
    out = [f"# {line}".rstrip() for line in _HEADERS[name].splitlines()]
    out += [
        "#",
        "# GENERATED by src/traintel/stack/rules.py (`make generate`) from traintel.stack.rules.Config:",
        "# change the code, not this file. Keep to PromQL that Prometheus 2.42 understands.",
        "",
        "groups:",
    ]
    for group in FILES[name](config):
        out += [f"  - name: {group.name}", "    rules:"]
        for rule in group.rules:
            out += _rule_lines(rule, config)
    return "\n".join(out) + "\n"


def _rule_lines(rule: Rule, config: Config) -> list[str]:
    pad = " " * 8
    lines = [""] if rule.is_alert else []
    if rule.comment:
        lines += [f"{pad[:-2]}# {line}" for line in _wrap(rule.comment, 92)]
    lines.append(f"{pad[:-2]}- {'alert' if rule.is_alert else 'record'}: {rule.name}")
    if "\n" in rule.expr:
        lines.append(f"{pad}expr: |")
        lines += [f"{pad}  {line}".rstrip() for line in rule.expr.splitlines()]
    else:
        lines.append(
            f"{pad}expr: " + (f"'{rule.expr}'" if "'" not in rule.expr else _quote(rule.expr))
        )
    if not rule.is_alert:
        return lines
    if rule.for_:
        lines.append(f"{pad}for: {rule.for_}")
    lines += [
        f"{pad}labels:",
        f"{pad}  severity: {rule.severity}",
        f"{pad}annotations:",
        f"{pad}  summary: {_quote(rule.summary)}",
        f"{pad}  description: {_quote(rule.description)}",
        f"{pad}  runbook_url: {_quote(runbook_url(config, rule.name))}",
    ]
    return lines


def _quote(text: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is a subset of it)."""
    return json.dumps(text, ensure_ascii=False)


def _wrap(text: str, width: int) -> list[str]:
    """A comment's lines; a ``---`` separator line stays whole."""
    if text.startswith("---"):
        return [text]
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False) or [""]


def _minutes(duration: str) -> float:
    found = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", duration)
    if found is None:
        raise ValueError(f"{duration!r} is not a duration like 30s, 5m, 1h or 1d")
    number, unit = found.groups()
    return float(number) * {"s": 1 / 60, "m": 1, "h": 60, "d": 1440}[unit]


def _minutes_words(minutes: float) -> str:
    if minutes >= 60 and minutes % 60 == 0:
        hours = int(minutes // 60)
        return f"{hours} hour" + ("s" if hours != 1 else "")
    return f"{minutes:g} minute" + ("s" if minutes != 1 else "")


def _seconds_words(seconds: float) -> str:
    return _minutes_words(seconds / 60) if seconds >= 60 else f"{seconds:g} seconds"


def _duration_words(duration: str, adjective: bool = False, single: bool = False) -> str:
    """'5m' -> '5 minutes' ('5-minute' as an adjective; '1h' -> 'hour' after 'the last')."""
    words = (
        _minutes_words(_minutes(duration))
        if _minutes(duration) >= 1
        else f"{_minutes(duration) * 60:g} seconds"
    )
    if single and words.startswith("1 "):
        return words[2:]
    if adjective:
        number, unit = words.split(" ")
        return f"{number}-{unit.rstrip('s')}"
    return words


def _times(factor: float) -> str:
    return "twice" if factor == 2 else f"{factor:g} times"


def _fraction(ratio: float) -> str:
    return "half" if ratio == 0.5 else f"{ratio:.0%} of"


def write(directory: Path = DEFAULT_DIR, config: Config | None = None) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in FILES:
        path = directory / f"{name}.yml"
        path.write_text(render(name, config), encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m traintel.stack.rules", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("directory", nargs="?", type=Path, default=DEFAULT_DIR)
    parser.add_argument(
        "--runbook-url-base",
        default=DEFAULT_RUNBOOK_URL_BASE,
        help="absolute URL of the runbooks page (default: %(default)s)",
    )
    for field in fields(Config):
        if field.name != "runbook_url_base" and isinstance(field.default, (int, float, str)):
            parser.add_argument(
                f"--{field.name.replace('_', '-')}",
                type=type(field.default),
                default=field.default,
                help="default: %(default)s",
            )
    args = vars(parser.parse_args(sys.argv[1:] if argv is None else argv))
    directory = args.pop("directory")
    config = replace(Config(), **args)
    if not re.match(r"https?://", config.runbook_url_base):
        parser.error(
            "--runbook-url-base must be an absolute http(s) URL: Alertmanager and "
            "Grafana show runbook_url as a link"
        )
    for path in write(directory, config):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
