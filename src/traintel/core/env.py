"""Every environment variable traintel reads, in one place.

As ``opentelemetry.sdk.environment_variables`` does for the SDK: one constant per variable with its
default and meaning. Readers import the constant and call :meth:`Variable.get`; this module is the
only one in ``src/`` that touches ``os.environ`` (a test fails on a stray read elsewhere).
``docs/configuration.md`` is rendered from it with the ``traintel.init`` options
(``traintel.run.settings.render_markdown``; a test fails when the committed page drifts). The
``OTEL_*`` variables here are those traintel reads itself; the OpenTelemetry SDK reads the rest
(``OTEL_SERVICE_NAME``, the OTLP exporters' endpoints, headers, compression, certificates, ...).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

Group = Literal["run", "export", "launcher", "cli", "stack", "development"]
_N = TypeVar("_N", int, float)
_S = TypeVar("_S", bound=str)

#: headings of docs/configuration.md, in order
GROUPS: dict[Group, str] = {
    "run": "Runs (`traintel.init`)",
    "export": "OpenTelemetry variables traintel reads itself",
    "launcher": "Launchers: ranks, shared run id, GPUs",
    "cli": "Command line",
    "stack": "The native stack (`traintel stack`)",
    "development": "Development scripts (`make`)",
}


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, what it does, and what applies when it is unset."""

    name: str
    group: Group
    meaning: str
    #: what applies when unset, as documentation text (None: nothing, the feature is off)
    default: str | None = None

    def get(self) -> str | None:
        """The value, or None when the variable is unset or empty."""
        return os.environ.get(self.name) or None

    def raw(self) -> str | None:
        """The value as set, an empty one included (None only when unset): for variables where
        empty means something, as ``CUDA_VISIBLE_DEVICES=`` means no GPU."""
        return os.environ.get(self.name)

    def integer(self) -> int | None:
        """The value as an int; a clear error naming the variable when it is not one."""
        return self._convert(int, "an integer")

    def real(self) -> float | None:
        """The value as a float; a clear error naming the variable when it is not a number."""
        return self._convert(float, "a number")

    def _convert(self, kind: Callable[[str], _N], expected: str) -> _N | None:
        text = self.get()
        if text is None:
            return None
        try:
            return kind(text)
        except ValueError:
            raise ValueError(
                f"environment variable {self.name}={text!r} must be {expected}"
            ) from None

    def choice(self, allowed: tuple[_S, ...]) -> _S | None:
        """One of ``allowed``, matched in any case as the OpenTelemetry specification reads
        enumerations; a clear error naming the variable and the choices otherwise."""
        text = self.get()
        if text is None:
            return None
        for value in allowed:
            if value.lower() == text.strip().lower():
                return value
        raise ValueError(
            f"environment variable {self.name}={text!r} must be one of {', '.join(allowed)}"
        )

    def is_true(self) -> bool:
        """True when set to ``true`` (any case), as the OpenTelemetry specification reads flags."""
        return (self.get() or "").strip().lower() == "true"


def keep_sdk_importable() -> None:
    """opentelemetry-sdk reads ``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`` when its trace module is
    first imported, and a value that is no whole number (``abc``, ``-1``) made that import, and so
    ``traintel.init``, fail. Settings from the environment never stop a run: such a value is
    replaced by its default (128) in this process before any import of the SDK, with one warning
    naming the variable (``import traintel`` calls this)."""
    name = "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT"
    text = os.environ.get(name)
    if (
        text is None
        or text.strip().lower() == "unset"
        or (text.strip().isdigit() and text.strip().isascii())
    ):
        return
    os.environ[name] = "128"
    import logging

    logging.getLogger("traintel.export").warning(
        "traintel: %s=%r is refused: it must be a non-negative whole number (or 'unset'); "
        "using the default (128) and going on",
        name,
        text,
    )


def variable(name: str) -> Variable:
    """The registered variable ``name`` (a KeyError for one that is not: register it below)."""
    return BY_NAME[name]


def snapshot() -> dict[str, str]:
    """A copy of the whole environment, for the few readers that need all of it: the diagnostic
    report (filtered, secrets redacted), secret detection, and child processes of the stack."""
    return dict(os.environ)


# -- runs ------------------------------------------------------------------------------------
TRAINTEL_DIR = Variable(
    "TRAINTEL_DIR",
    "run",
    "Where runs write their records (`dir=`); `traintel logs`, `status`, `doctor` look there too.",
    "./traintel-runs",
)
TRAINTEL_PROJECT = Variable(
    "TRAINTEL_PROJECT", "run", "The project of runs started without `project=`.", "default"
)
TRAINTEL_HTTP_PORT = Variable(
    "TRAINTEL_HTTP_PORT",
    "run",
    "Serve /metrics, /healthz, /status, /events on 127.0.0.1:PORT (`http_port=`; 0: any free "
    "port).",
)
TRAINTEL_PROGRESS = Variable(
    "TRAINTEL_PROGRESS",
    "run",
    "Progress display: auto (a bar on a terminal, lines otherwise), bar, lines or off "
    "(`progress=`); it also wins over an integration turning traintel's bar off.",
    "auto",
)
TRAINTEL_SAMPLE_INTERVAL = Variable(
    "TRAINTEL_SAMPLE_INTERVAL",
    "run",
    "Seconds between GPU, CUDA allocator and system samples (`sample_interval=`; 0: off).",
    "5.0",
)
TRAINTEL_LOG_LEVEL = Variable(
    "TRAINTEL_LOG_LEVEL", "run", "Level of traintel's own logs (`log_level=`).", "INFO"
)
TRAINTEL_GRAFANA_ANNOTATIONS = Variable(
    "TRAINTEL_GRAFANA_ANNOTATIONS",
    "run",
    "`true`: mark the run's start, end, failures, errors, best evaluations and checkpoints as "
    "annotations in the Grafana at GRAFANA_URL (`grafana_annotations=`).",
    "false",
)
TRAINTEL_MODE = Variable(
    "TRAINTEL_MODE",
    "run",
    "`online`: export over OTLP as the run goes; `offline`: record everything, export nothing, "
    "send it later with `traintel sync` (`mode=`; docs/offline.md).",
    "online",
)
TRAINTEL_RUN_ID = Variable(
    "TRAINTEL_RUN_ID",
    "run",
    "A run id that every rank of a job shares (wins over the launchers' ids below).",
)

# -- OpenTelemetry -----------------------------------------------------------------------------
OTEL_SDK_DISABLED = Variable(
    "OTEL_SDK_DISABLED",
    "export",
    "`true` turns the OpenTelemetry SDK off, as the specification says: no export, no spans, no "
    "trace ids (the local record and /metrics are unaffected). For a run to sync later, use "
    "TRAINTEL_MODE=offline instead: it records spans and trace ids.",
    "false",
)
OTEL_EXPORTER_OTLP_ENDPOINT = Variable(
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "export",
    "The collector; the SDK exports there, `traintel demo` checks that something listens and "
    "`traintel doctor` checks it.",
    "http://localhost:4318",
)
OTEL_EXPORTER_OTLP_METRICS_ENDPOINT = Variable(
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "export",
    "The metrics endpoint as a full URL (…/v1/metrics), over OTEL_EXPORTER_OTLP_ENDPOINT; the SDK "
    "reads it, `traintel sync` names it.",
)
OTEL_EXPORTER_OTLP_LOGS_ENDPOINT = Variable(
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    "export",
    "The logs endpoint as a full URL (…/v1/logs), over OTEL_EXPORTER_OTLP_ENDPOINT.",
)
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT = Variable(
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "export",
    "The traces endpoint as a full URL (…/v1/traces), over OTEL_EXPORTER_OTLP_ENDPOINT.",
)
OTEL_METRIC_EXPORT_INTERVAL = Variable(
    "OTEL_METRIC_EXPORT_INTERVAL",
    "export",
    "Milliseconds between metric exports. Unset, traintel exports every 15000 (the SDK's 60000 "
    "is too coarse for step curves and stall alerts).",
    "15000",
)
OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE = Variable(
    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
    "export",
    "`cumulative`, `delta` or `lowmemory` (the SDK reads it): under `delta` counters and "
    "traintel's histograms are delta (each point: since the previous export), as the "
    "specification's table says; empty means unset.",
    "cumulative",
)
OTEL_RESOURCE_ATTRIBUTES = Variable(
    "OTEL_RESOURCE_ATTRIBUTES",
    "export",
    "Extra resource attributes (`key=value,...`, values percent-encoded; a malformed value is "
    "discarded whole, with a warning). Yours win over traintel's (`service.instance.id`, "
    "`host.name`, ...) except the run's labels (`project`, `run`, `rank`), which every data "
    "point carries too: traintel.init's, on the resource as on the points.",
)
OTEL_BSP_MAX_EXPORT_BATCH_SIZE = Variable(
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "export",
    "Spans per export request. Unset (and OTEL_BSP_MAX_QUEUE_SIZE unset), traintel sends 32: "
    "encoding the SDK's 512 at once delayed a paced loop by up to 23 ms.",
    "32",
)
OTEL_BSP_MAX_QUEUE_SIZE = Variable(
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "export",
    "Spans queued for export; set, the SDK's defaults and checks apply to the batch size too.",
    "2048",
)
OTEL_BLRP_MAX_EXPORT_BATCH_SIZE = Variable(
    "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE",
    "export",
    "Log records per export request; traintel's default is 32, as for spans.",
    "32",
)
OTEL_BLRP_MAX_QUEUE_SIZE = Variable(
    "OTEL_BLRP_MAX_QUEUE_SIZE",
    "export",
    "Log records queued for export; set, the SDK's defaults apply to the batch size too.",
    "2048",
)
OTEL_BSP_SCHEDULE_DELAY = Variable(
    "OTEL_BSP_SCHEDULE_DELAY", "export", "Milliseconds between span exports.", "5000"
)
OTEL_BSP_EXPORT_TIMEOUT = Variable(
    "OTEL_BSP_EXPORT_TIMEOUT", "export", "Milliseconds a span export may take.", "30000"
)
OTEL_BLRP_SCHEDULE_DELAY = Variable(
    "OTEL_BLRP_SCHEDULE_DELAY", "export", "Milliseconds between log record exports.", "1000"
)
OTEL_BLRP_EXPORT_TIMEOUT = Variable(
    "OTEL_BLRP_EXPORT_TIMEOUT", "export", "Milliseconds a log record export may take.", "30000"
)
OTEL_METRIC_EXPORT_TIMEOUT = Variable(
    "OTEL_METRIC_EXPORT_TIMEOUT", "export", "Milliseconds a metric export may take.", "30000"
)
OTEL_ATTRIBUTE_COUNT_LIMIT = Variable(
    "OTEL_ATTRIBUTE_COUNT_LIMIT",
    "export",
    "Attributes kept per span, span event, link and log record (the per-kind limits below win).",
    "128",
)
OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT = Variable(
    "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "export",
    "Characters kept of an attribute's value (`unset`: no limit).",
    "no limit",
)
OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT = Variable(
    "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "export", "Attributes kept per span.", "128"
)
OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT = Variable(
    "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "export",
    "Characters kept of a span attribute's value.",
    "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
)
OTEL_SPAN_EVENT_COUNT_LIMIT = Variable(
    "OTEL_SPAN_EVENT_COUNT_LIMIT", "export", "Events kept per span.", "128"
)
OTEL_SPAN_LINK_COUNT_LIMIT = Variable(
    "OTEL_SPAN_LINK_COUNT_LIMIT", "export", "Links kept per span.", "128"
)
OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT = Variable(
    "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT", "export", "Attributes kept per span event.", "128"
)
OTEL_LINK_ATTRIBUTE_COUNT_LIMIT = Variable(
    "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT", "export", "Attributes kept per span link.", "128"
)
OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT = Variable(
    "OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT",
    "export",
    "Attributes kept per log record.",
    "OTEL_ATTRIBUTE_COUNT_LIMIT",
)
OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT = Variable(
    "OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "export",
    "Characters kept of a log record attribute's value.",
    "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
)
OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER = Variable(
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",
    "export",
    "An entry point giving the OTLP/HTTP exporters an authenticated `requests.Session`; set "
    "(or one of the per-signal `..._HTTP_TRACES/METRICS/LOGS_CREDENTIAL_PROVIDER`), the "
    "exporters use it instead of traintel's session, and export failures are reported with the "
    "SDK's own reason.",
)
OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER = Variable(
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER",
    "export",
    "The credential provider of the traces exporter alone.",
)
OTEL_PYTHON_EXPORTER_OTLP_HTTP_METRICS_CREDENTIAL_PROVIDER = Variable(
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_METRICS_CREDENTIAL_PROVIDER",
    "export",
    "The credential provider of the metrics exporter alone.",
)
OTEL_PYTHON_EXPORTER_OTLP_HTTP_LOGS_CREDENTIAL_PROVIDER = Variable(
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_LOGS_CREDENTIAL_PROVIDER",
    "export",
    "The credential provider of the logs exporter alone.",
)

OTEL_TRACES_EXPORTER = Variable(
    "OTEL_TRACES_EXPORTER",
    "export",
    "Span exporters, comma-separated: otlp, console, none, or one a package registers (zipkin).",
    "otlp",
)
OTEL_METRICS_EXPORTER = Variable(
    "OTEL_METRICS_EXPORTER",
    "export",
    "Metric exporters: otlp, console, prometheus (traintel's own /metrics on "
    "OTEL_EXPORTER_PROMETHEUS_HOST:PORT), none.",
    "otlp",
)
OTEL_LOGS_EXPORTER = Variable(
    "OTEL_LOGS_EXPORTER", "export", "Log record exporters: otlp, console, none.", "otlp"
)
OTEL_EXPORTER_OTLP_PROTOCOL = Variable(
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "export",
    "OTLP transport: http/protobuf or grpc (the `traintel[grpc]` extra). The OTLP exporters read "
    "the endpoint, headers, compression, certificate and insecure settings themselves.",
    "http/protobuf",
)
OTEL_EXPORTER_OTLP_TRACES_PROTOCOL = Variable(
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "export",
    "The spans' OTLP transport.",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
)
OTEL_EXPORTER_OTLP_METRICS_PROTOCOL = Variable(
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    "export",
    "The metrics' OTLP transport.",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
)
OTEL_EXPORTER_OTLP_LOGS_PROTOCOL = Variable(
    "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
    "export",
    "The log records' OTLP transport.",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
)
OTEL_EXPORTER_OTLP_TIMEOUT = Variable(
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "export",
    "Milliseconds an OTLP export may take, as the specification says (opentelemetry-python "
    "itself reads seconds: traintel converts).",
    "10000",
)
OTEL_EXPORTER_OTLP_TRACES_TIMEOUT = Variable(
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "export",
    "The spans' OTLP timeout (milliseconds).",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
)
OTEL_EXPORTER_OTLP_METRICS_TIMEOUT = Variable(
    "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
    "export",
    "The metrics' OTLP timeout (milliseconds).",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
)
OTEL_EXPORTER_OTLP_LOGS_TIMEOUT = Variable(
    "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT",
    "export",
    "The log records' OTLP timeout (milliseconds).",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
)
OTEL_EXPORTER_OTLP_CERTIFICATE = Variable(
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "export",
    "The CA file that verifies the collector's TLS certificate (the OTLP exporters read it; over "
    "HTTP traintel makes it win over REQUESTS_CA_BUNDLE, which requests would otherwise apply).",
)
OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE = Variable(
    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
    "export",
    "The spans' CA file.",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
)
OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE = Variable(
    "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
    "export",
    "The metrics' CA file.",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
)
OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE = Variable(
    "OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE",
    "export",
    "The log records' CA file.",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
)
OTEL_EXPORTER_OTLP_HEADERS = Variable(
    "OTEL_EXPORTER_OTLP_HEADERS",
    "export",
    "Headers of every OTLP request (`name=value,...`, values URL-encoded), read by the SDK; "
    "traintel redacts their values everywhere it writes and keys `traintel sync`'s cursor by a "
    "hash of them (two tenants behind one URL keep two cursors).",
)
OTEL_EXPORTER_OTLP_TRACES_HEADERS = Variable(
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "export",
    "The spans' OTLP headers.",
    "OTEL_EXPORTER_OTLP_HEADERS",
)
OTEL_EXPORTER_OTLP_METRICS_HEADERS = Variable(
    "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    "export",
    "The metrics' OTLP headers.",
    "OTEL_EXPORTER_OTLP_HEADERS",
)
OTEL_EXPORTER_OTLP_LOGS_HEADERS = Variable(
    "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
    "export",
    "The log records' OTLP headers.",
    "OTEL_EXPORTER_OTLP_HEADERS",
)
OTEL_EXPORTER_PROMETHEUS_HOST = Variable(
    "OTEL_EXPORTER_PROMETHEUS_HOST",
    "export",
    "With OTEL_METRICS_EXPORTER=prometheus: the address /metrics binds (loopback unless "
    "`allow_remote_http=True`).",
    "localhost",
)
OTEL_EXPORTER_PROMETHEUS_PORT = Variable(
    "OTEL_EXPORTER_PROMETHEUS_PORT",
    "export",
    "With OTEL_METRICS_EXPORTER=prometheus: the port of /metrics (TRAINTEL_HTTP_PORT wins).",
    "9464",
)

# -- launchers -------------------------------------------------------------------------------
RANK = Variable("RANK", "launcher", "torchrun: this process's global rank.")
LOCAL_RANK = Variable("LOCAL_RANK", "launcher", "torchrun: the rank on this node.")
WORLD_SIZE = Variable("WORLD_SIZE", "launcher", "torchrun: the number of processes.")
TORCHELASTIC_RUN_ID = Variable(
    "TORCHELASTIC_RUN_ID",
    "launcher",
    "torchrun's `--rdzv-id`: the shared run id (the random UUID torchrun makes up under "
    "`--standalone` becomes traintel's form, `YYYYMMDD-HHMMSS-xxxxxx`).",
)
SLURM_PROCID = Variable("SLURM_PROCID", "launcher", "SLURM: the global rank.")
SLURM_LOCALID = Variable("SLURM_LOCALID", "launcher", "SLURM: the rank on this node.")
SLURM_NTASKS = Variable("SLURM_NTASKS", "launcher", "SLURM: the number of processes.")
SLURM_JOB_ID = Variable(
    "SLURM_JOB_ID", "launcher", "SLURM: with SLURM_STEP_ID, the shared run id slurm-JOB-STEP."
)
SLURM_STEP_ID = Variable("SLURM_STEP_ID", "launcher", "SLURM: the job step.", "0")
OMPI_COMM_WORLD_RANK = Variable("OMPI_COMM_WORLD_RANK", "launcher", "Open MPI: the global rank.")
OMPI_COMM_WORLD_LOCAL_RANK = Variable(
    "OMPI_COMM_WORLD_LOCAL_RANK", "launcher", "Open MPI: the rank on this node."
)
OMPI_COMM_WORLD_SIZE = Variable(
    "OMPI_COMM_WORLD_SIZE", "launcher", "Open MPI: the number of processes."
)
PMI_RANK = Variable("PMI_RANK", "launcher", "MPICH / Intel MPI: the global rank.")
MPI_LOCALRANKID = Variable(
    "MPI_LOCALRANKID", "launcher", "MPICH / Intel MPI: the rank on this node."
)
PMI_SIZE = Variable("PMI_SIZE", "launcher", "MPICH / Intel MPI: the number of processes.")
CUDA_VISIBLE_DEVICES = Variable(
    "CUDA_VISIBLE_DEVICES",
    "launcher",
    "The GPUs this process may use: GPU telemetry samples these (the local rank's own when "
    "several are visible) unless `all_gpus=True`.",
    "every GPU",
)

# -- command line ----------------------------------------------------------------------------
TRAINTEL_URL = Variable(
    "TRAINTEL_URL",
    "cli",
    "A live run's endpoint for `traintel status --url` and `traintel "
    "debug`, http://127.0.0.1:PORT.",
)
TRAINTEL_COLLECTOR_HEALTH_URL = Variable(
    "TRAINTEL_COLLECTOR_HEALTH_URL",
    "cli",
    "`traintel doctor`: the collector's health_check URL.",
    "each collector's host, port 13133",
)
TRAINTEL_PROMETHEUS_URL = Variable(
    "TRAINTEL_PROMETHEUS_URL",
    "cli",
    "Prometheus for `traintel doctor`, and the URL `traintel grafana push` gives Grafana.",
    "http://127.0.0.1:9090",
)
TRAINTEL_ALERTMANAGER_URL = Variable(
    "TRAINTEL_ALERTMANAGER_URL", "cli", "`traintel doctor`: Alertmanager.", "http://127.0.0.1:9093"
)
TRAINTEL_LOKI_URL = Variable(
    "TRAINTEL_LOKI_URL",
    "cli",
    "Loki for `traintel doctor`, and the URL `traintel grafana push` gives Grafana.",
    "http://127.0.0.1:3100",
)
TRAINTEL_TEMPO_URL = Variable(
    "TRAINTEL_TEMPO_URL",
    "cli",
    "Tempo for `traintel doctor`, and the URL `traintel grafana push` gives Grafana.",
    "http://127.0.0.1:3200",
)
TRAINTEL_GRAFANA_URL = Variable(
    "TRAINTEL_GRAFANA_URL", "cli", "`traintel doctor`: Grafana.", "http://127.0.0.1:3000"
)

GRAFANA_URL = Variable(
    "GRAFANA_URL",
    "cli",
    "A running Grafana for `traintel grafana push` (or `--url`) and for Grafana annotations "
    "(grafana-client's own name for it).",
)
GRAFANA_TOKEN = Variable(
    "GRAFANA_TOKEN",
    "cli",
    "The Grafana service account token of `traintel grafana push` and Grafana annotations; read "
    "from the environment only, never a command-line flag (shell history).",
)

# -- stack -----------------------------------------------------------------------------------
TRAINTEL_CACHE = Variable(
    "TRAINTEL_CACHE",
    "stack",
    "traintel's cache: built stack programs, Go caches, the Python environments of `make`.",
    "~/.cache/traintel",
)
TRAINTEL_STACK_DIR = Variable(
    "TRAINTEL_STACK_DIR",
    "stack",
    "Where `traintel stack up` keeps rendered configs, data, logs and pid files.",
    "$TRAINTEL_CACHE/stack",
)
GOFLAGS = Variable(
    "GOFLAGS", "stack", "Go flags for `traintel stack install`; `-modcacherw` is added."
)
TRAINTEL_LOKI_BIN = Variable(
    "TRAINTEL_LOKI_BIN",
    "stack",
    "A Loki binary for `traintel stack up` (traintel never builds Loki: AGPL).",
    "`loki` on PATH",
)
TRAINTEL_TEMPO_BIN = Variable(
    "TRAINTEL_TEMPO_BIN",
    "stack",
    "A Tempo binary for `traintel stack up` (never built: AGPL).",
    "`tempo` on PATH",
)
TRAINTEL_GRAFANA_BIN = Variable(
    "TRAINTEL_GRAFANA_BIN",
    "stack",
    "A Grafana server binary for `traintel stack up` (never built: AGPL).",
    "`grafana` on PATH",
)
GRAFANA_ADMIN_PASSWORD = Variable(
    "GRAFANA_ADMIN_PASSWORD",
    "stack",
    "Grafana's admin password, as in compose's .env: without it the native stack does not start "
    "Grafana (there is no default password).",
)
GRAFANA_ADMIN_USER = Variable(
    "GRAFANA_ADMIN_USER", "stack", "Grafana's admin user, as in compose's .env.", "admin"
)

# -- development -----------------------------------------------------------------------------
TRAINTEL_EXTRAS = Variable(
    "TRAINTEL_EXTRAS",
    "development",
    "The pyproject extras `scripts/venv.sh` installs (`make bench` uses dev,bench).",
    "dev",
)
PYTHON = Variable(
    "PYTHON",
    "development",
    "The interpreter `scripts/venv.sh` builds the environment with.",
    "python3",
)

#: every variable, in documentation order
VARIABLES: tuple[Variable, ...] = tuple(
    value for value in list(globals().values()) if isinstance(value, Variable)
)
BY_NAME: dict[str, Variable] = {variable.name: variable for variable in VARIABLES}


def variables_markdown() -> str:
    """The environment variables as Markdown tables, one per group (docs/configuration.md)."""
    lines: list[str] = []
    for group, title in GROUPS.items():
        lines += [f"### {title}", "", "| variable | default | meaning |", "|---|---|---|"]
        lines += [
            f"| `{v.name}` | {f'`{v.default}`' if v.default else '-'} | {v.meaning} |"
            for v in VARIABLES
            if v.group == group
        ]
        lines.append("")
    return "\n".join(lines)
