"""What each catalog metric reads from the run state at collection time.

Both export paths (OTel observable instruments, the Prometheus collector) call the same readers,
so a value logged once appears on both. Histograms are not read here: the record writer feeds them
(see ``Histograms``) because they need every observation, not the latest one.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import NamedTuple

from traintel.core.catalog import DEFAULT_HISTOGRAM_BUCKETS, DURATION_BUCKETS
from traintel.core.state import RunState
from traintel.record.format import STATUSES

Reading = tuple[float, dict[str, str]]
Reader = Callable[[RunState], Iterator[Reading]]

NO_LABELS: dict[str, str] = {}


def _value(getter: Callable[[RunState], float | None]) -> Reader:
    def read(state: RunState) -> Iterator[Reading]:
        value = getter(state)
        if value is not None:
            yield float(value), NO_LABELS

    return read


def _latest(keys: tuple[str, ...]) -> Reader:
    """The latest value logged under the first of ``keys`` (a metric's name and its aliases)
    the run has logged."""

    def read(state: RunState) -> Iterator[Reading]:
        for alias in keys:
            if alias in state.latest:
                yield state.latest[alias], NO_LABELS
                return

    return read


def _by(label: str, mapping: Callable[[RunState], Mapping[str, float]]) -> Reader:
    def read(state: RunState) -> Iterator[Reading]:
        for key, value in list(mapping(state).items()):
            yield value, {label: key}

    return read


def _status(state: RunState) -> Iterator[Reading]:
    for status in STATUSES:
        yield (1.0 if state.status == status else 0.0), {"status": status}


def _user_metrics(state: RunState) -> Iterator[Reading]:
    latest = state.latest
    for key in list(state.user_keys):
        if key in latest:
            yield latest[key], {"metric": key}


def _errors(state: RunState) -> Iterator[Reading]:
    for (error_type, severity), count in list(state.errors.items()):
        yield count, {"error_type": error_type, "severity": severity}


def _hardware(name: str) -> Reader:
    def read(state: RunState) -> Iterator[Reading]:
        for (metric, labels), value in list(state.readings.items()):
            if metric == name:
                yield value, dict(labels)

    return read


#: Gauges of one export interval's window (``RunState.logged``), position in its (min, max):
#: each export path takes its window once per export and adds these itself (a window read by
#: two observable instruments would be taken twice).
WINDOWED = {"traintel_logged_min": 0, "traintel_logged_max": 1}


def window_readings(window: dict[str, tuple[float, float]]) -> dict[str, list[Reading]]:
    """The WINDOWED gauges' readings from one taken window (``IntervalStats.reader()()``)."""
    return {
        name: [(bounds[i], {"metric": key}) for key, bounds in window.items()]
        for name, i in WINDOWED.items()
    }


def readers(run_info: dict[str, str]) -> dict[str, Reader]:
    """Catalog metric name -> reader, for every metric but histograms and WINDOWED gauges."""
    table: dict[str, Reader] = {
        "traintel_run_info": lambda state: iter([(1.0, run_info)]),
        "traintel_run_status": _status,
        "traintel_run_start_time_seconds": _value(lambda s: s.start_ts),
        "traintel_run_progress_ratio": _value(RunState.progress),
        "traintel_run_eta_seconds": _value(RunState.eta_seconds),
        "traintel_run_steps_planned": _value(lambda s: s.total_steps),
        "traintel_epoch": _value(lambda s: s.epoch),
        "traintel_last_step_timestamp_seconds": _value(lambda s: s.last_step_ts),
        "traintel_first_error_timestamp_seconds": _value(
            lambda s: s.first_error["ts"] if s.first_error else None
        ),
        "traintel_steps_total": _value(lambda s: s.step),
        "traintel_samples_total": _value(lambda s: s.samples),
        "traintel_tokens_total": _value(lambda s: s.tokens),
        "traintel_steps_per_second": _value(lambda s: s.rates.get("steps_per_second")),
        "traintel_samples_per_second": _value(lambda s: s.rates.get("samples_per_second")),
        "traintel_tokens_per_second": _value(lambda s: s.rates.get("tokens_per_second")),
        "traintel_nonfinite_loss_total": _value(lambda s: s.nonfinite_losses),
        "traintel_data_wait_seconds_total": _value(lambda s: s.data_wait_total),
        "traintel_compute_seconds_total": _value(lambda s: s.compute_total),
        "traintel_metric": _user_metrics,
        "traintel_summary_value": _by("key", lambda s: s.summary),
        "traintel_eval_value": _by("metric", lambda s: s.eval_latest),
        "traintel_eval_best": _by("metric", lambda s: s.eval_best),
        "traintel_user_total": _by("metric", lambda s: s.counters),
        "traintel_user_value": _by("metric", lambda s: s.gauges),
        "traintel_events_total": _by("event", lambda s: s.events),
        "traintel_errors_total": _errors,
        "traintel_logged_values_total": _by(
            "metric", lambda s: {key: counts[0] for key, counts in list(s.logged.counts.items())}
        ),
        "traintel_logged_nonfinite_total": _by(
            "metric", lambda s: {key: counts[1] for key, counts in list(s.logged.counts.items())}
        ),
        "traintel_record_dropped_total": _value(lambda s: s.dropped),
        "traintel_record_queue_depth": _value(lambda s: s.queue_depth),
        "traintel_export_failures_total": _by("signal", lambda s: s.export_failures),
        "traintel_refused_total": _by("reason", lambda s: s.refused),
    }
    from traintel.core.catalog import METRICS

    for metric in METRICS:
        if metric.keys == ("loss",):  # the loss goes by many names (or the declared one)
            table[metric.name] = _value(RunState.latest_loss)
        elif metric.keys:  # the latest value of the run.log keys the catalog names
            table[metric.name] = _latest(metric.keys)
        elif metric.group in ("gpu", "cuda", "system") and metric.kind != "histogram":
            # hardware metrics: whatever the samplers reported
            table[metric.name] = _hardware(metric.name)
    return table


#: histogram metric fed by each kind of observation the record writer reports
HISTOGRAM_FOR = {
    "step": "traintel_step_duration_seconds",
    "histogram": "traintel_user_observations",
    "timer": "traintel_user_timer_seconds",
    "operation": "traintel_operation_duration_seconds",
}
#: bucket bounds of each kind unless the user gave a histogram its own: durations in seconds, and
#: for ``run.histogram`` (sequence lengths, batch sizes, anything) the OpenTelemetry SDK's
#: default explicit bounds, the ecosystem's general-purpose choice
DEFAULT_BOUNDS = {
    "step": DURATION_BUCKETS,
    "histogram": DEFAULT_HISTOGRAM_BUCKETS,
    "timer": DURATION_BUCKETS,
    "operation": DURATION_BUCKETS,
}


class HistogramSeries(NamedTuple):
    metric: str
    label: str | None  # the value of the metric's one extra label, if it has one
    bounds: tuple[float, ...]  # upper bounds of the buckets but the last (+Inf)
    counts: list[int]  # per bucket of ``bounds``, then the +Inf bucket; not cumulative
    sum: float
    min: float
    max: float


class Histograms:
    """Cumulative bucket counts fed by the record writer's listener, read by both export paths.

    One bisect per observation here is far cheaper than the OTel SDK's ``Histogram.record``
    (0.4 µs against 7 µs on the writer thread), so the OTLP path exports these counts too.
    Each series has its bounds: its kind's default, or those given to :meth:`define`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: (metric, label value or None) -> bounds, [bucket counts..., +Inf count], [sum, min, max]
        self.series: dict[
            tuple[str, str | None], tuple[tuple[float, ...], list[int], list[float]]
        ] = {}
        #: bounds given before the first observation, by (metric, label value)
        self._defined: dict[tuple[str, str | None], tuple[float, ...]] = {}

    def define(self, kind: str, name: str, bounds: tuple[float, ...]) -> None:
        """Use ``bounds`` for the series of ``name`` (``run.histogram(name, buckets=...)``)."""
        with self._lock:
            self._defined[(HISTOGRAM_FOR[kind], name)] = bounds

    def observe(self, kind: str, name: str | None, value: float) -> None:
        key = (HISTOGRAM_FOR[kind], name)
        with self._lock:
            entry = self.series.get(key)
            if entry is None:
                bounds = self._defined.get(key) or DEFAULT_BOUNDS[kind]
                entry = self.series[key] = (bounds, [0] * (len(bounds) + 1), [0.0, value, value])
            entry[1][bisect.bisect_left(entry[0], value)] += 1
            figures = entry[2]
            figures[0] += value
            if value < figures[1]:
                figures[1] = value
            elif value > figures[2]:
                figures[2] = value

    def carry(self, other: Histograms) -> None:
        """Start from a copy of ``other``'s series (a resumed segment goes on from the
        record's: ``traintel.run.resume.Cumulative``)."""
        with other._lock:
            series = {
                key: (bounds, list(counts), list(figures))
                for key, (bounds, counts, figures) in other.series.items()
            }
        with self._lock:
            self.series.update(series)

    def snapshot(self) -> list[HistogramSeries]:
        with self._lock:
            return [
                HistogramSeries(metric, label, bounds, list(counts), *figures)
                for (metric, label), (bounds, counts, figures) in self.series.items()
            ]
