"""Readers of the run state: OTLP export to a collector (``otlp``) and a Prometheus collector for
pull (``prometheus``), both reading the same state and the same histogram bucket counts
(``readings``), so a value logged once appears on both paths."""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.sdk.resources import Resource
from prometheus_client.registry import CollectorRegistry

from traintel.core.state import RunState
from traintel.export.otlp import (
    Note,
    OtlpExport,
    Sinks,
    metric_interval_s,
    resource_for,
    start_export,
)
from traintel.export.prometheus import RunCollector, registry_for
from traintel.export.readings import Histograms
from traintel.record.format import ExportMode, RunTelemetry


@dataclass(frozen=True)
class RunExport:
    """A run's export paths: the histograms the record writer feeds, the Prometheus collector
    and its registry (``/metrics``), the OTLP export (None without OpenTelemetry), and the
    resource its telemetry carries (recorded, so that a later sync carries the same)."""

    histograms: Histograms
    collector: RunCollector
    registry: CollectorRegistry
    otlp: OtlpExport | None
    resource: Resource
    mode: ExportMode

    @classmethod
    def start(
        cls,
        state: RunState,
        labels: dict[str, str],
        run_info: dict[str, str],
        mode: ExportMode,
        note: Note,
        sinks: Sinks | None = None,
    ) -> RunExport:
        """The export paths for ``mode``: OTLP exporters configured by ``OTEL_*`` for ``otlp``,
        spans without export for ``offline``, no OpenTelemetry for ``disabled``; ``sinks``
        (``traintel.testing``'s in-memory exporters) win over ``mode``. ``note`` writes each
        live export's outcome to the record (``RecordWriter.note``)."""
        if sinks is not None:
            mode = "otlp"
        else:
            sinks = Sinks.otlp() if mode == "otlp" else Sinks() if mode == "offline" else None
        histograms = Histograms()
        collector = RunCollector(state, labels, run_info, histograms)
        resource = resource_for(labels, run_info["run_name"], run_info["hostname"])
        return cls(
            histograms,
            collector,
            registry_for(collector),
            start_export(sinks, state, labels, run_info, histograms, resource, note),
            resource,
            mode,
        )

    def telemetry(self, log_level: str) -> RunTelemetry:
        """What the run's ``run_start`` line says of its telemetry."""
        return {
            "export": self.mode,
            "export_interval_s": metric_interval_s(),
            "log_level": log_level,
            "resource": dict(self.resource.attributes),
        }
