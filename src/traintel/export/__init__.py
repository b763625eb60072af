"""Readers of the run state: OTLP export to a collector (``otlp``) and a Prometheus collector for
pull (``prometheus``), both reading the same state and the same histogram bucket counts
(``readings``), so a value logged once appears on both paths."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.registry import CollectorRegistry

from ..state import RunState
from .otlp import OtlpExport, Sinks, start_export
from .prometheus import RunCollector, registry_for
from .readings import Histograms


@dataclass(frozen=True)
class RunExport:
    """A run's export paths: the histograms the record writer feeds, the Prometheus collector
    and its registry (``/metrics``), the OTLP export (None when export is off)."""

    histograms: Histograms
    collector: RunCollector
    registry: CollectorRegistry
    otlp: OtlpExport | None

    @classmethod
    def start(cls, state: RunState, labels: dict[str, str], run_info: dict[str, str],
              sinks: Sinks | None) -> RunExport:
        histograms = Histograms()
        collector = RunCollector(state, labels, run_info, histograms)
        return cls(histograms, collector, registry_for(collector),
                   start_export(sinks, state, labels, run_info, histograms))
