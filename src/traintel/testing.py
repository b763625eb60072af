"""Helpers for users' own tests: capture what a run emits in memory.

from traintel.testing import capture
with capture() as telemetry:
    with traintel.init(project="t", progress="off") as run:
        run.log(loss=1.0)
assert telemetry.metric("traintel_loss") == [1.0]
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from opentelemetry._logs import LogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.metrics.export import (
    DataPointT,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util.types import AttributeValue

from traintel import current_run
from traintel.export.otlp import Sinks
from traintel.run import facade as run_module


@dataclass
class Telemetry:
    spans: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)
    logs: InMemoryLogRecordExporter = field(default_factory=InMemoryLogRecordExporter)
    _collected: list[MetricsData] = field(default_factory=list)

    def collect(self) -> None:
        """Take a metric snapshot of the current run now (it must still be open)."""
        run = current_run()
        if run is None or run.otlp is None:
            raise RuntimeError("Telemetry.collect() needs an open run created inside capture()")
        run.otlp.meter_provider.force_flush()

    def points(self, name: str) -> list[tuple[dict[str, AttributeValue], DataPointT]]:
        """(attributes, point) of every data point of ``name`` in the latest snapshot."""
        for data in reversed(self._collected):
            found = [
                (dict(point.attributes or {}), point)
                for resource in data.resource_metrics
                for scope in resource.scope_metrics
                for metric in scope.metrics
                if metric.name == name
                for point in metric.data.data_points
            ]
            if found:
                return found
        return []

    def metric(self, name: str) -> list[float]:
        """The values of a counter's or gauge's data points in the latest snapshot."""
        return [point.value for _, point in self.points(name) if isinstance(point, NumberDataPoint)]

    def span_names(self) -> list[str]:
        """The names of the spans that ended, oldest first."""
        return [span.name for span in self.spans.get_finished_spans()]

    def log_records(self) -> list[LogRecord]:
        """The OpenTelemetry log records emitted, oldest first."""
        return [entry.log_record for entry in self.logs.get_finished_logs()]


@contextmanager
def capture() -> Iterator[Telemetry]:
    """Runs created inside send metrics, spans and logs to memory instead of OTLP, and are
    strict (``traintel.init(strict=True)``): what a run would refuse with a warning raises.

    Metrics are snapshotted when a run finishes (and whenever ``Telemetry.collect`` is called),
    through the same export path as OTLP, histograms included.
    """
    telemetry = Telemetry()
    previous, was_strict = run_module.sinks_override, run_module.strict_override
    run_module.strict_override = True  # a user's test fails on what a run would only refuse
    run_module.sinks_override = Sinks(
        metric_exporter=_Snapshots(telemetry),
        metric_interval_ms=math.inf,  # on demand only
        span_exporter=telemetry.spans,
        log_exporter=telemetry.logs,
    )
    try:
        yield telemetry
    finally:
        run_module.sinks_override, run_module.strict_override = previous, was_strict


class _Snapshots(MetricExporter):
    """Keeps every exported snapshot (cumulative, as the OTLP exporter's default)."""

    def __init__(self, telemetry: Telemetry) -> None:
        super().__init__()
        self._telemetry = telemetry

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        self._telemetry._collected.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass
