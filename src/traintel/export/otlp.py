"""OTLP export: metrics, traces and logs to an OpenTelemetry Collector.

Providers are private to the run (never the global ones, which belong to the application), read
the standard ``OTEL_*`` variables through the SDK, and are shut down with a hard time bound so an
unreachable collector cannot hold the process at exit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from opentelemetry import trace
from opentelemetry._logs import Logger, SeverityNumber
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (AggregationTemporality, Gauge, Histogram,
                                              HistogramDataPoint, Metric, MetricExporter,
                                              MetricExportResult, MetricsData, NumberDataPoint,
                                              PeriodicExportingMetricReader, ScopeMetrics)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from .. import env
from ..version import __version__
from ..catalog import BY_NAME, METRICS
from ..redact import Redactor
from ..forks import reset_in_child
from ..state import RunState
from .health import (ExportGate, ExportHealth, ExportSession, GatedLogExporter,
                     GatedSpanExporter, Signal, quiet_sdk_export_lines)
from .readings import WINDOWED, Histograms, Reader, readers, window_readings

log = logging.getLogger("traintel.export")

#: Spans and log records per export request (the SDK's default is 512). Encoding a batch holds
#: the interpreter lock from start to end: with a span every step, 512 at a time made a paced loop
#: late by up to 23 ms, 32 at a time kept it on time (benchmarks/stalls.py).
EXPORT_BATCH = 32

_SEVERITY = {logging.DEBUG: SeverityNumber.DEBUG, logging.INFO: SeverityNumber.INFO,
             logging.WARNING: SeverityNumber.WARN, logging.ERROR: SeverityNumber.ERROR,
             logging.CRITICAL: SeverityNumber.FATAL}


@dataclass
class Sinks:
    """Where the three signals go. Default: the exporters the ``OTEL_*`` variables choose
    (``traintel.export.selection``: OTLP/HTTP unless told otherwise); ``traintel.testing`` swaps
    in in-memory exporters."""

    metric_exporter: MetricExporter | None = None
    #: milliseconds between metric exports; None: the SDK's (``OTEL_METRIC_EXPORT_INTERVAL``)
    metric_interval_ms: float | None = None
    span_exporter: SpanExporter | None = None
    log_exporter: LogRecordExporter | None = None
    #: each signal's HTTP session, when traintel made it: reasons for failures, Retry-After,
    #: connections cut at shutdown (see ``traintel.export.health``)
    sessions: dict[Signal, ExportSession] = field(default_factory=dict)

    @classmethod
    def otlp(cls) -> Sinks:
        from . import selection as chosen

        # the SDK's default of 60 s is too coarse for step curves and stall alerts
        interval = None if env.OTEL_METRIC_EXPORT_INTERVAL.get() else 15_000
        # a session of traintel's for each OTLP/HTTP exporter (failure reasons, Retry-After,
        # cut at shutdown), unless the user gives the SDK a credential provider of their own
        sessions = {signal: ExportSession() for signal, provider in _CREDENTIAL_PROVIDERS.items()
                    if chosen.over_http(signal) and not (
                        provider.get() or
                        env.OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER.get())}
        return cls(
            metric_exporter=chosen.combined(chosen.exporters("metrics", sessions.get("metrics")),
                                            chosen.FanOutMetricExporter),
            metric_interval_ms=interval,
            span_exporter=chosen.combined(chosen.exporters("traces", sessions.get("traces")),
                                          chosen.FanOutSpanExporter),
            log_exporter=chosen.combined(chosen.exporters("logs", sessions.get("logs")),
                                         chosen.FanOutLogExporter),
            sessions=sessions)


#: the SDK's per-signal credential-provider variables: a session of the user's own wins
_CREDENTIAL_PROVIDERS: dict[Signal, env.Variable] = {
    "metrics": env.OTEL_PYTHON_EXPORTER_OTLP_HTTP_METRICS_CREDENTIAL_PROVIDER,
    "traces": env.OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER,
    "logs": env.OTEL_PYTHON_EXPORTER_OTLP_HTTP_LOGS_CREDENTIAL_PROVIDER}


class HistogramsExporter(MetricExporter):
    """Adds to every export what observable instruments cannot carry: the run's histograms,
    built from ``Histograms``' bucket counts, and the min/max of the values logged since the
    previous export (``RunState.logged``, taken once per export).

    The OTel API has no observable histogram, and one ``Histogram.record`` per step would cost
    the record writer 7 µs where the bucket count it keeps anyway costs 0.4 µs. The points are
    cumulative since the run began, whatever temporality the wrapped exporter prefers for the
    rest (it is what the counts hold, and what Prometheus needs).
    """

    def __init__(self, exporter: MetricExporter, metrics: Callable[[], list[Metric]],
                 gate: ExportGate) -> None:
        super().__init__(preferred_temporality=exporter._preferred_temporality,
                         preferred_aggregation=exporter._preferred_aggregation)
        self.exporter = exporter
        self.metrics = metrics
        #: counts failures; closed in a forked child (its copy of the run's state is frozen)
        self.gate = gate

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: Any) -> MetricExportResult:
        return self.gate.run(lambda: self.exporter.export(
            self._with_histograms(metrics_data), timeout_millis=timeout_millis, **kwargs),
            MetricExportResult.SUCCESS, MetricExportResult.FAILURE)

    def _with_histograms(self, data: MetricsData) -> MetricsData:
        histograms = self.metrics()
        if not histograms or not data.resource_metrics:
            return data
        resource, *others = data.resource_metrics  # one provider: one resource
        scopes = list(resource.scope_metrics)
        for i, scope in enumerate(scopes):
            if scope.scope.name == "traintel":
                scopes[i] = replace(scope, metrics=[*scope.metrics, *histograms])
                break
        else:
            scopes.append(ScopeMetrics(scope=InstrumentationScope("traintel", __version__),
                                       metrics=histograms, schema_url=""))
        return replace(data, resource_metrics=[replace(resource, scope_metrics=scopes), *others])

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.exporter.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.exporter.shutdown(timeout_millis=timeout_millis, **kwargs)


def start_export(sinks: Sinks | None, state: RunState, labels: dict[str, str],
                 run_info: dict[str, str], histograms: Histograms) -> OtlpExport | None:
    """The run's export to ``sinks`` (None: no export), the SDK's retry chatter quieted."""
    if sinks is None:
        return None
    quiet_sdk_export_lines()
    resource = resource_for(labels, run_info["run_name"], run_info["host"])
    return OtlpExport(state, labels, run_info, resource, sinks, histograms)


def resource_for(labels: dict[str, str], run_name: str, host: str) -> Resource:
    """service.name etc. from OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES (the SDK reads them),
    plus the run's identity so that logs and traces can be found by run in Loki and Tempo."""
    ours = {"service.name": "traintel", "service.version": __version__,
            "service.instance.id": f"{labels['run']}/{labels['rank']}", "host.name": host,
            "traintel.run_name": run_name, **labels}
    detected = dict(Resource.create({}).attributes)
    if str(detected.get("service.name", "")).startswith("unknown_service"):
        del detected["service.name"]
    if "service.instance.id" not in (env.OTEL_RESOURCE_ATTRIBUTES.get() or ""):
        detected.pop("service.instance.id", None)  # the SDK's random one; ours names run/rank
    # OTEL_RESOURCE_ATTRIBUTES is the user's text: it goes out with every signal, redacted
    return Resource.create(ours).merge(Resource(Redactor.for_environment().deep(detected)))


class OtlpExport:
    """The run's own OTel providers (metrics, traces, logs) reading the run state.

    In a forked child (a data-loader worker) the SDK restarts its export threads; the child's
    copy of the state is the parent's at the fork, frozen, so the child exports nothing of it
    (the same series from several processes would contradict each other)."""

    def __init__(self, state: RunState, labels: dict[str, str], run_info: dict[str, str],
                 resource: Resource, sinks: Sinks, histograms: Histograms) -> None:
        self.state = state
        self.labels = labels
        self.histograms = histograms
        self._providers: list[Any] = []
        self._exporters = [e for e in (sinks.metric_exporter, sinks.span_exporter,
                                       sinks.log_exporter) if e is not None]
        self._sessions = list(sinks.sessions.values())
        health = ExportHealth(state)
        self._attribute_dicts: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
        self.tracer: trace.Tracer = trace.NoOpTracer()
        self._logger: Logger | None = None
        self._metric_exporter: HistogramsExporter | None = None

        if sinks.metric_exporter is not None:
            self._take_window = state.logged.reader()
            self._metric_exporter = HistogramsExporter(
                sinks.metric_exporter, self._added_metrics,
                ExportGate("metrics", health, sinks.sessions.get("metrics")))
            reader = PeriodicExportingMetricReader(
                self._metric_exporter, export_interval_millis=sinks.metric_interval_ms)
            self.meter_provider = MeterProvider(resource=resource, metric_readers=[reader],
                                                shutdown_on_exit=False)
            self._providers.append(self.meter_provider)
            self._register_instruments(readers(run_info))
        if sinks.span_exporter is not None:
            tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
            tracer_provider.add_span_processor(BatchSpanProcessor(
                GatedSpanExporter(sinks.span_exporter, ExportGate(
                    "traces", health, sinks.sessions.get("traces"))),
                max_export_batch_size=_export_batch(
                env.OTEL_BSP_MAX_EXPORT_BATCH_SIZE, env.OTEL_BSP_MAX_QUEUE_SIZE)))
            self._providers.append(tracer_provider)
            self.tracer = tracer_provider.get_tracer("traintel", __version__)
        if sinks.log_exporter is not None:
            logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
            logger_provider.add_log_record_processor(BatchLogRecordProcessor(
                GatedLogExporter(sinks.log_exporter, ExportGate(
                    "logs", health, sinks.sessions.get("logs"))),
                max_export_batch_size=_export_batch(
                env.OTEL_BLRP_MAX_EXPORT_BATCH_SIZE, env.OTEL_BLRP_MAX_QUEUE_SIZE)))
            self._providers.append(logger_provider)
            self._logger = logger_provider.get_logger("traintel", __version__)
        reset_in_child(self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        """The gates close themselves (nothing is sent); what is left here is the parent's."""
        self._logger = None
        self._providers, self._exporters, self._sessions = [], [], []

    # -- metrics --------------------------------------------------------------------------
    def _register_instruments(self, table: dict[str, Reader]) -> None:
        meter = self.meter_provider.get_meter("traintel", __version__)
        for metric in METRICS:
            if metric.kind == "histogram" or metric.name in WINDOWED:
                continue  # added to each export by HistogramsExporter
            create = (meter.create_observable_counter if metric.kind == "counter"
                      else meter.create_observable_gauge)
            create(metric.name, callbacks=[self._callback(table[metric.name])], unit=metric.unit,
                   description=metric.description)

    def _attributes(self, extra: dict[str, str]) -> dict[str, str]:
        """The run's labels plus ``extra``, one dict per series, built once."""
        if not extra:
            return self.labels
        key = tuple(extra.items())
        found = self._attribute_dicts.get(key)
        if found is None:
            found = self._attribute_dicts[key] = {**self.labels, **extra}
        return found

    def _callback(self, reader: Reader) -> Callable[[CallbackOptions], Iterable[Observation]]:
        state = self.state
        attributes = self._attributes

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(value, attributes(extra)) for value, extra in reader(state)]
        return observe

    def _added_metrics(self) -> list[Metric]:
        return [*self._histogram_metrics(), *self._window_metrics()]

    def _window_metrics(self) -> list[Metric]:
        """Min and max of each run.log key since the previous export, as gauges."""
        now = time.time_ns()
        return [Metric(name=name, description=BY_NAME[name].description, unit=BY_NAME[name].unit,
                       data=Gauge(data_points=[
                           NumberDataPoint(attributes=self._attributes(extra),
                                           start_time_unix_nano=0, time_unix_nano=now,
                                           value=value)
                           for value, extra in readings]))
                for name, readings in window_readings(self._take_window()).items() if readings]

    def _histogram_metrics(self) -> list[Metric]:
        """The histograms' cumulative points now, one ``Metric`` per catalog histogram."""
        start = int(self.state.start_ts * 1e9)
        now = time.time_ns()
        points: dict[str, list[HistogramDataPoint]] = {}
        for series in self.histograms.snapshot():
            label_names = BY_NAME[series.metric].labels
            extra = {label_names[0]: series.label or ""} if label_names else {}
            points.setdefault(series.metric, []).append(HistogramDataPoint(
                attributes=self._attributes(extra), start_time_unix_nano=start,
                time_unix_nano=now, count=sum(series.counts), sum=series.sum,
                bucket_counts=series.counts, explicit_bounds=series.bounds, min=series.min,
                max=series.max))
        return [Metric(name=name, description=BY_NAME[name].description,
                       unit=BY_NAME[name].unit,
                       data=Histogram(data_points=data_points,
                                      aggregation_temporality=AggregationTemporality.CUMULATIVE))
                for name, data_points in points.items()]

    # -- logs -----------------------------------------------------------------------------
    def emit_log(self, record: logging.LogRecord, body: str, attributes: dict[str, Any],
                 span: Any = None) -> None:
        if self._logger is None:
            return
        self._logger.emit(
            timestamp=int(record.created * 1e9),
            context=trace.set_span_in_context(span) if span is not None else None,
            severity_number=_SEVERITY.get(record.levelno, SeverityNumber.INFO),
            severity_text=record.levelname, body=body,
            attributes={k: v for k, v in attributes.items() if _attribute_ok(v)},
            event_name=attributes.get("event"))

    # -- lifecycle ------------------------------------------------------------------------
    def shutdown(self, timeout: float) -> bool:
        """Flush and stop every provider within ``timeout`` seconds in total.

        The SDK's shutdown retries against a dead collector for as long as its export timeout;
        it runs on a daemon thread here, and when the deadline is near the exporters are shut
        down directly, which aborts their retry loops, so no export thread outlives the run.
        """
        if not self._providers:
            return True
        deadline_ms = max(1, int(timeout * 1000))
        abort_s = min(0.5, timeout / 4)

        def stop() -> None:
            for provider in self._providers:
                try:
                    if hasattr(provider, "force_flush"):
                        provider.force_flush(deadline_ms)
                    provider.shutdown()
                except Exception:  # export failures are reported by the exporters themselves
                    log.debug("provider shutdown failed", exc_info=True)

        started = time.monotonic()
        # leave a little of the budget for the interpreter's own exit
        deadline = started + max(0.05, timeout - min(0.1, timeout / 10))
        worker = threading.Thread(target=stop, name="traintel-otlp-shutdown", daemon=True)
        worker.start()
        worker.join(max(0.0, deadline - abort_s - time.monotonic()))
        done = not worker.is_alive()
        if not done:
            # a hung collector: cut the reads in flight first, so that they fail as cut (an
            # exporter's shutdown closes its session, which fails a read as a bad socket)
            for session in self._sessions:
                session.abort()
            for exporter in self._exporters:
                try:
                    exporter.shutdown()
                except Exception:
                    log.debug("exporter shutdown failed", exc_info=True)
            worker.join(max(0.0, deadline - time.monotonic()))
            log.warning("traintel: telemetry export did not finish within %.1fs (collector "
                        "unreachable or slow); unsent data is dropped, the local record is "
                        "complete", time.monotonic() - started)
        self._providers = []
        return done


def _attribute_ok(value: Any) -> bool:
    return isinstance(value, (str, bool, int, float)) or (
        isinstance(value, (list, tuple)) and all(isinstance(v, (str, bool, int, float))
                                                 for v in value))


def _export_batch(*settings: env.Variable) -> int | None:
    """``EXPORT_BATCH``, unless the user set the processor's batch or queue size: then None, and
    the SDK applies the user's settings and its own checks."""
    if any(variable.get() for variable in settings):
        return None
    return EXPORT_BATCH
