"""OTLP export: metrics, traces and logs to an OpenTelemetry Collector.

Providers are private to the run (never the global ones, which belong to the application), read
the standard ``OTEL_*`` variables through the SDK, and are shut down with a hard time bound so an
unreachable collector cannot hold the process at exit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from opentelemetry import trace
from opentelemetry._logs import Logger, LogRecord, SeverityNumber
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics import Histogram as OtelHistogram
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    NumberDataPoint,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from traintel.core import env
from traintel.core.catalog import BY_NAME, METRICS
from traintel.core.forks import reset_in_child
from traintel.core.redact import Redactor
from traintel.core.state import RunState
from traintel.export import sdk_settings
from traintel.export.aligned import AlignedMetricReader
from traintel.export.health import (
    ExportGate,
    ExportHealth,
    ExportSession,
    GatedLogExporter,
    GatedSpanExporter,
    Signal,
    quiet_sdk_export_lines,
)
from traintel.export.readings import WINDOWED, Histograms, Reader, readers, window_readings
from traintel.export.tracer import RunTracerProvider
from traintel.record.format import ExportLine
from traintel.record.span_lines import RecordSpans, Write
from traintel.version import __version__

log = logging.getLogger("traintel.export")

#: spans and log records per export request (see ``traintel.export.sdk_settings``)
EXPORT_BATCH = sdk_settings.EXPORT_BATCH

#: a record line's level as OTLP severity (number, text)
_SEVERITY: dict[str, tuple[SeverityNumber, str]] = {
    "debug": (SeverityNumber.DEBUG, "DEBUG"),
    "info": (SeverityNumber.INFO, "INFO"),
    "warning": (SeverityNumber.WARN, "WARNING"),
    "error": (SeverityNumber.ERROR, "ERROR"),
    "critical": (SeverityNumber.FATAL, "CRITICAL"),
}
#: a record line's fields that are not log attributes: the body, the timestamp and the run's
#: identity (already resource attributes)
_NOT_ATTRIBUTES = {"message", "ts", "run", "rank", "project"}
#: a sampled span context: what the SDK's default sampler gives every span
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


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
        from traintel.export import selection as chosen

        # the SDK's default of 60 s is too coarse for step curves and stall alerts; a bad
        # value is the default, warned (the SDK raised at 0, its thread died at 1e15)
        interval = sdk_settings.metric_interval_ms()
        # a session of traintel's for each OTLP/HTTP exporter (failure reasons, Retry-After,
        # cut at shutdown), unless the user gives the SDK a credential provider of their own
        sessions = {
            signal: ExportSession()
            for signal in chosen.SIGNALS
            if chosen.over_http(signal) and not chosen.users_session(signal)
        }
        return cls(
            metric_exporter=chosen.combined(
                chosen.exporters("metrics", sessions.get("metrics")), chosen.FanOutMetricExporter
            ),
            metric_interval_ms=interval,
            span_exporter=chosen.combined(
                chosen.exporters("traces", sessions.get("traces")), chosen.FanOutSpanExporter
            ),
            log_exporter=chosen.combined(
                chosen.exporters("logs", sessions.get("logs")), chosen.FanOutLogExporter
            ),
            sessions=sessions,
        )


#: seconds between metric exports unless OTEL_METRIC_EXPORT_INTERVAL says otherwise
DEFAULT_INTERVAL_S = 15.0


def metric_interval_s() -> float:
    """Seconds between metric exports: ``OTEL_METRIC_EXPORT_INTERVAL`` (ms), else 15."""
    return sdk_settings.metric_interval_ms() / 1000


class HistogramsExporter(MetricExporter):
    """Adds to every export what observable instruments cannot carry: the run's histograms,
    built from ``Histograms``' bucket counts, and the min/max of the values logged since the
    previous export (``RunState.logged``, taken once per export).

    The OTel API has no observable histogram, and one ``Histogram.record`` per step would cost
    the record writer 7 µs where the bucket count it keeps anyway costs 0.4 µs. The points are
    cumulative since the run began (what the counts hold, and what Prometheus needs) unless the
    wrapped exporter prefers delta histograms
    (``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=delta`` or ``lowmemory``): then each
    point holds what was observed since the previous export, as the specification says.
    """

    def __init__(
        self, exporter: MetricExporter, gate: ExportGate, notes: ExportNotes | None = None
    ) -> None:
        super().__init__(
            preferred_temporality=exporter._preferred_temporality,
            preferred_aggregation=exporter._preferred_aggregation,
        )
        self.delta = (
            DeltaHistograms()
            if (exporter._preferred_temporality or {}).get(OtelHistogram)
            == AggregationTemporality.DELTA
            else None
        )
        self.exporter = exporter
        #: what each export adds (``RunMetrics.added``), set once the instruments exist
        self.added: Callable[[int], list[Metric]] = lambda now_ns: []
        #: counts failures; closed in a forked child (its copy of the run's state is frozen)
        self.gate = gate
        self.notes = notes or ExportNotes()

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        added = self.added(time.time_ns())
        data = with_added(metrics_data, self.delta(added) if self.delta else added)
        result = self.gate.run(
            lambda: self.exporter.export(data, timeout_millis=timeout_millis, **kwargs),
            MetricExportResult.SUCCESS,
            MetricExportResult.FAILURE,
        )
        count, latest = _points(data)
        self.notes(
            "metrics",
            result is MetricExportResult.SUCCESS,
            count,
            at=latest / 1e9 if latest else None,
        )
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.exporter.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.exporter.shutdown(timeout_millis=timeout_millis, **kwargs)


class DeltaHistograms:
    """Cumulative histogram points made delta: each export's point minus the previous one of
    its series (start time: the previous export). A series with nothing new is left out, as the
    SDK leaves out a delta point without measurements. Min and max are exact where the interval
    set them (the running minimum fell, the running maximum rose) and absent otherwise: the
    bucket counts cannot say what the smallest value of an interval was."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, frozenset[tuple[str, Any]]], HistogramDataPoint] = {}

    def __call__(self, metrics: list[Metric]) -> list[Metric]:
        out = []
        for metric in metrics:
            if not isinstance(metric.data, Histogram):
                out.append(metric)
                continue
            points = [
                p
                for p in map(lambda point: self._delta(metric.name, point), metric.data.data_points)
                if p is not None
            ]
            if points:
                out.append(
                    replace(
                        metric,
                        data=Histogram(
                            data_points=points, aggregation_temporality=AggregationTemporality.DELTA
                        ),
                    )
                )
        return out

    def _delta(self, name: str, point: HistogramDataPoint) -> HistogramDataPoint | None:
        key = (name, frozenset((point.attributes or {}).items()))
        last = self._last.get(key)
        self._last[key] = point
        if last is None:
            return point
        count = point.count - last.count
        if count <= 0:
            return None
        return replace(
            point,
            start_time_unix_nano=last.time_unix_nano,
            count=count,
            sum=point.sum - last.sum,
            bucket_counts=[a - b for a, b in zip(point.bucket_counts, last.bucket_counts)],
            min=point.min if point.min < last.min else None,  # type: ignore[arg-type]
            max=point.max if point.max > last.max else None,  # type: ignore[arg-type]
        )


def with_added(data: MetricsData, added: list[Metric]) -> MetricsData:
    """``data`` with ``added`` (``RunMetrics.added``) in its ``traintel`` scope."""
    if not added or not data.resource_metrics:
        return data
    resource, *others = data.resource_metrics  # one provider: one resource
    scopes = list(resource.scope_metrics)
    for i, scope in enumerate(scopes):
        if scope.scope.name == "traintel":
            scopes[i] = replace(scope, metrics=[*scope.metrics, *added])
            break
    else:
        scopes.append(
            ScopeMetrics(
                scope=InstrumentationScope("traintel", __version__), metrics=added, schema_url=""
            )
        )
    return replace(data, resource_metrics=[replace(resource, scope_metrics=scopes), *others])


class RunMetrics:
    """The run's metric instruments: every catalog metric registered on a meter provider of its
    own, reading the run state whenever ``reader`` collects, plus what observable instruments
    cannot carry (:meth:`added`). The live export's reader collects periodically; ``traintel
    sync``'s collects at the record's times, over a state it replays from the record: one code
    for both, so a synced point is what the live export would have sent."""

    def __init__(
        self,
        state: RunState,
        labels: dict[str, str],
        run_info: dict[str, str],
        histograms: Histograms,
        resource: Resource,
        reader: MetricReader,
        version: str = __version__,
    ) -> None:
        self.state = state
        self.labels = labels
        self.histograms = histograms
        self._attribute_dicts: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
        #: a window of its own: min/max of the values logged since the previous collection
        self._take_window = state.logged.reader()
        # no exemplars: observable instruments have none, and looking costs a sync's replay
        self.provider = MeterProvider(
            resource=resource,
            metric_readers=[reader],
            shutdown_on_exit=False,
            exemplar_filter=AlwaysOffExemplarFilter(),
        )
        meter = self.provider.get_meter("traintel", version)
        table = readers(run_info)
        for metric in METRICS:
            if metric.kind == "histogram" or metric.name in WINDOWED:
                continue  # added to each collection: see ``added``
            create = {
                "counter": meter.create_observable_counter,
                "updowncounter": meter.create_observable_up_down_counter,
            }.get(metric.kind, meter.create_observable_gauge)
            create(
                metric.name,
                callbacks=[self._callback(table[metric.name])],
                unit=metric.unit,
                description=metric.description,
            )

    def added(self, now_ns: int) -> list[Metric]:
        """The histograms' cumulative points and the min/max of each run.log key since the
        previous collection (taken now), as of ``now_ns``."""
        return [*self._histogram_metrics(now_ns), *self._window_metrics(now_ns)]

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
            # a NaN or infinite reading (a diverged loss) is not a point: the SDK would drop it
            # with a console warning at every export; the non-finite counters say it instead
            return [
                Observation(value, attributes(extra))
                for value, extra in reader(state)
                if value - value == 0
            ]

        return observe

    def _window_metrics(self, now_ns: int) -> list[Metric]:
        """Min and max of each run.log key since the previous collection, as gauges."""
        return [
            Metric(
                name=name,
                description=BY_NAME[name].description,
                unit=BY_NAME[name].unit,
                data=Gauge(
                    data_points=[
                        NumberDataPoint(
                            attributes=self._attributes(extra),
                            start_time_unix_nano=0,
                            time_unix_nano=now_ns,
                            value=value,
                        )
                        for value, extra in readings
                    ]
                ),
            )
            for name, readings in window_readings(self._take_window()).items()
            if readings
        ]

    def _histogram_metrics(self, now_ns: int) -> list[Metric]:
        """The histograms' cumulative points, one ``Metric`` per catalog histogram."""
        start = int(self.state.start_ts * 1e9)
        points: dict[str, list[HistogramDataPoint]] = {}
        for series in self.histograms.snapshot():
            label_names = BY_NAME[series.metric].labels
            extra = {label_names[0]: series.label or ""} if label_names else {}
            points.setdefault(series.metric, []).append(
                HistogramDataPoint(
                    attributes=self._attributes(extra),
                    start_time_unix_nano=start,
                    time_unix_nano=now_ns,
                    count=sum(series.counts),
                    sum=series.sum,
                    bucket_counts=series.counts,
                    explicit_bounds=series.bounds,
                    min=series.min,
                    max=series.max,
                )
            )
        return [
            Metric(
                name=name,
                description=BY_NAME[name].description,
                unit=BY_NAME[name].unit,
                data=Histogram(
                    data_points=data_points,
                    aggregation_temporality=AggregationTemporality.CUMULATIVE,
                ),
            )
            for name, data_points in points.items()
        ]


#: writes an ``export`` line to the record, during the run or after it ended
#: (``RecordWriter.note``)
Note = Callable[[Mapping[str, object]], None]


class ExportNotes:
    """The outcome of every live export, noted in the record as an ``export`` line: metrics by
    the time their points were collected, logs by their timestamps, spans by their ids, so that
    ``traintel sync`` sends only what never arrived (docs/offline.md)."""

    def __init__(self, write: Note | None = None) -> None:
        self.write = write

    def __call__(
        self,
        signal: Signal,
        ok: bool,
        count: int,
        at: float | None = None,
        delivered: list[int] | list[str] | None = None,
    ) -> None:
        write = self.write
        if write is None:
            return
        line: ExportLine = {
            "ts": time.time(),
            "type": "export",
            "level": "debug",
            "trace_id": None,
            "span_id": None,
            "signal": signal,
            "ok": ok,
            "count": count,
            "at": at,
            "delivered": delivered or [],
        }
        try:
            write(line)
        except Exception:  # noting must never break an export thread
            log.debug("could not note an export outcome", exc_info=True)


class _Noted:
    """An exporter wrapped so that every outcome is noted, with the keys of what was
    delivered (``key`` of each item)."""

    def __init__(
        self,
        exporter: Any,
        notes: ExportNotes,
        signal: Signal,
        success: Any,
        key: Callable[[Any], Any],
    ) -> None:
        self.exporter = exporter
        self.notes = notes
        self._signal, self._success, self._key = signal, success, key

    def export(self, items: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
        result = None
        try:
            result = self.exporter.export(items, *args, **kwargs)
        finally:
            ok = result is self._success
            self.notes(
                self._signal,
                ok,
                len(items),
                delivered=[self._key(item) for item in items] if ok else [],
            )
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return bool(self.exporter.force_flush(timeout_millis))


# _Noted.export takes what either base's export takes: mypy cannot see that one method fits both
class NotedSpanExporter(_Noted, SpanExporter):  # type: ignore[misc]
    """A span exporter whose every outcome is noted (the ids of the spans delivered)."""

    def __init__(self, exporter: SpanExporter, notes: ExportNotes) -> None:
        super().__init__(
            exporter,
            notes,
            "traces",
            SpanExportResult.SUCCESS,
            lambda span: format(span.context.span_id, "016x"),
        )


class NotedLogExporter(_Noted, LogRecordExporter):  # type: ignore[misc]
    """A log exporter whose every outcome is noted (the timestamps of the records delivered)."""

    def __init__(self, exporter: LogRecordExporter, notes: ExportNotes) -> None:
        super().__init__(
            exporter,
            notes,
            "logs",
            LogRecordExportResult.SUCCESS,
            lambda entry: entry.log_record.timestamp or 0,
        )


def _points(data: MetricsData) -> tuple[int, int]:
    """How many data points, and the latest point time (ns) among them."""
    count = latest = 0
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    count += 1
                    latest = max(latest, point.time_unix_nano)
    return count, latest


def log_record(line: Mapping[str, Any]) -> LogRecord:
    """A record line as an OTLP log record, for the live export and for ``traintel sync``
    alike: the line's time (observed then too), its level, its text as the body, its other
    fields as attributes, and the trace and span the line names."""
    ts = int(line["ts"] * 1e9)
    severity, text = _SEVERITY.get(str(line.get("level")), _SEVERITY["info"])
    attributes = {
        key: value for key, value in flat_attributes(line).items() if _attribute_ok(value)
    }
    return LogRecord(
        timestamp=ts,
        observed_timestamp=ts,
        context=_trace_context(line),
        severity_number=severity,
        severity_text=text,
        body=str(line.get("message") or ""),
        attributes=attributes,
        event_name=attributes.get("event"),
    )


def flat_attributes(line: Mapping[str, Any]) -> dict[str, Any]:
    """Record line -> OTLP attributes: scalars as they are, nested values as compact JSON."""
    out: dict[str, Any] = {}
    for key, value in line.items():
        if key in _NOT_ATTRIBUTES or value is None:
            continue
        if isinstance(value, (dict, list)):
            out[key] = orjson.dumps(value, default=str).decode()
        else:
            out[key] = value
    return out


def _trace_context(line: Mapping[str, Any]) -> Context | None:
    """The span a line names (hex ``trace_id`` and ``span_id``), as a context."""
    trace_id, span_id = line.get("trace_id"), line.get("span_id")
    if not isinstance(trace_id, str) or not isinstance(span_id, str):
        return None
    try:
        context = SpanContext(
            int(trace_id, 16), int(span_id, 16), is_remote=False, trace_flags=_SAMPLED
        )
    except ValueError:
        return None
    return trace.set_span_in_context(NonRecordingSpan(context)) if context.is_valid else None


def start_export(
    sinks: Sinks | None,
    state: RunState,
    labels: dict[str, str],
    run_info: dict[str, str],
    histograms: Histograms,
    resource: Resource,
    note: Note | None = None,
) -> OtlpExport | None:
    """The run's export to ``sinks`` (None: no OpenTelemetry at all; empty sinks: spans made
    and recorded, nothing exported), the SDK's retry chatter quieted."""
    if sinks is None:
        return None
    quiet_sdk_export_lines()
    return OtlpExport(state, labels, run_info, resource, sinks, histograms, note)


def resource_for(labels: dict[str, str], run_name: str, host: str) -> Resource:
    """service.name etc. from OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES (the SDK reads them),
    plus the run's identity so that logs and traces can be found by run in Loki and Tempo.

    One precedence: an attribute that is also a label of every data point (``project``, ``run``,
    ``rank``: traintel.init's arguments) is traintel's on the resource as on the points, and
    OTEL_RESOURCE_ATTRIBUTES setting it is said once and ignored; every other attribute the user
    sets wins over traintel's (``service.name``, ``host.name``, ``service.instance.id``), as the
    SDK lets OTEL_* win over its defaults. A malformed OTEL_RESOURCE_ATTRIBUTES is discarded
    whole, with a warning, as the specification says (the SDK keeps the well-formed pairs)."""
    ours = {
        "service.name": "traintel",
        "service.version": __version__,
        "service.instance.id": f"{labels['run']}/{labels['rank']}",
        "host.name": host,
        "traintel.run_name": run_name,
        **labels,
    }
    detected = dict(Resource.create({}).attributes)
    if str(detected.get("service.name", "")).startswith("unknown_service"):
        del detected["service.name"]
    text = env.OTEL_RESOURCE_ATTRIBUTES.get() or ""
    pairs, malformed = resource_attribute_pairs(text)
    if malformed:
        _warn_once(
            f"OTEL_RESOURCE_ATTRIBUTES: {malformed}: the whole value is discarded, as the "
            "OpenTelemetry specification says (write key=value pairs separated by commas, "
            "with ',', '=' and '%' in values percent-encoded)"
        )
        for key, value in pairs.items():  # what the SDK took of it (OTEL_SERVICE_NAME's differs)
            if detected.get(key) == value:
                del detected[key]
        pairs = {}
    if "service.instance.id" not in pairs:
        detected.pop("service.instance.id", None)  # the SDK's random one; ours names run/rank
    clashing = sorted(key for key in labels if key in detected and detected[key] != labels[key])
    if clashing:
        _warn_once(
            f"OTEL_RESOURCE_ATTRIBUTES sets {', '.join(clashing)}, which label every data "
            "point and come from traintel.init (project=, or TRAINTEL_PROJECT): "
            "traintel's are kept on the resource too, so that both agree"
        )
        for key in clashing:
            del detected[key]
    # OTEL_RESOURCE_ATTRIBUTES is the user's text: it goes out with every signal, redacted
    # (Resource, not Resource.create: that would read OTEL_RESOURCE_ATTRIBUTES once more)
    return Resource(ours).merge(Resource(Redactor.for_environment().deep(detected)))


def resource_attribute_pairs(text: str) -> tuple[dict[str, str], str]:
    """OTEL_RESOURCE_ATTRIBUTES as the specification reads it: ``key=value`` pairs separated by
    commas, values percent-decoded. Returns the pairs and, when one is malformed, the first
    malformed one ("" when all are well formed; an empty or blank value is unset)."""
    from urllib.parse import unquote

    pairs: dict[str, str] = {}
    if not text.strip():
        return pairs, ""
    for raw in text.split(","):
        key, sep, value = raw.partition("=")
        if not sep or not key.strip():
            return pairs, f"{raw.strip()!r} is no key=value pair"
        try:
            pairs[key.strip()] = unquote(value.strip(), errors="strict")
        except UnicodeDecodeError:
            return pairs, f"{raw.strip()!r} is not valid percent-encoding"
    return pairs, ""


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """A configuration problem, said once per process (every run would repeat it)."""
    if message not in _warned:
        _warned.add(message)
        logging.getLogger("traintel.export").warning("traintel: %s", message)


class OtlpExport:
    """The run's own OTel providers (metrics, traces, logs) reading the run state.

    The tracer provider exists whenever the run uses OpenTelemetry, exporting or not: an offline
    run's spans and trace ids are recorded (``traintel.record.span_lines``) for ``traintel sync``.
    In a forked child (a data-loader worker) the SDK restarts its export threads; the child's
    copy of the state is the parent's at the fork, frozen, so the child exports nothing of it
    (the same series from several processes would contradict each other)."""

    def __init__(
        self,
        state: RunState,
        labels: dict[str, str],
        run_info: dict[str, str],
        resource: Resource,
        sinks: Sinks,
        histograms: Histograms,
        note: Note | None = None,
    ) -> None:
        self.state = state
        self.labels = labels
        self.histograms = histograms
        self._providers: list[Any] = []
        self._exporters = [
            e
            for e in (sinks.metric_exporter, sinks.span_exporter, sinks.log_exporter)
            if e is not None
        ]
        self._sessions = list(sinks.sessions.values())
        health = ExportHealth(state)
        self.tracer: trace.Tracer = trace.NoOpTracer()
        self._logger: Logger | None = None
        self._metric_exporter: HistogramsExporter | None = None
        #: every live export's outcome, in the record
        self.notes = ExportNotes(note)

        if sinks.metric_exporter is not None:
            exporter = self._metric_exporter = HistogramsExporter(
                sinks.metric_exporter,
                ExportGate("metrics", health, sinks.sessions.get("metrics")),
                self.notes,
            )
            # collected at the same wall-clock boundaries on every rank (export/aligned.py); the
            # interval and timeout as traintel checked them (a bad OTEL_* value is its default)
            reader = AlignedMetricReader(
                exporter,
                sinks.metric_interval_ms
                if sinks.metric_interval_ms is not None
                else metric_interval_s() * 1000,
                sdk_settings.metric_timeout_ms(),
            )
            metrics = RunMetrics(state, labels, run_info, histograms, resource, reader)
            exporter.added = metrics.added
            reader.start()
            self.meter_provider = metrics.provider
            self._providers.append(self.meter_provider)
        # the SDK's settings checked by traintel: a bad OTEL_* value never stops a run
        self.tracer_provider = RunTracerProvider(resource, sdk_settings.span_limits())
        if sinks.span_exporter is not None:
            self.tracer_provider.add_span_processor(
                BatchSpanProcessor(
                    NotedSpanExporter(
                        GatedSpanExporter(
                            sinks.span_exporter,
                            ExportGate("traces", health, sinks.sessions.get("traces")),
                        ),
                        self.notes,
                    ),
                    **sdk_settings.span_processor_options(),
                )
            )
        self._providers.append(self.tracer_provider)
        self.tracer = self.tracer_provider.get_tracer("traintel", __version__)
        if sinks.log_exporter is not None:
            logger_provider = LoggerProvider(
                resource=resource,
                shutdown_on_exit=False,
                log_record_limits=sdk_settings.log_limits(),
            )
            logger_provider.add_log_record_processor(
                BatchLogRecordProcessor(
                    NotedLogExporter(
                        GatedLogExporter(
                            sinks.log_exporter,
                            ExportGate("logs", health, sinks.sessions.get("logs")),
                        ),
                        self.notes,
                    ),
                    **sdk_settings.log_processor_options(),
                )
            )
            self._providers.append(logger_provider)
            self._logger = logger_provider.get_logger("traintel", __version__)
        reset_in_child(self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        """The gates close themselves (nothing is sent); what is left here is the parent's."""
        self._logger = None
        self._providers, self._exporters, self._sessions = [], [], []

    def record_spans(self, write: Write, redactor: Redactor) -> None:
        """Every span the run ends in the record, exported or not, through ``write`` (the
        event pipeline's record-only door), for ``traintel sync``."""
        self.tracer_provider.add_span_processor(RecordSpans(write, redactor))

    # -- logs -----------------------------------------------------------------------------
    @property
    def exports_logs(self) -> bool:
        return self._logger is not None

    def emit_log(self, line: Mapping[str, Any]) -> None:
        """A finished record line as an OTLP log record (``log_record``)."""
        if self._logger is not None:
            self._logger.emit(log_record(line))

    # -- lifecycle ------------------------------------------------------------------------
    def shutdown(self, timeout: float) -> bool:
        """Flush and stop every provider within ``timeout`` seconds in total.

        The SDK's shutdown retries against a dead collector for as long as its export timeout;
        it runs on a daemon thread here, and when the deadline is near the exporters are shut
        down directly, which aborts their retry loops, so no export thread outlives the run.
        """
        if not self._providers:
            return True
        for session in self._sessions:  # a collector found down is not waited for (health)
            session.ending = True
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
            log.warning(
                "traintel: telemetry export did not finish within %.1fs (collector "
                "unreachable or slow); unsent data is dropped, the local record is "
                "complete",
                time.monotonic() - started,
            )
        self._providers = []
        return done


def _attribute_ok(value: Any) -> bool:
    return isinstance(value, (str, bool, int, float)) or (
        isinstance(value, (list, tuple))
        and all(isinstance(v, (str, bool, int, float)) for v in value)
    )
