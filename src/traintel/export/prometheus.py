"""The pull path: a prometheus-client collector that reads the run state at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from traintel.core.catalog import METRICS
from traintel.core.state import RunState
from traintel.core.validate import clean_text
from traintel.export.readings import WINDOWED, Histograms, Reader, readers, window_readings


class RunCollector(Collector):
    """Every catalog metric of one run, in the names and labels the OTLP path produces."""

    def __init__(
        self,
        state: RunState,
        labels: dict[str, str],
        run_info: dict[str, str],
        histograms: Histograms,
    ) -> None:
        self.state = state
        self.labels = labels
        self.table: dict[str, Reader] = readers(run_info)
        self.histograms = histograms
        #: a window of its own: min/max of the values logged since the previous scrape
        self.take_window = state.logged.reader()

    def describe(self) -> Iterator[Metric]:
        """Every family this collector may yield, without samples: the registry learns the
        names from it, so that ``/metrics?name[]=...`` finds this collector."""
        for metric in METRICS:
            kind = {
                "counter": CounterMetricFamily,
                "gauge": GaugeMetricFamily,
                "updowncounter": GaugeMetricFamily,  # Prometheus has no other kind for it
                "histogram": HistogramMetricFamily,
            }[metric.kind]
            yield kind(metric.name, metric.description, labels=list(metric.all_labels))

    def collect(self) -> Iterator[Metric]:
        base_names = list(self.labels)
        base_values = list(self.labels.values())
        histogram_series = self.histograms.snapshot()
        windowed = window_readings(self.take_window())
        for metric in METRICS:
            names = list(metric.all_labels)
            if metric.kind == "histogram":
                histogram = HistogramMetricFamily(metric.name, metric.description, labels=names)
                found = False
                for series in histogram_series:
                    if series.metric != metric.name:
                        continue
                    found = True
                    buckets: list[tuple[str, float]] = []
                    running = 0
                    for bound, count in zip([*series.bounds, float("inf")], series.counts):
                        running += count
                        buckets.append((_le(bound), running))
                    label = [clean_text(series.label or "")] if metric.labels else []
                    histogram.add_metric(base_values + label, buckets, series.sum)
                if found:
                    yield histogram
                continue
            family = (CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily)(
                metric.name, metric.description, labels=names
            )
            found = False
            readings = (
                windowed[metric.name]
                if metric.name in WINDOWED
                else self.table[metric.name](self.state)
            )
            for value, extra in readings:
                found = True
                family.add_metric(
                    base_values + [clean_text(extra.get(n, "")) for n in names[len(base_names) :]],
                    value,
                )
            if found:
                yield family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def registry_for(collector: RunCollector) -> CollectorRegistry:
    """A registry of our own: several runs in one process never collide in the global one."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
