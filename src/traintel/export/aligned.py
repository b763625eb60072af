"""Metric collection at the same wall-clock moments on every rank of a job.

The SDK's ``PeriodicExportingMetricReader`` collects ``interval`` seconds after the process
started its reader, so each rank of a job collects at its own phase. Collecting and encoding an
export holds the interpreter for a few milliseconds (benchmarks/stalls.py); in synchronous
data-parallel training every step waits for the slowest rank, so pauses at different phases
add up: with 1,000 ranks pausing once per 15 s each at its own moment, most steps of a fast
job contain some rank's pause. Here every process collects at the multiples of the interval
since the Unix epoch (``time.time()``; ranks' clocks agree within NTP's milliseconds), so the
pauses that remain land in the same step on every rank, and the job pays for one.

The OpenTelemetry specification leaves the reader's schedule to the SDK ("collect ... every
``exportIntervalMillis``"), so an aligned schedule is within it; a collector receives every
rank's export within the same few milliseconds, which its receivers queue.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from typing import Any

from opentelemetry.sdk.metrics import MetricsTimeoutError
from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader

log = logging.getLogger("traintel.export")


def next_boundary(now: float, interval_s: float) -> float:
    """The first multiple of ``interval_s`` since the epoch strictly after ``now``."""
    return (math.floor(now / interval_s) + 1) * interval_s


class AlignedMetricReader(PeriodicExportingMetricReader):
    """A periodic reader that collects at ``next_boundary`` instead of ``interval`` after the
    previous collection: the SDK's reader with its own thread turned off (an infinite interval)
    and a thread of ours that sleeps until the next boundary. A collection that overruns a
    boundary skips it (the next one is computed from the clock, never queued up), and a clock
    step moves the schedule with it. Shut down, it collects once more, as the SDK's does.

    ``start`` begins the schedule once a ``MeterProvider`` holds the reader (a collection before
    would warn). A forked child does not restart the thread: traintel exports nothing from a
    child (its copy of the run's state is frozen, ``traintel.export.health``)."""

    def __init__(
        self, exporter: MetricExporter, interval_ms: float, timeout_ms: float | None = None
    ) -> None:
        super().__init__(
            exporter, export_interval_millis=math.inf, export_timeout_millis=timeout_ms
        )
        self.interval_s = interval_ms / 1000
        #: the SDK's reading of ``OTEL_METRIC_EXPORT_TIMEOUT`` when ``timeout_ms`` is None
        self.timeout_ms: float = self._export_timeout_millis
        #: (boundary, wall-clock start) of the latest collections: what tests and the
        #: benchmarks check the alignment with
        self.collections: deque[tuple[float, float]] = deque(maxlen=256)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start collecting at the boundaries (once)."""
        if self._thread is None and math.isfinite(self.interval_s) and self.interval_s > 0:
            self._thread = threading.Thread(
                target=self._tick, daemon=True, name="traintel-metric-reader"
            )
            self._thread.start()

    def _tick(self) -> None:
        while True:
            boundary = next_boundary(time.time(), self.interval_s)
            # Event.wait runs on the monotonic clock; re-read the wall clock until it is there
            while (left := boundary - time.time()) > 0:
                if self._stop.wait(left):
                    self._collect_now(time.time(), final=True)
                    return
            self.collections.append((boundary, time.time()))
            self._collect_now(boundary, final=False)

    def _collect_now(self, boundary: float, final: bool) -> None:
        try:
            self.collect(timeout_millis=self.timeout_ms)
        except MetricsTimeoutError:
            log.warning(
                "traintel: metric collection timed out%s",
                "" if final else f"; the next is at the next multiple of {self.interval_s:g} s",
                exc_info=True,
            )

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Stop the schedule (after the last collection), then the exporter."""
        started = time.monotonic()
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_millis / 1000)
        left = max(1.0, timeout_millis - (time.monotonic() - started) * 1000)
        super().shutdown(timeout_millis=left, **kwargs)
