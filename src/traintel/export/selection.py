"""Which exporters a run's OTLP path uses, chosen by the OpenTelemetry SDK environment variables.

As the SDK specification's "Exporter Selection" says: ``OTEL_TRACES_EXPORTER``,
``OTEL_METRICS_EXPORTER`` and ``OTEL_LOGS_EXPORTER`` each hold a comma-separated list (default
``otlp``; ``none`` turns the signal off; ``console`` prints it; any other name is an exporter an
installed package registers under the SDK's entry-point group, as ``zipkin`` does). For ``otlp``,
``OTEL_EXPORTER_OTLP_<SIGNAL>_PROTOCOL`` or else ``OTEL_EXPORTER_OTLP_PROTOCOL`` picks the
transport: ``http/protobuf`` (the specification's default, and traintel's) or ``grpc`` (the
``traintel[grpc]`` extra).

The OTLP exporters read their endpoints, headers, compression and certificates themselves, per
signal and in general. Two exceptions, where opentelemetry-python (1.45) departs from the
specification and traintel corrects it:

- ``OTEL_EXPORTER_OTLP_TIMEOUT`` and ``OTEL_EXPORTER_OTLP_<SIGNAL>_TIMEOUT`` are milliseconds, but
  the SDK reads seconds (opentelemetry-python#4044), so ``10000`` would wait almost three hours:
  traintel reads them and hands the exporters seconds;
- over HTTP, requests lets ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` (set on many machines)
  replace a session's CA file (requests#3829), so ``OTEL_EXPORTER_OTLP_CERTIFICATE`` was silently
  ignored there and a private collector CA failed to verify: the HTTP exporters' sessions keep
  it (:func:`keep_own_ca`, in traintel's export session and otherwise a session of its own).

A configuration that names an exporter that cannot be made is said once, as a warning naming the
variable, and that exporter is left out: telemetry settings never stop a training run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any, Literal

from opentelemetry.sdk._logs.export import (
    ConsoleLogRecordExporter,
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter, SpanExportResult

from traintel.core import discovery, env, extras
from traintel.core.redact import redact_sdk_logs

log = logging.getLogger("traintel.export")

Signal = Literal["traces", "metrics", "logs"]
SIGNALS: tuple[Signal, ...] = ("traces", "metrics", "logs")

#: the variable choosing each signal's exporters
EXPORTERS: dict[Signal, env.Variable] = {
    "traces": env.OTEL_TRACES_EXPORTER,
    "metrics": env.OTEL_METRICS_EXPORTER,
    "logs": env.OTEL_LOGS_EXPORTER,
}
#: the per-signal endpoint variables (over OTEL_EXPORTER_OTLP_ENDPOINT), full URLs
ENDPOINTS: dict[Signal, env.Variable] = {
    "traces": env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    "metrics": env.OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
    "logs": env.OTEL_EXPORTER_OTLP_LOGS_ENDPOINT,
}
#: the path of each signal under an OTLP/HTTP base URL, as the specification gives it
PATHS: dict[Signal, str] = {"metrics": "v1/metrics", "logs": "v1/logs", "traces": "v1/traces"}
#: the specification's default OTLP/HTTP base URL
DEFAULT_HTTP_BASE = "http://localhost:4318"
#: the per-signal protocol variables (over OTEL_EXPORTER_OTLP_PROTOCOL)
PROTOCOLS: dict[Signal, env.Variable] = {
    "traces": env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    "metrics": env.OTEL_EXPORTER_OTLP_METRICS_PROTOCOL,
    "logs": env.OTEL_EXPORTER_OTLP_LOGS_PROTOCOL,
}
#: the per-signal CA file variables (over OTEL_EXPORTER_OTLP_CERTIFICATE)
CERTIFICATES: dict[Signal, env.Variable] = {
    "traces": env.OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE,
    "metrics": env.OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE,
    "logs": env.OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE,
}
#: the per-signal timeout variables (over OTEL_EXPORTER_OTLP_TIMEOUT), in milliseconds
TIMEOUTS: dict[Signal, env.Variable] = {
    "traces": env.OTEL_EXPORTER_OTLP_TRACES_TIMEOUT,
    "metrics": env.OTEL_EXPORTER_OTLP_METRICS_TIMEOUT,
    "logs": env.OTEL_EXPORTER_OTLP_LOGS_TIMEOUT,
}
#: the SDK's per-signal credential-provider variables (over the general one): a requests session
#: of the user's own, from an entry point, for the OTLP/HTTP exporter
CREDENTIAL_PROVIDERS: dict[Signal, env.Variable] = {
    "traces": env.OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER,
    "metrics": env.OTEL_PYTHON_EXPORTER_OTLP_HTTP_METRICS_CREDENTIAL_PROVIDER,
    "logs": env.OTEL_PYTHON_EXPORTER_OTLP_HTTP_LOGS_CREDENTIAL_PROVIDER,
}
PROTOCOL_NAMES = ("http/protobuf", "grpc")
#: the specification's default OTLP timeout
DEFAULT_TIMEOUT_MS = 10_000.0

#: (module, class) of the OTLP exporter of each protocol and signal
_OTLP: dict[str, dict[Signal, tuple[str, str]]] = {
    "http/protobuf": {
        "traces": ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "OTLPSpanExporter"),
        "metrics": ("opentelemetry.exporter.otlp.proto.http.metric_exporter", "OTLPMetricExporter"),
        "logs": ("opentelemetry.exporter.otlp.proto.http._log_exporter", "OTLPLogExporter"),
    },
    "grpc": {
        "traces": ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "OTLPSpanExporter"),
        "metrics": ("opentelemetry.exporter.otlp.proto.grpc.metric_exporter", "OTLPMetricExporter"),
        "logs": ("opentelemetry.exporter.otlp.proto.grpc._log_exporter", "OTLPLogExporter"),
    },
}
_CONSOLE: dict[Signal, type] = {
    "traces": ConsoleSpanExporter,
    "metrics": ConsoleMetricExporter,
    "logs": ConsoleLogRecordExporter,
}


def exporter_names(signal: Signal) -> list[str]:
    """The exporter names chosen for ``signal``, in order; [] when it is off (``none``)."""
    text = EXPORTERS[signal].get()
    if text is None:
        return ["otlp"]
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if names == ["none"]:
        return []
    if "none" in names:
        _warn(
            f"{EXPORTERS[signal].name}={text!r}: 'none' means no exporter and cannot be "
            "combined with others; ignoring it"
        )
    return list(dict.fromkeys(name for name in names if name != "none"))


def protocol(signal: Signal) -> str:
    """The OTLP transport of ``signal``: its own variable, the general one, or http/protobuf."""
    for variable in (PROTOCOLS[signal], env.OTEL_EXPORTER_OTLP_PROTOCOL):
        value = variable.get()
        if value is not None:
            return value.strip()
    return "http/protobuf"


def http_url(signal: Signal) -> str:
    """The OTLP/HTTP URL of ``signal`` as the SDK resolves it: the per-signal variable as it is,
    else the general one with the signal's path, else a running native stack's (``traintel
    stack up`` records its ports), else localhost:4318."""
    own = ENDPOINTS[signal].get()
    if own:
        return own
    base = (
        env.OTEL_EXPORTER_OTLP_ENDPOINT.get() or discovery.otlp_http_base() or DEFAULT_HTTP_BASE
    ).rstrip("/")
    return f"{base}/{PATHS[signal]}"


def _unset(signal: Signal) -> bool:
    """Whether no variable gives ``signal``'s OTLP endpoint (a native stack's then applies)."""
    return not (ENDPOINTS[signal].get() or env.OTEL_EXPORTER_OTLP_ENDPOINT.get())


def timeout_s(signal: Signal) -> float:
    """The OTLP timeout of ``signal`` in seconds, from the variables' milliseconds."""
    for variable in (TIMEOUTS[signal], env.OTEL_EXPORTER_OTLP_TIMEOUT):
        try:
            value = variable.real()
        except ValueError as error:
            _warn(f"{error} (milliseconds); using the next setting")
            continue
        if value is not None:
            if value > 0:
                return value / 1000
            _warn(
                f"{variable.name}={value:g} must be a positive number of milliseconds; "
                "using the next setting"
            )
    return DEFAULT_TIMEOUT_MS / 1000


def users_session(signal: Signal) -> bool:
    """Whether the user gives ``signal``'s OTLP/HTTP exporter a session of their own (a
    credential provider): the SDK then makes it, and traintel's session stands aside."""
    return bool(
        env.OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER.get()
        or CREDENTIAL_PROVIDERS[signal].get()
    )


def over_http(signal: Signal) -> bool:
    """Whether ``signal`` goes out through an OTLP/HTTP exporter (which takes a session)."""
    return "otlp" in exporter_names(signal) and protocol(signal) == "http/protobuf"


def exporters(signal: Signal, session: Any = None) -> list[Any]:
    """One exporter per chosen name that could be made (an exporter's failure is warned of);
    ``session``: the ``requests.Session`` of the OTLP/HTTP exporter, if any."""
    made = []
    for name in exporter_names(signal):
        exporter = _make(signal, name, session)
        if exporter is not None:
            made.append(exporter)
    return made


class EmptyMeansUnset(logging.Filter):
    """Drops the SDK's "Invalid value for OTEL_...: , using ..." for a variable set to the empty
    string: the specification reads an empty value as unset, and the SDK then uses the default
    it names anyway (OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE, ..._DEFAULT_HISTOGRAM_
    AGGREGATION in opentelemetry-python 1.45 warn for it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (
            str(record.msg).startswith("Invalid value for %s: %s")
            and len(args) >= 2
            and not str(args[1]).strip()
        )


#: the SDK loggers that read OTEL_* variables when an exporter is made
_SDK_VARIABLE_LOGGERS = (
    "opentelemetry.exporter.otlp.common._aggregation",
    "opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder",
)
_EMPTY_MEANS_UNSET = EmptyMeansUnset()


def _empty_means_unset() -> None:
    for name in _SDK_VARIABLE_LOGGERS:
        logger = logging.getLogger(name)
        if _EMPTY_MEANS_UNSET not in logger.filters:
            logger.addFilter(_EMPTY_MEANS_UNSET)


def _make(signal: Signal, name: str, session: Any = None) -> Any:
    redact_sdk_logs()  # the SDK prints a header it cannot parse, credentials and all
    variable = EXPORTERS[signal].name
    _empty_means_unset()
    if name == "otlp":
        transport = protocol(signal)
        if transport not in PROTOCOL_NAMES:
            _warn(
                f"{PROTOCOLS[signal].name} / OTEL_EXPORTER_OTLP_PROTOCOL={transport!r}: "
                f"opentelemetry-python supports {' and '.join(PROTOCOL_NAMES)}; no {signal} "
                "are exported"
            )
            return None
        if transport == "grpc":
            try:
                extras.require(f"{variable}=otlp with protocol grpc", "grpc")
            except extras.MissingExtra as missing:
                _warn(f"{missing}; no {signal} are exported")
                return None
        if transport == "http/protobuf":
            return otlp_http(signal, session)
        grpc_endpoint = discovery.otlp_grpc_endpoint() if _unset(signal) else None
        return _otlp_class(transport, signal)(endpoint=grpc_endpoint, timeout=timeout_s(signal))
    if name in ("console", "logging"):  # "logging": the specification's deprecated alias
        return _CONSOLE[signal]()
    if name == "prometheus" and signal == "metrics":
        return None  # the pull path: traintel's own /metrics (settings read the port)
    found = entry_points(group=f"opentelemetry_{signal}_exporter", name=name)
    if not found:
        _warn(
            f"{variable}: no exporter {name!r} is installed (known: otlp, console, none"
            f"{', prometheus' if signal == 'metrics' else ''}; others come from packages that "
            "register one, as opentelemetry-exporter-zipkin does)"
        )
        return None
    try:
        return next(iter(found)).load()()
    except Exception as error:  # a third-party exporter that fails to start
        _warn(f"{variable}: exporter {name!r} could not be made ({error})")
        return None


def otlp_http(
    signal: Signal, session: Any = None, endpoint: str | None = None, timeout: float | None = None
) -> Any:
    """``signal``'s OTLP/HTTP exporter as a live run makes it: the timeout from the variables'
    milliseconds, a session that keeps its CA file; ``endpoint`` and ``timeout`` (seconds)
    replace the variables' (``traintel sync --endpoint`` and its probe). With no endpoint
    variable set, a running native stack's collector is the endpoint (``traintel stack up
    --free-ports`` may have put it anywhere)."""
    redact_sdk_logs()
    if endpoint is None and _unset(signal) and discovery.otlp_http_base():
        endpoint = http_url(signal)
    return _otlp_class("http/protobuf", signal)(
        endpoint=endpoint,
        timeout=timeout or timeout_s(signal),
        session=session or (session_keeping_its_ca() if _certificate(signal) else None),
    )


def _otlp_class(transport: str, signal: Signal) -> Any:
    module, attribute = _OTLP[transport][signal]
    return getattr(__import__(module, fromlist=[attribute]), attribute)


def _certificate(signal: Signal) -> bool:
    return bool(CERTIFICATES[signal].get() or env.OTEL_EXPORTER_OTLP_CERTIFICATE.get())


def session_keeping_its_ca() -> Any:
    """A requests session whose own CA file (the exporter sets it from the certificate variable)
    wins over ``REQUESTS_CA_BUNDLE``; proxies and the rest of the environment still apply."""
    import requests

    class Session(requests.Session):
        def merge_environment_settings(
            self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
        ) -> Any:
            return keep_own_ca(
                self, super().merge_environment_settings(url, proxies, stream, verify, cert), verify
            )

    return Session()


def keep_own_ca(session: Any, merged: Any, verify: Any) -> Any:
    """``requests.Session.merge_environment_settings``'s result with the session's own CA file
    kept where the request named none (requests#3829)."""
    if verify is None and isinstance(session.verify, str):
        merged["verify"] = session.verify
    return merged


_warned: set[str] = set()


def _warn(message: str) -> None:
    """Say a configuration problem once per process (every run would otherwise repeat it)."""
    if message not in _warned:
        _warned.add(message)
        log.warning("traintel: %s", message)


class FanOutSpanExporter(SpanExporter):
    """Several span exporters behind one (``OTEL_TRACES_EXPORTER=otlp,console``)."""

    def __init__(self, exporters: Sequence[SpanExporter]) -> None:
        self.exporters = list(exporters)

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        results = [exporter.export(spans) for exporter in self.exporters]
        return (
            SpanExportResult.SUCCESS
            if all(r == SpanExportResult.SUCCESS for r in results)
            else SpanExportResult.FAILURE
        )

    def shutdown(self) -> None:
        for exporter in self.exporters:
            exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return all(exporter.force_flush(timeout_millis) for exporter in self.exporters)


class FanOutLogExporter(LogRecordExporter):
    """Several log record exporters behind one."""

    def __init__(self, exporters: Sequence[LogRecordExporter]) -> None:
        self.exporters = list(exporters)

    def export(self, batch: Sequence[Any]) -> LogRecordExportResult:
        results = [exporter.export(batch) for exporter in self.exporters]
        return (
            LogRecordExportResult.SUCCESS
            if all(r == LogRecordExportResult.SUCCESS for r in results)
            else LogRecordExportResult.FAILURE
        )

    def shutdown(self) -> None:
        for exporter in self.exporters:
            exporter.shutdown()  # type: ignore[no-untyped-call]  # the SDK's is unannotated

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return all(exporter.force_flush(timeout_millis) for exporter in self.exporters)


class FanOutMetricExporter(MetricExporter):
    """Several metric exporters behind one; the first one's temporality and aggregation apply."""

    def __init__(self, exporters: Sequence[MetricExporter]) -> None:
        first = exporters[0]
        super().__init__(
            preferred_temporality=first._preferred_temporality,
            preferred_aggregation=first._preferred_aggregation,
        )
        self.exporters = list(exporters)

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        results = [
            exporter.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
            for exporter in self.exporters
        ]
        return (
            MetricExportResult.SUCCESS
            if all(r == MetricExportResult.SUCCESS for r in results)
            else MetricExportResult.FAILURE
        )

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return all(
            exporter.force_flush(timeout_millis=timeout_millis) for exporter in self.exporters
        )

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        for exporter in self.exporters:
            exporter.shutdown(timeout_millis=timeout_millis, **kwargs)


def combined(exporters: list[Any], fan_out: type) -> Any:
    """None, the one exporter, or a fan-out over several."""
    if not exporters:
        return None
    return exporters[0] if len(exporters) == 1 else fan_out(exporters)
