"""Record lines as the OTLP items a live run sends: log records, spans, metric points.

Logs are built by the live export's own ``log_record`` (the same time, body, attributes and
trace ids); spans from ``span`` lines with their recorded ids and times; metric points by the
live export code over a replayed state (``traintel.sync.replay``), retimed to the point's time.
What leaves here is scrubbed again: sync is an exit like any other, and a record may come from
an older traintel or another machine's environment.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    Metric,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from traintel.core.redact import Redactor
from traintel.export.otlp import log_record
from traintel.record.format import RawLine
from traintel.sync.replay import REBUILT, BadLine, number, text

CUMULATIVE = AggregationTemporality.CUMULATIVE
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_KINDS = {kind.name.lower(): kind for kind in SpanKind}
_STATUS = {"unset": StatusCode.UNSET, "ok": StatusCode.OK, "error": StatusCode.ERROR}


def scope(start: RawLine) -> InstrumentationScope:
    """The scope the run's telemetry had: traintel at the version that recorded it."""
    version = start.get("traintel_version")
    return InstrumentationScope("traintel", version if isinstance(version, str) else None)


def resource(start: RawLine, redactor: Redactor) -> Resource | None:
    """The resource the segment's ``run_start`` recorded (None for records before it was)."""
    attributes = start.get("resource")
    if not isinstance(attributes, dict) or not attributes:
        return None
    return Resource({str(k): v for k, v in redactor.deep(attributes).items() if _attribute_ok(v)})


def log(
    line: RawLine, where: Resource, of: InstrumentationScope, redactor: Redactor
) -> ReadableLogRecord:
    """A record line as the OTLP log record the live export made of it."""
    number(line.get("ts"))
    clean = redactor.deep(dict(line))
    return ReadableLogRecord(log_record=log_record(clean), resource=where, instrumentation_scope=of)


def span(
    line: RawLine, where: Resource, of: InstrumentationScope, redactor: Redactor
) -> ReadableSpan:
    """A ``span`` line as the span the live export sent: its ids, times, status, events."""
    trace_id, span_id = _hex(line.get("trace_id"), 32), _hex(line.get("span_id"), 16)
    parent_id = line.get("parent_span_id")
    parent = (
        None if parent_id is None else SpanContext(trace_id, _hex(parent_id, 16), False, _SAMPLED)
    )
    start, end = _nanos(line.get("start_ns")), _nanos(line.get("end_ns"))
    if end < start:
        raise BadLine("span ends before it starts")
    status = _STATUS.get(str(line.get("status")), StatusCode.UNSET)
    message = line.get("status_message")
    events = line.get("events") or []
    if not isinstance(events, list):
        raise BadLine("span events")
    return ReadableSpan(
        name=text(line.get("name")),
        context=SpanContext(trace_id, span_id, False, _SAMPLED),
        parent=parent,
        resource=where,
        attributes=_attributes(line.get("attributes"), redactor),
        events=[
            Event(
                text(event.get("name")),
                _attributes(event.get("attributes"), redactor),
                _nanos(event.get("time_ns")),
            )
            for event in events
            if isinstance(event, dict)
        ],
        kind=_KINDS.get(str(line.get("kind")), SpanKind.INTERNAL),
        status=Status(
            status,
            redactor.text(message)
            if isinstance(message, str) and status is StatusCode.ERROR
            else None,
        ),
        start_time=start,
        end_time=end,
        instrumentation_scope=of,
    )


def retimed(
    data: MetricsData, time_ns: int, start_ns: int, leave_out: frozenset[str] = frozenset()
) -> MetricsData:
    """The live export's points as of ``time_ns``: every point at that time, cumulative ones
    counted from the segment's start, and only the metrics the record can rebuild (but
    ``leave_out``)."""
    resources = []
    for resource_metrics in data.resource_metrics:
        scopes = []
        for scope_metrics in resource_metrics.scope_metrics:
            metrics = [
                _retimed(metric, time_ns, start_ns)
                for metric in scope_metrics.metrics
                if metric.name in REBUILT
                and metric.name not in leave_out
                and metric.data.data_points
            ]
            if metrics:
                scopes.append(replace(scope_metrics, metrics=metrics))
        if scopes:
            resources.append(replace(resource_metrics, scope_metrics=scopes))
    return MetricsData(resource_metrics=resources)


def _retimed(metric: Metric, time_ns: int, start_ns: int) -> Metric:
    data = metric.data
    if isinstance(data, Sum):
        start = start_ns if data.aggregation_temporality is CUMULATIVE else None
        return replace(
            metric,
            data=replace(
                data,
                data_points=[
                    replace(
                        p,
                        time_unix_nano=time_ns,
                        start_time_unix_nano=start or p.start_time_unix_nano,
                    )
                    for p in data.data_points
                ],
            ),
        )
    if isinstance(data, Histogram):
        start = start_ns if data.aggregation_temporality is CUMULATIVE else None
        return replace(
            metric,
            data=replace(
                data,
                data_points=[
                    replace(
                        p,
                        time_unix_nano=time_ns,
                        start_time_unix_nano=start or p.start_time_unix_nano,
                    )
                    for p in data.data_points
                ],
            ),
        )
    if isinstance(data, Gauge):
        return replace(
            metric,
            data=replace(
                data, data_points=[replace(p, time_unix_nano=time_ns) for p in data.data_points]
            ),
        )
    return metric


def merged(datas: Iterable[MetricsData]) -> MetricsData:
    """Several points' data as one request: per resource and scope, one metric per name with
    every point (Prometheus stores each as a sample of its series)."""
    by_resource: dict[Resource, dict[InstrumentationScope, dict[str, Metric]]] = {}
    for data in datas:
        for resource_metrics in data.resource_metrics:
            scopes = by_resource.setdefault(resource_metrics.resource, {})
            for scope_metrics in resource_metrics.scope_metrics:
                metrics = scopes.setdefault(scope_metrics.scope, {})
                for metric in scope_metrics.metrics:
                    known = metrics.get(metric.name)
                    if known is None:
                        metrics[metric.name] = metric
                        continue
                    same: Any = known.data  # the same kind: one name, one instrument
                    metrics[metric.name] = replace(
                        known,
                        data=replace(
                            same, data_points=[*same.data_points, *metric.data.data_points]
                        ),
                    )
    return MetricsData(
        resource_metrics=[
            ResourceMetrics(
                resource=resource,
                schema_url="",
                scope_metrics=[
                    ScopeMetrics(scope=scope, metrics=list(metrics.values()), schema_url="")
                    for scope, metrics in scopes.items()
                ],
            )
            for resource, scopes in by_resource.items()
        ]
    )


def points(data: MetricsData) -> int:
    return sum(
        len(metric.data.data_points)
        for resource_metrics in data.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
    )


def _attributes(value: Any, redactor: Redactor) -> dict[str, Any]:
    """JSON attributes as OTel attributes: scalars and lists of one scalar type; others
    dropped; secrets scrubbed."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadLine("attributes")
    clean: Mapping[str, Any] = redactor.deep(value)
    out: dict[str, Any] = {}
    for key, item in clean.items():
        if isinstance(item, list):
            item = tuple(item)
        if _attribute_ok(item):
            out[str(key)] = item
    return out


def _attribute_ok(value: Any) -> bool:
    if isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return True
    if isinstance(value, (list, tuple)) and value:
        kinds = {type(v) for v in value}
        return len(kinds) == 1 and kinds <= {str, bool, int, float}
    return False


def _hex(value: Any, digits: int) -> int:
    if not isinstance(value, str) or len(value) != digits:
        raise BadLine(f"id {value!r}")
    parsed = int(value, 16)
    if not parsed:
        raise BadLine("zero id")
    return parsed


def _nanos(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
        raise BadLine(f"time {value!r}")
    return value
