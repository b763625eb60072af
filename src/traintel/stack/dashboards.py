"""Grafana dashboards as code.

``python -m traintel.stack.dashboards [DIR]`` (``make generate``) writes ``grafana/dashboards/*.json``
from the builders below; the JSON is committed, provisioned into Grafana by docker compose, and
importable into any Grafana that has data sources with the uids ``prometheus`` and ``loki``.
Building needs the dev extra (``grafana-foundation-sdk``).

:func:`queries` lists every query the dashboards run (panels, annotations, variables) and
:func:`expand` fills in dashboard variables, so tests can run each query against a real
Prometheus and Loki.

Assumptions about the data, shared with the collector, Loki and Prometheus configuration:
Prometheus series carry ``project``, ``run`` and ``rank`` labels (names from
:mod:`traintel.core.catalog`; ``traintel:*`` names are recording rules from
``prometheus/rules/recording.yml``). Logs reach Loki over OTLP with ``service_name="traintel"``;
``project``, ``run``, ``rank`` and the run record's fields (``type``, ``event``, ``error_type``,
``severity``, ...) are filterable labels or structured metadata, and ``severity_text`` is the
Python level name (``INFO``, ``WARNING``, ...).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from grafana_foundation_sdk.builders import (
    common,
    dashboard,
    logs,
    loki,
    prometheus,
    stat,
    table,
    timeseries,
    xychart,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BigValueColorMode,
    BigValueGraphMode,
    BigValueTextMode,
    LegendDisplayMode,
    LegendPlacement,
    LogsSortOrder,
    StackingMode,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DataSourceRef,
    DataTransformerConfig,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat
from grafana_foundation_sdk.models.xychart import SeriesMapping, XYShowMode

from traintel.stack import project

#: Classic dashboard JSON schema version of the Grafana that docker-compose.yml pins (13.2): 42,
#: the last version of the v1 dashboard API's migrations. The generator's newest build still
#: writes 41, so it is set here (Grafana migrates a dashboard up to its own version on load,
#: never down: a version at most Grafana's is what matters).
SCHEMA_VERSION = 42
#: a builder of grafana-foundation-sdk (a panel, a query, a variable): the SDK has no type
#: information (pyproject.toml), so these names say what a value is for the reader
Builder = Any

PROMETHEUS = DataSourceRef(type_val="prometheus", uid="prometheus")
LOKI = DataSourceRef(type_val="loki", uid="loki")
#: The committed dashboards, in the repository next to the provisioning files.
DEFAULT_DIR = project.CHECKOUT / "grafana" / "dashboards"

#: Label matchers for the selected runs, and for the selected ranks of those runs.
RUNS = 'project=~"$project", run=~"$run"'
RANKS = RUNS + ', rank=~"$rank"'
#: Window of the moving average the by-step panels apply ($smooth): 15s is one export interval,
#: i.e. no smoothing; longer windows average that many exports.
SMOOTHING = ("15s", "1m", "5m", "15m")
#: The step axis of the by-step panels: the step count of each run at each export.
STEP_AXIS = f"max by (run) (traintel_steps_total{{{RUNS}}})"
#: The selected runs' log lines in Loki.
LOG_LINES = '{service_name="traintel"} | project=~"$project" | run=~"$run"'


# --- small builders -----------------------------------------------------------------------------


def _prom(
    expr: str,
    legend: str = "",
    table: bool = False,
    exemplar: bool = False,
    range_table: bool = False,
) -> Builder:
    query = prometheus.Dataquery().expr(expr).datasource(PROMETHEUS).legend_format(legend)
    if range_table:  # every sample in the time range, as a table (one row per time and series)
        query = query.range().format(PromQueryFormat.TABLE)
    elif table:
        query = query.instant().format(PromQueryFormat.TABLE)
    return query.exemplar(True) if exemplar else query


def _logql(expr: str, legend: str = "", instant: bool = False) -> Builder:
    query = loki.Dataquery().expr(expr).datasource(LOKI).legend_format(legend)
    return query.instant(True).range(False) if instant else query


def _with_targets(panel: Builder, targets: tuple[Builder, ...] | list[Builder]) -> Builder:
    """``targets`` on ``panel``, with refIds A, B, ... and the panel's data source theirs."""
    source = PROMETHEUS if isinstance(targets[0], prometheus.Dataquery) else LOKI
    panel = panel.datasource(source)
    for ref, target in zip("ABCDEFGHIJ", targets):
        panel = panel.with_target(target.ref_id(ref))
    return panel


def _graph(
    title: str,
    unit: str,
    *targets: Builder,
    description: str = "",
    stacked: bool = False,
    width: int = 12,
    height: int = 8,
) -> Builder:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .span(width)
        .height(height)
        .fill_opacity(25 if stacked else 8)
        .legend(
            common.VizLegendOptions()
            .show_legend(True)
            .display_mode(LegendDisplayMode.LIST)
            .placement(LegendPlacement.BOTTOM)
        )
    )
    if stacked:
        panel = panel.stacking(common.StackingConfig().mode(StackingMode.NORMAL))
    return _with_targets(panel, targets)


def _by_step(
    title: str,
    unit: str,
    *values: tuple[str, str],
    description: str = "",
    by: tuple[str, ...] = ("run",),
    width: int = 12,
    height: int = 8,
) -> Builder:
    """An XY chart with the step on the x axis, one line per run (and per ``values`` series).

    Prometheus stores values against time. The step axis is query A (each run's step count at
    each export), the ``values`` (PromQL grouped ``by (run)``, name) are B, C, ...; all come back
    as tables with one row per (time, run). Grafana then merges the tables on (Time, run), so
    a row holds the step and the values of one export, names the value columns, and partitions
    the rows by run: one frame per run, whose first number (the step) is the x axis. Values
    grouped by more than the run (``by``, e.g. eval metrics by metric) get the step axis with
    the same labels, so that the tables still merge row by row."""
    axis = STEP_AXIS
    if by != ("run",):
        axis = f"{STEP_AXIS} * on (run) group_right () (0 * {values[0][0]} + 1)"
    targets = [_prom(axis, table=True, range_table=True)]
    targets += [_prom(expr, table=True, range_table=True) for expr, _ in values]
    names = {
        f"Value #{ref}": name
        for ref, name in zip("ABCDEFGHIJ", ["step", *(name for _, name in values)])
    }
    panel = (
        xychart.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .span(width)
        .height(height)
        .mapping(SeriesMapping.AUTO)
        .show(XYShowMode.LINES)
        .line_width(1)
        .axis_label("")
        .legend(
            common.VizLegendOptions()
            .show_legend(True)
            .display_mode(LegendDisplayMode.LIST)
            .placement(LegendPlacement.BOTTOM)
        )
        .with_transformation(DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            DataTransformerConfig(
                id_val="organize", options={"excludeByName": {"Time": True}, "renameByName": names}
            )
        )
        .with_transformation(
            DataTransformerConfig(
                id_val="partitionByValues", options={"fields": list(by), "keepFields": False}
            )
        )
    )
    return _with_targets(panel, targets)


def _stat(
    title: str,
    unit: str,
    *targets: Builder,
    description: str = "",
    width: int = 4,
    text: BigValueTextMode = BigValueTextMode.AUTO,
) -> Builder:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .span(width)
        .height(4)
        .text_mode(text)
        .color_mode(BigValueColorMode.VALUE)
        .graph_mode(BigValueGraphMode.NONE)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    return _with_targets(panel, targets)


def _logs(title: str, *targets: Builder, description: str = "", height: int = 12) -> Builder:
    panel = (
        logs.Panel()
        .title(title)
        .description(description)
        .span(24)
        .height(height)
        .show_time(True)
        .wrap_log_message(True)
        .enable_log_details(True)
        .sort_order(LogsSortOrder.DESCENDING)
    )
    return _with_targets(panel, targets)


def _table(
    title: str, *targets: Builder, description: str = "", width: int = 24, height: int = 6
) -> Builder:
    panel = table.Panel().title(title).description(description).span(width).height(height)
    return _with_targets(panel, targets)


def _variable(
    name: str,
    label: str,
    query: str,
    multi: bool = True,
    include_all: bool = True,
    sort: VariableSort = VariableSort.ALPHABETICAL_ASC,
) -> Builder:
    variable = (
        dashboard.QueryVariable(name)
        .label(label)
        .query(query)
        .datasource(PROMETHEUS)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(sort)
        .multi(multi)
        .include_all(include_all)
    )
    return variable.all_value(".*") if include_all else variable


def _smoothing() -> Builder:
    return (
        dashboard.CustomVariable("smooth")
        .label("Smoothing")
        .values(",".join(SMOOTHING))
        .current(VariableOption(text=SMOOTHING[0], value=SMOOTHING[0], selected=True))
        .description(
            "Moving average over this window in the by-step panels; 15s (one "
            "export interval) shows every export unsmoothed."
        )
    )


def _variables(runs_multi: bool, ranks: bool = True) -> list[Builder]:
    out = [
        _variable("project", "Project", "label_values(traintel_run_info, project)"),
        # Run ids start with their start time (YYYYMMDD-HHMMSS-...): newest first.
        _variable(
            "run",
            "Run",
            'label_values(traintel_run_info{project=~"$project"}, run)',
            multi=runs_multi,
            include_all=False,
            sort=VariableSort.ALPHABETICAL_DESC,
        ),
    ]
    if ranks:
        out.append(
            _variable(
                "rank",
                "Rank",
                f"label_values(traintel_run_info{{{RUNS}}}, rank)",
                sort=VariableSort.NATURAL_ASC,
            )
        )
    return out


def _annotations() -> list[Builder]:
    """Milestones, checkpoints and errors from the run's log lines; new best evals from
    Prometheus. Extra Grafana fields the SDK does not model are added in :func:`_json`."""

    def from_logs(name: str, color: str, pipeline: str) -> Builder:
        return (
            dashboard.AnnotationQuery()
            .name(name)
            .datasource(LOKI)
            .enable(True)
            .icon_color(color)
            .expr(f"{LOG_LINES} | {pipeline}")
        )

    return [
        from_logs("Milestones", "blue", 'type="milestone"'),
        from_logs("Checkpoints", "green", 'event="checkpoint"'),
        from_logs("Errors", "red", 'type="error"'),
        from_logs("GPU Xid errors", "orange", 'event="gpu_xid"'),
        # A best value changed, or appeared (the first eval is the first best).
        dashboard.AnnotationQuery()
        .name("Best evals")
        .datasource(PROMETHEUS)
        .enable(True)
        .icon_color("purple")
        .expr(
            f"changes(traintel_eval_best{{{RUNS}}}[2m]) > 0 or "
            f"(traintel_eval_best{{{RUNS}}} unless traintel_eval_best{{{RUNS}}} offset 2m)"
        ),
    ]


#: Annotations that ``traintel.export.annotations`` posts into Grafana's own store (opt-in:
#: ``grafana_annotations=True``), shown by their tag; added to the JSON as is (the SDK's model of
#: a Grafana-store annotation query is incomplete).
GRAFANA_ANNOTATIONS = {
    "name": "Grafana annotations",
    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
    "enable": True,
    "hide": False,
    "iconColor": "yellow",
    "target": {"limit": 100, "matchAny": False, "tags": ["traintel"], "type": "tags"},
}

#: Per-annotation fields added to the JSON: how Grafana titles and tags the markers.
_ANNOTATION_EXTRAS = {
    "Milestones": {"tagKeys": "run,rank", "titleFormat": "Milestone"},
    "Checkpoints": {"tagKeys": "run,rank", "titleFormat": "Checkpoint"},
    "Errors": {"tagKeys": "run,rank,error_type", "titleFormat": "Error"},
    "GPU Xid errors": {"tagKeys": "run,rank,gpu", "titleFormat": "GPU Xid"},
    "Best evals": {"tagKeys": "run,metric", "titleFormat": "New best {{metric}}", "step": "1m"},
}


def _dashboard(
    uid: str,
    title: str,
    description: str,
    variables: list[Builder],
    rows: list[tuple[str, list[Builder]]],
    smoothing: bool = False,
) -> dict[str, Any]:
    board = (
        dashboard.Dashboard(f"traintel: {title}")
        .uid(uid)
        .description(description)
        .tags(["traintel"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .link(
            dashboard.DashboardLink("traintel dashboards")
            .type(DashboardLinkType.DASHBOARDS)
            .tags(["traintel"])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
        .annotations(_annotations())
    )
    for variable in [*variables, *([_smoothing()] if smoothing else [])]:
        board = board.with_variable(variable)
    for row_title, panels in rows:
        board = board.with_row(dashboard.Row(row_title))
        for panel in panels:
            board = board.with_panel(panel)
    return _json(board)


def _json(board: Builder) -> dict[str, Any]:
    """The builder's output as plain JSON data, with panel ids and annotation extras filled in."""
    data: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    data["schemaVersion"] = SCHEMA_VERSION  # the SDK's model has no setter for it
    for number, panel in enumerate(data["panels"], start=1):
        panel["id"] = number
    for annotation in data["annotations"]["list"]:
        annotation.update(_ANNOTATION_EXTRAS.get(annotation["name"], {}))
    data["annotations"]["list"].append(dict(GRAFANA_ANNOTATIONS))
    return data


# --- the dashboards -----------------------------------------------------------------------------


def training_overview() -> dict[str, Any]:
    return _dashboard(
        "traintel-training-overview",
        "Training overview",
        "One run: progress; loss, learning rate, gradient norm and evals against the step "
        "(with the min and max of every export interval); throughput and step time over time.",
        _variables(runs_multi=False),
        [
            (
                "Run",
                [
                    _stat(
                        "Status",
                        "none",
                        _prom(
                            f"count by (status) (traintel_run_status{{{RANKS}}} == 1)", "{{status}}"
                        ),
                        text=BigValueTextMode.NAME,
                        description="running, finished, failed, preempted or interrupted; pruned "
                        "or stopped for a trial a hyperparameter search ended early "
                        "(ranks counted).",
                    ),
                    _stat(
                        "Progress",
                        "percentunit",
                        _prom(f"min(traintel_run_progress_ratio{{{RANKS}}})"),
                        description="Planned steps done; empty while the total is unknown.",
                    ),
                    _stat("ETA", "s", _prom(f"max(traintel_run_eta_seconds{{{RANKS}}})")),
                    _stat("Step", "none", _prom(f"max(traintel_steps_total{{{RANKS}}})")),
                    _stat("Epoch", "none", _prom(f"max(traintel_epoch{{{RANKS}}})")),
                    _stat(
                        "Running for",
                        "s",
                        _prom(f"time() - min(traintel_run_start_time_seconds{{{RANKS}}})"),
                    ),
                ],
            ),
            (
                "Optimisation, by step",
                [
                    _by_step(
                        "Loss by step",
                        "none",
                        (
                            f"avg by (run) (avg_over_time(traintel_loss{{{RANKS}}}[$smooth]))",
                            "loss",
                        ),
                        (
                            f"max by (run) (max_over_time(traintel_logged_max{{{RANKS}, "
                            f'metric="loss"}}[$smooth]))',
                            "max",
                        ),
                        (
                            f"min by (run) (min_over_time(traintel_logged_min{{{RANKS}, "
                            f'metric="loss"}}[$smooth]))',
                            "min",
                        ),
                        description="The latest finite loss at each export (averaged over "
                        "$smooth), and the largest and smallest value logged "
                        "between exports: a spike shows in max even when it falls "
                        "between two exports. Ranks averaged.",
                    ),
                    _by_step(
                        "Learning rate by step",
                        "none",
                        (f"avg by (run) (traintel_learning_rate{{{RANKS}}})", "lr"),
                    ),
                    _by_step(
                        "Gradient norm by step",
                        "none",
                        (
                            f"avg by (run) (avg_over_time(traintel_grad_norm{{{RANKS}}}[$smooth]))",
                            "grad norm",
                        ),
                        (
                            f"max by (run) (max_over_time(traintel_logged_max{{{RANKS}, "
                            f'metric="grad_norm"}}[$smooth]))',
                            "max",
                        ),
                        description="Latest and largest gradient norm of each export.",
                    ),
                    _by_step(
                        "Logged metrics by step",
                        "none",
                        (
                            f"avg by (run, metric) (avg_over_time(traintel_metric{{{RANKS}}}"
                            "[$smooth]))",
                            "value",
                        ),
                        by=("run", "metric"),
                        description="Other numbers passed to run.log(), one line each.",
                    ),
                    _by_step(
                        "Eval metrics by step",
                        "none",
                        (f"max by (run, metric) (traintel_eval_value{{{RANKS}}})", "value"),
                        by=("run", "metric"),
                    ),
                    _graph(
                        "Non-finite values logged",
                        "none",
                        _prom(
                            f"sum by (metric) (increase(traintel_logged_nonfinite_total"
                            f"{{{RANKS}}}[$__rate_interval]))",
                            "{{metric}}",
                        ),
                        description="NaN and inf passed to run.log(), per key: kept out of the "
                        "curves, counted here (a NaN between two exports shows).",
                    ),
                ],
            ),
            (
                "Throughput and step time",
                [
                    _graph(
                        "Samples per second: the job and each rank",
                        "none",
                        _prom(f"sum(traintel:samples_per_second:rate2m{{{RANKS}}})", "job"),
                        _prom(f"traintel:samples_per_second:rate2m{{{RANKS}}}", "rank {{rank}}"),
                        description="The job's rate is every selected rank's added up (each rank "
                        "processes its own share of the data); a rank below the "
                        "others is a straggler or a data-loading bottleneck.",
                    ),
                    _graph(
                        "Tokens per second: the job and each rank",
                        "none",
                        _prom(f"sum(traintel:tokens_per_second:rate2m{{{RANKS}}})", "job"),
                        _prom(f"traintel:tokens_per_second:rate2m{{{RANKS}}}", "rank {{rank}}"),
                        description="As samples per second, for loops that log tokens.",
                    ),
                    _graph(
                        "Steps per second",
                        "none",
                        _prom(f"traintel:steps_per_second:rate2m{{{RANKS}}}", "rank {{rank}}"),
                    ),
                    _graph(
                        "Step time split",
                        "s",
                        _prom(
                            f"avg(traintel:data_wait_seconds_per_step:rate2m{{{RANKS}}})",
                            "waiting for data",
                        ),
                        _prom(
                            f"avg(traintel:compute_seconds_per_step:rate2m{{{RANKS}}})", "compute"
                        ),
                        stacked=True,
                        description="Mean seconds per step spent waiting for the next batch and "
                        "in the loop body (forward, backward, optimizer).",
                    ),
                    _graph(
                        "Step time",
                        "s",
                        _prom(
                            f"traintel:step_seconds:mean_rate2m{{{RANKS}}}", "mean rank {{rank}}"
                        ),
                        _prom(f"traintel:step_seconds:p95_rate2m{{{RANKS}}}", "p95 rank {{rank}}"),
                    ),
                    _graph(
                        "Data-wait fraction",
                        "percentunit",
                        _prom(f"traintel:data_wait_fraction:rate2m{{{RANKS}}}", "rank {{rank}}"),
                        description="Share of loop time spent waiting for data; above 30% the "
                        "run is input-bound.",
                    ),
                    _graph(
                        "Straggler ratio",
                        "none",
                        _prom(
                            f"traintel:step_seconds:straggler_ratio_rate2m{{{RANKS}}}",
                            "rank {{rank}}",
                        ),
                        description="Each rank's mean step time over the median of the run's "
                        "ranks: 1 is balanced.",
                    ),
                    _graph(
                        "Traced operations (p95)",
                        "s",
                        _prom(
                            "histogram_quantile(0.95, sum by (le, span_name) "
                            f"(rate(traces_span_metrics_duration_seconds_bucket{{{RANKS}}}"
                            "[$__rate_interval])))",
                            "{{span_name}}",
                            exemplar=True,
                        ),
                        description="Spans (run.span()/run.operation() blocks, epochs, sampled "
                        "steps) as the collector's span metrics; exemplars open the "
                        "trace in Tempo.",
                        width=24,
                    ),
                ],
            ),
            (
                "Evaluation",
                [
                    _graph(
                        "Eval metrics",
                        "none",
                        _prom(f"max by (metric) (traintel_eval_value{{{RANKS}}})", "{{metric}}"),
                    ),
                    _stat(
                        "Best values",
                        "none",
                        _prom(f"max by (metric) (traintel_eval_best{{{RANKS}}})", "{{metric}}"),
                        text=BigValueTextMode.VALUE_AND_NAME,
                        width=12,
                        description="Best value so far of each eval metric (min or max by metric).",
                    ),
                ],
            ),
        ],
        smoothing=True,
    )


def gpu_and_system() -> dict[str, Any]:
    gpu = "rank {{rank}} gpu {{gpu}}"
    return _dashboard(
        "traintel-gpu-system",
        "GPU and system",
        "Per rank and GPU: memory, utilisation, power, temperature, clocks and throttling; "
        "profiling activity next to step time; NVLink, PCIe, ECC and Xid errors; MIG "
        "instances and the cluster's dcgm-exporter fields; the CUDA caching allocator; CPU, "
        "memory and disk of the training process and host.",
        _variables(runs_multi=False),
        [
            (
                "GPU",
                [
                    _graph(
                        "GPU memory used",
                        "percentunit",
                        _prom(f"traintel:gpu_memory_used:ratio{{{RANKS}}}", gpu),
                        description="Framebuffer memory in use over its size (NVML).",
                    ),
                    _graph(
                        "GPU memory",
                        "bytes",
                        _prom(f"traintel_gpu_memory_used_bytes{{{RANKS}}}", f"used {gpu}"),
                        _prom(f"traintel_gpu_memory_total_bytes{{{RANKS}}}", f"total {gpu}"),
                    ),
                    _graph(
                        "GPU utilisation",
                        "percentunit",
                        _prom(f"traintel_gpu_utilization_ratio{{{RANKS}}}", f"kernel {gpu}"),
                        _prom(
                            f"traintel_gpu_memory_controller_utilization_ratio{{{RANKS}}}",
                            f"memory controller {gpu}",
                        ),
                        description="Kernel: share of time any kernel ran (a busy GPU can still "
                        "use few of its SMs: see Profiling activity); memory "
                        "controller: share of time memory was read or written.",
                    ),
                    _graph(
                        "Power",
                        "watt",
                        _prom(f"traintel_gpu_power_watts{{{RANKS}}}", f"draw {gpu}"),
                        _prom(f"traintel_gpu_power_limit_watts{{{RANKS}}}", f"limit {gpu}"),
                    ),
                    _graph(
                        "Temperature",
                        "celsius",
                        _prom(f"traintel_gpu_temperature_celsius{{{RANKS}}}", f"core {gpu}"),
                        _prom(
                            f"traintel_gpu_memory_temperature_celsius{{{RANKS}}}", f"memory {gpu}"
                        ),
                        description="Core and memory (HBM) temperature; HBM throttles near 95°C.",
                    ),
                    _graph(
                        "Clocks",
                        "hertz",
                        _prom(f"traintel_gpu_sm_clock_hertz{{{RANKS}}}", f"SM {gpu}"),
                        _prom(f"traintel_gpu_memory_clock_hertz{{{RANKS}}}", f"memory {gpu}"),
                    ),
                    _graph(
                        "Throttle reasons",
                        "none",
                        _prom(f"traintel_gpu_throttled{{{RANKS}}} == 1", f"{gpu} {{{{reason}}}}"),
                        description="1 while the clocks are held down for that reason. "
                        "sw_power_cap is normal at full load; thermal and hardware "
                        "slowdowns are not.",
                    ),
                    _graph(
                        "Energy",
                        "joule",
                        _prom(
                            f"increase(traintel_gpu_energy_joules_total{{{RANKS}}}"
                            "[$__rate_interval])",
                            gpu,
                        ),
                        description="Energy used per interval.",
                    ),
                ],
            ),
            (
                "Profiling activity (NVML GPM, Hopper and newer)",
                [
                    _graph(
                        "Step time and tensor-core time",
                        "s",
                        _prom(
                            f"traintel:step_seconds:mean_rate2m{{{RANKS}}}", "step rank {{rank}}"
                        ),
                        _prom(
                            f"traintel:step_seconds:mean_rate2m{{{RANKS}}}\n"
                            "* on (project, run, rank)\n"
                            f"avg by (project, run, rank) (traintel_gpu_tensor_active_ratio"
                            f"{{{RANKS}}})",
                            "tensor pipes busy rank {{rank}}",
                        ),
                        description="Mean step time, and the part of it the tensor pipes were "
                        "busy (step time times tensor activity). A widening gap is "
                        "time the matrix units wait: input, kernel launches, "
                        "communication or non-matmul work.",
                    ),
                    _graph(
                        "Profiling activity",
                        "percentunit",
                        _prom(f"traintel_gpu_engine_active_ratio{{{RANKS}}}", f"engine {gpu}"),
                        _prom(f"traintel_gpu_sm_active_ratio{{{RANKS}}}", f"SM active {gpu}"),
                        _prom(f"traintel_gpu_sm_occupancy_ratio{{{RANKS}}}", f"SM occupancy {gpu}"),
                        _prom(f"traintel_gpu_tensor_active_ratio{{{RANKS}}}", f"tensor {gpu}"),
                        _prom(f"traintel_gpu_dram_active_ratio{{{RANKS}}}", f"DRAM {gpu}"),
                        description="Means over each sampling interval (NVML GPM, as DCGM's "
                        "profiling fields). Low tensor and SM activity with a busy "
                        "engine: launch- or latency-bound; high DRAM: memory-bound.",
                    ),
                ],
            ),
            (
                "Links and errors",
                [
                    _graph(
                        "NVLink throughput",
                        "Bps",
                        _prom(
                            f"rate(traintel_gpu_nvlink_bytes_total{{{RANKS}}}[$__rate_interval])",
                            f"{{{{direction}}}} {gpu}",
                        ),
                        description="Data bytes over all NVLinks, protocol overhead excluded.",
                    ),
                    _graph(
                        "NVLink errors",
                        "none",
                        _prom(
                            f"increase(traintel_gpu_nvlink_errors_total{{{RANKS}}}"
                            "[$__rate_interval]) > 0",
                            f"{{{{type}}}} {gpu}",
                        ),
                        description="CRC errors are corrected by replays; a steady stream, or "
                        "recoveries, mean a degrading link.",
                    ),
                    _graph(
                        "PCIe throughput",
                        "Bps",
                        _prom(
                            f"traintel_gpu_pcie_bytes_per_second{{{RANKS}}}",
                            f"{{{{direction}}}} {gpu}",
                        ),
                    ),
                    _graph(
                        "ECC errors and PCIe replays",
                        "none",
                        _prom(
                            f"increase(traintel_gpu_ecc_errors_uncorrected_total{{{RANKS}}}"
                            "[$__rate_interval])",
                            f"uncorrected ECC {gpu}",
                        ),
                        _prom(
                            f"increase(traintel_gpu_pcie_replays_total{{{RANKS}}}"
                            "[$__rate_interval])",
                            f"PCIe replays {gpu}",
                        ),
                    ),
                    _graph(
                        "Xid errors",
                        "none",
                        _prom(
                            f"increase(traintel_gpu_xid_errors_total{{{RANKS}}}"
                            "[$__rate_interval]) > 0",
                            f"Xid {{{{xid}}}} {gpu}",
                        ),
                        description="NVIDIA driver errors by code; the Xid events below give "
                        "each one's meaning and NVIDIA's action.",
                    ),
                    _graph(
                        "Recovery action and row remapping",
                        "none",
                        _prom(f"traintel_gpu_recovery_action{{{RANKS}}}", f"recovery action {gpu}"),
                        _prom(f"traintel_gpu_row_remap_pending{{{RANKS}}}", f"remap pending {gpu}"),
                        _prom(f"traintel_gpu_row_remap_failed{{{RANKS}}}", f"remap failed {gpu}"),
                        _prom(
                            f"traintel_gpu_remapped_rows_total{{{RANKS}}}",
                            f"remapped rows ({{{{cause}}}}) {gpu}",
                        ),
                        description="Recovery action: 0 none, 1 reset the GPU, 2 reboot the "
                        "node, 3 drain peer-to-peer, 4 drain and reset. A pending "
                        "remap waits for a GPU reset; a failed one means replace.",
                    ),
                    _logs(
                        "Xid events",
                        _logql(f'{LOG_LINES} | rank=~"$rank" | event="gpu_xid"'),
                        description="Each Xid with its code, meaning, NVIDIA's action and the "
                        "GPU's labels.",
                        height=8,
                    ),
                ],
            ),
            (
                "MIG instances and dcgm-exporter",
                [
                    _graph(
                        "MIG instance memory",
                        "bytes",
                        _prom(
                            f"traintel_gpu_mig_memory_used_bytes{{{RANKS}}}",
                            "used rank {{rank}} gpu {{gpu}} GI {{gpu_i_id}}",
                        ),
                        _prom(
                            f"traintel_gpu_mig_memory_total_bytes{{{RANKS}}}",
                            "total rank {{rank}} gpu {{gpu}} GI {{gpu_i_id}}",
                        ),
                        description="Empty unless the run uses MIG instances.",
                    ),
                    _graph(
                        "MIG instance activity",
                        "percentunit",
                        _prom(
                            f"traintel_gpu_mig_engine_active_ratio{{{RANKS}}}",
                            "rank {{rank}} gpu {{gpu}} GI {{gpu_i_id}} ({{gpu_i_profile}})",
                        ),
                    ),
                    _graph(
                        "dcgm-exporter: tensor and DRAM activity",
                        "percentunit",
                        _prom(
                            "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE\n* on (UUID, GPU_I_ID) group_left "
                            f"(project, run, rank)\ntraintel:gpu_run:info{{{RANKS}}}",
                            "tensor rank {{rank}} gpu {{gpu}}",
                        ),
                        _prom(
                            "DCGM_FI_PROF_DRAM_ACTIVE\n* on (UUID, GPU_I_ID) group_left "
                            f"(project, run, rank)\ntraintel:gpu_run:info{{{RANKS}}}",
                            "DRAM rank {{rank}} gpu {{gpu}}",
                        ),
                        description="The cluster's dcgm-exporter fields of the GPUs this run "
                        "uses, joined on UUID (docs/gpu.md). Empty without "
                        "dcgm-exporter in the same Prometheus.",
                    ),
                    _graph(
                        "dcgm-exporter: GPU utilisation",
                        "percent",
                        _prom(
                            "DCGM_FI_DEV_GPU_UTIL\n* on (UUID, GPU_I_ID) group_left "
                            f"(project, run, rank)\ntraintel:gpu_run:info{{{RANKS}}}",
                            "rank {{rank}} gpu {{gpu}}",
                        ),
                    ),
                ],
            ),
            (
                "CUDA caching allocator",
                [
                    _graph(
                        "Allocator memory",
                        "bytes",
                        _prom(
                            f"traintel_cuda_memory_allocated_bytes{{{RANKS}}}",
                            "allocated rank {{rank}} {{device}}",
                        ),
                        _prom(
                            f"traintel_cuda_memory_reserved_bytes{{{RANKS}}}",
                            "reserved rank {{rank}} {{device}}",
                        ),
                        _prom(
                            f"traintel_cuda_memory_peak_allocated_bytes{{{RANKS}}}",
                            "peak rank {{rank}} {{device}}",
                        ),
                        description="Allocated: live tensors. Reserved: held by PyTorch's cache.",
                    ),
                    _graph(
                        "Reserved but unallocated",
                        "bytes",
                        _prom(
                            f"traintel_cuda_memory_reserved_unallocated_bytes{{{RANKS}}}",
                            "rank {{rank}} {{device}}",
                        ),
                        description="Cache and fragmentation: large values with OOMs suggest "
                        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True.",
                    ),
                    _graph(
                        "Allocation retries and OOMs",
                        "none",
                        _prom(
                            f"increase(traintel_cuda_alloc_retries_total{{{RANKS}}}"
                            "[$__rate_interval])",
                            "retries rank {{rank}} {{device}}",
                        ),
                        _prom(
                            f"increase(traintel_cuda_ooms_total{{{RANKS}}}[$__rate_interval])",
                            "OOMs rank {{rank}} {{device}}",
                        ),
                        description="Retries (cache flushed to satisfy an allocation) come "
                        "before out-of-memory errors.",
                    ),
                ],
            ),
            (
                "System",
                [
                    _graph(
                        "CPU",
                        "percentunit",
                        _prom(
                            f"traintel_process_cpu_utilization_ratio{{{RANKS}}}",
                            "process rank {{rank}}",
                        ),
                        description="Training process CPU use over the CPUs it may run on (its "
                        "affinity), 0-100 %.",
                    ),
                    _graph(
                        "Host CPU",
                        "percentunit",
                        _prom(f"traintel_host_cpu_utilization_ratio{{{RANKS}}}", "rank {{rank}}"),
                    ),
                    _graph(
                        "Memory",
                        "bytes",
                        _prom(
                            f"traintel_process_memory_rss_bytes{{{RANKS}}}",
                            "process RSS rank {{rank}}",
                        ),
                        _prom(
                            f"traintel_host_memory_used_bytes{{{RANKS}}}", "host used rank {{rank}}"
                        ),
                        _prom(
                            f"traintel_host_memory_total_bytes{{{RANKS}}}",
                            "host total rank {{rank}}",
                        ),
                    ),
                    _graph(
                        "Disk (run directory)",
                        "percentunit",
                        _prom(
                            f"traintel_disk_used_bytes{{{RANKS}}} / "
                            f"traintel_disk_total_bytes{{{RANKS}}}",
                            "rank {{rank}}",
                        ),
                    ),
                    _graph(
                        "Data-loader workers",
                        "none",
                        _prom(f"traintel_dataloader_workers{{{RANKS}}}", "rank {{rank}}"),
                    ),
                    _graph(
                        "Run record writer",
                        "none",
                        _prom(f"traintel_record_queue_depth{{{RANKS}}}", "queued rank {{rank}}"),
                        _prom(
                            f"increase(traintel_record_dropped_total{{{RANKS}}}[$__rate_interval])",
                            "dropped rank {{rank}}",
                        ),
                        description="Lines waiting for the background writer, and lines lost "
                        "(disk full, unwritable or deleted directory).",
                    ),
                    _graph(
                        "OTLP export failures",
                        "none",
                        _prom(
                            f"increase(traintel_export_failures_total{{{RANKS}}}"
                            "[$__rate_interval])",
                            "{{signal}} rank {{rank}}",
                        ),
                        description="Exports that failed: collector refused, hung, throttled "
                        "(429/503 with Retry-After) or rejected the data. The "
                        "count arrives with the first export that succeeds again; a "
                        "run's /metrics has it at once.",
                    ),
                ],
            ),
        ],
    )


def errors_and_logs() -> dict[str, Any]:
    lines = f'{LOG_LINES} | rank=~"$rank" | severity_text=~"$severity"'
    severity = (
        dashboard.CustomVariable("severity")
        .label("Level")
        .values("DEBUG,INFO,WARNING,ERROR,CRITICAL")
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )
    search = dashboard.TextBoxVariable("search").label("Search (regex)").default_value("")
    return _dashboard(
        "traintel-errors-logs",
        "Errors and logs",
        "Error counts by type and severity, the run's logs from Loki with a level filter and "
        "search, non-finite loss events and crashes.",
        [*_variables(runs_multi=True), severity, search],
        [
            (
                "Counts",
                [
                    _stat(
                        "Errors by type",
                        "none",
                        _prom(
                            f"sum by (error_type) (last_over_time(traintel_errors_total{{{RANKS}}}"
                            "[$__range]))",
                            "{{error_type}}",
                        ),
                        text=BigValueTextMode.VALUE_AND_NAME,
                        width=8,
                    ),
                    _stat(
                        "Errors by severity",
                        "none",
                        _prom(
                            f"sum by (severity) (last_over_time(traintel_errors_total{{{RANKS}}}"
                            "[$__range]))",
                            "{{severity}}",
                        ),
                        text=BigValueTextMode.VALUE_AND_NAME,
                        width=6,
                    ),
                    _stat(
                        "Log lines by level",
                        "none",
                        _logql(
                            f"sum by (severity_text) (count_over_time({lines} [$__range]))",
                            "{{severity_text}}",
                            instant=True,
                        ),
                        text=BigValueTextMode.VALUE_AND_NAME,
                        width=6,
                    ),
                    _stat(
                        "Non-finite losses",
                        "none",
                        _prom(
                            f"sum(last_over_time(traintel_nonfinite_loss_total{{{RANKS}}}"
                            "[$__range]))"
                        ),
                        width=2,
                    ),
                    _stat(
                        "CUDA OOMs",
                        "none",
                        _prom(
                            f"sum(last_over_time(traintel_cuda_ooms_total{{{RANKS}}}[$__range]))"
                        ),
                        width=2,
                    ),
                ],
            ),
            (
                "Over time",
                [
                    _graph(
                        "Errors",
                        "none",
                        _prom(
                            f"sum by (error_type) (increase(traintel_errors_total{{{RANKS}}}"
                            "[$__rate_interval]))",
                            "{{error_type}}",
                        ),
                        stacked=True,
                    ),
                    _graph(
                        "Log lines by level",
                        "none",
                        _logql(
                            f"sum by (severity_text) (count_over_time({lines} [$__auto]))",
                            "{{severity_text}}",
                        ),
                        stacked=True,
                    ),
                    _graph(
                        "Non-finite losses",
                        "none",
                        _prom(
                            f"increase(traintel_nonfinite_loss_total{{{RANKS}}}[$__rate_interval])",
                            "rank {{rank}}",
                        ),
                        description="NaN or infinite loss values, kept out of the loss curve.",
                        width=24,
                        height=6,
                    ),
                ],
            ),
            (
                "Logs",
                [
                    _logs(
                        "Run logs",
                        _logql(f'{lines} |~ "(?i)$search"'),
                        description="Filter with the Level and Search variables; click a line "
                        "for its fields and the link to its trace.",
                    ),
                    _logs(
                        "Errors",
                        _logql(f'{LOG_LINES} | rank=~"$rank" | type="error"'),
                        description="Classified errors: type, severity, traceback and hints are "
                        "in each line's fields. `traintel logs errors RUN -v` shows "
                        "the same from the run record.",
                        height=10,
                    ),
                    _logs(
                        "Non-finite loss events",
                        _logql(
                            f'{LOG_LINES} | event="nonfinite_loss" or error_type="nonfinite_loss"'
                        ),
                        height=8,
                    ),
                    _logs(
                        "Crashes",
                        _logql(f'{LOG_LINES} | type="error" | severity="critical"'),
                        _logql(f'{LOG_LINES} | type="run_end" | status!="finished"'),
                        description="Critical errors and runs that did not finish. The full "
                        "report is crash-report.json in the run directory "
                        "(`traintel report RUN`).",
                        height=8,
                    ),
                ],
            ),
        ],
    )


def run_comparison() -> dict[str, Any]:
    return _dashboard(
        "traintel-run-comparison",
        "Run comparison",
        "Several runs compared: pick them in the Run variable. Loss, learning rate, gradient "
        "norm and evals against each run's step (smoothing: $smooth); speed and GPU over time. "
        "Each line is one run (ranks averaged or summed).",
        _variables(runs_multi=True, ranks=False),
        [
            (
                "Runs",
                [
                    _table(
                        "Runs",
                        _prom(
                            f"max by (project, run, run_name, hostname, world_size) "
                            f"(traintel_run_info{{{RUNS}}})",
                            table=True,
                        ),
                        description="Run name, host and world size of each selected run.",
                    ),
                    _stat(
                        "Runs by status",
                        "none",
                        _prom(
                            f"count by (status) (max by (run, status) "
                            f"(traintel_run_status{{{RUNS}}}) == 1)",
                            "{{status}}",
                        ),
                        text=BigValueTextMode.VALUE_AND_NAME,
                        description="The selected runs by status: a sweep's pruned and stopped "
                        "trials apart from its failures.",
                    ),
                ],
            ),
            (
                "Optimisation, by step",
                [
                    _by_step(
                        "Loss by step",
                        "none",
                        (f"avg by (run) (avg_over_time(traintel_loss{{{RUNS}}}[$smooth]))", "loss"),
                        description="Each run's loss against its own step (ranks averaged), "
                        "smoothed over $smooth.",
                    ),
                    _by_step(
                        "Learning rate by step",
                        "none",
                        (f"avg by (run) (traintel_learning_rate{{{RUNS}}})", "lr"),
                    ),
                    _by_step(
                        "Gradient norm by step",
                        "none",
                        (
                            f"avg by (run) (avg_over_time(traintel_grad_norm{{{RUNS}}}[$smooth]))",
                            "grad norm",
                        ),
                    ),
                    _by_step(
                        "Eval metrics by step",
                        "none",
                        (f"max by (run, metric) (traintel_eval_value{{{RUNS}}})", "value"),
                        by=("run", "metric"),
                    ),
                    _table(
                        "Best eval values",
                        _prom(f"max by (run, metric) (traintel_eval_best{{{RUNS}}})", table=True),
                        width=12,
                        height=8,
                    ),
                    _graph(
                        "Progress",
                        "percentunit",
                        _prom(f"min by (run) (traintel_run_progress_ratio{{{RUNS}}})", "{{run}}"),
                    ),
                ],
            ),
            (
                "Speed",
                [
                    _graph(
                        "Samples per second (the job's)",
                        "none",
                        _prom(
                            f"max by (run) (traintel:samples_per_second:job_rate2m{{{RUNS}}})",
                            "{{run}}",
                        ),
                        description="Each run's every rank added up.",
                    ),
                    _graph(
                        "Tokens per second (the job's)",
                        "none",
                        _prom(
                            f"max by (run) (traintel:tokens_per_second:job_rate2m{{{RUNS}}})",
                            "{{run}}",
                        ),
                    ),
                    _graph(
                        "Mean step time",
                        "s",
                        _prom(
                            f"avg by (run) (traintel:step_seconds:mean_rate2m{{{RUNS}}})", "{{run}}"
                        ),
                    ),
                    _graph(
                        "Data-wait fraction",
                        "percentunit",
                        _prom(
                            f"avg by (run) (traintel:data_wait_fraction:rate2m{{{RUNS}}})",
                            "{{run}}",
                        ),
                    ),
                    _graph(
                        "GPU utilisation",
                        "percentunit",
                        _prom(
                            f"avg by (run) (traintel_gpu_utilization_ratio{{{RUNS}}})", "{{run}}"
                        ),
                    ),
                    _graph(
                        "Peak GPU memory used",
                        "percentunit",
                        _prom(
                            f"max by (run) (traintel:gpu_memory_used:ratio{{{RUNS}}})", "{{run}}"
                        ),
                    ),
                ],
            ),
        ],
        smoothing=True,
    )


#: file name (without .json) -> builder
DASHBOARDS = {
    "training-overview": training_overview,
    "gpu-and-system": gpu_and_system,
    "errors-and-logs": errors_and_logs,
    "run-comparison": run_comparison,
}


# --- generation and the query list --------------------------------------------------------------


def build() -> dict[str, dict[str, Any]]:
    """Every dashboard as JSON data, by file name."""
    return {name: make() for name, make in DASHBOARDS.items()}


def render(data: dict[str, Any]) -> str:
    """The committed form of one dashboard: stable key order, two-space indent."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(directory: Path = DEFAULT_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in build().items():
        path = directory / f"{name}.json"
        path.write_text(render(data), encoding="utf-8")
        paths.append(path)
    return paths


def load(directory: Path = DEFAULT_DIR) -> dict[str, dict[str, Any]]:
    """The committed dashboards, by file name."""
    return {
        path.stem: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(directory.glob("*.json"))
    }


class Query(NamedTuple):
    dashboard: str
    #: "panel", "annotation" or "variable"
    kind: str
    #: panel title, annotation name or variable name
    title: str
    #: data source uid: "prometheus" or "loki"
    datasource: str
    #: PromQL or LogQL, with dashboard variables unexpanded (see :func:`expand`). Variable
    #: queries are Grafana's ``label_values(SELECTOR, LABEL)``: run them as
    #: /api/v1/label/LABEL/values?match[]=SELECTOR.
    expr: str


def queries(dashboards: Mapping[str, dict[str, Any]] | None = None) -> list[Query]:
    """Every query the dashboards run (default: the committed dashboards)."""
    out = []
    for name, data in (load() if dashboards is None else dashboards).items():
        for panel in data["panels"]:
            for target in panel.get("targets", []):
                source = target.get("datasource") or panel["datasource"]
                out.append(Query(name, "panel", panel["title"], source["uid"], target["expr"]))
        for annotation in data["annotations"]["list"]:
            if annotation["datasource"]["type"] == "grafana":
                continue  # Grafana's own annotation store, by tag: no query of a data source
            out.append(
                Query(
                    name,
                    "annotation",
                    annotation["name"],
                    annotation["datasource"]["uid"],
                    annotation["expr"],
                )
            )
        for variable in data["templating"]["list"]:
            if variable["type"] == "query":
                out.append(
                    Query(
                        name,
                        "variable",
                        variable["name"],
                        variable["datasource"]["uid"],
                        variable["query"],
                    )
                )
    return out


#: Values :func:`expand` uses for Grafana's built-in variables, and the defaults of ours.
BUILTINS = {
    "__rate_interval": "4m",
    "__interval": "1m",
    "__auto": "1m",
    "__range": "1h",
    "smooth": SMOOTHING[0],
}


def expand(expr: str, values: Mapping[str, str] | None = None) -> str:
    """``expr`` with ``$name`` / ``${name}`` replaced as Grafana would: built-ins from
    :data:`BUILTINS`, dashboard variables from ``values``; any variable not given matches
    everything (``.*``), except the free-text ``search``, which is empty."""
    given = {**BUILTINS, "search": "", **(values or {})}

    def value(match: re.Match[str]) -> str:
        return given.get(match.group(1) or match.group(2), ".*")

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    directory = Path(args[0]) if args else DEFAULT_DIR
    for path in write(directory):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
