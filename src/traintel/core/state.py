"""The hot path: the latest values and counters of a run, kept in plain Python objects.

Recording a step only stores numbers here and appends one tuple to the record queue; nothing is
serialized, hashed or exported on the caller's thread. Exporters read this state when *they* are
asked for data (OTel observable instruments at collection time, the Prometheus collector at scrape
time), so a value logged once appears on every path.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from traintel.core.catalog import LOGGED_NAME_FOR_KEY, METRIC_FOR_KEY
from traintel.core.vocabulary import Goal, RunStatus

#: run.log keys with a dedicated catalog metric (from the catalog's ``keys``); other keys become
#: traintel_metric{metric=...}
KNOWN_KEYS = METRIC_FOR_KEY
COUNTED_KEYS = ("samples", "tokens")
#: the name under which a run.log key is counted and windowed (``metric`` label of the
#: traintel_logged_* series): aliases of one catalog metric share one name
LOGGED_NAME = {key: name for key, name in LOGGED_NAME_FOR_KEY.items() if key != name}
#: the names the training loss goes by, as users and frameworks write them (W&B and HF
#: ``train/loss``, Lightning's ``train_loss``, Keras' ``loss``, TensorBoard's ``loss/train``).
#: One rule for users and integrations: the first of these a run logs in a step is its loss
#: (summary figures, progress, ``traintel_loss``, non-finite loss counts, halting), unless
#: ``traintel.init(loss=...)`` declared another name.
LOSS_NAMES = (
    "loss",
    "train/loss",
    "train_loss",
    "training_loss",
    "loss/train",
    "train.loss",
    "training/loss",
    "train/loss_step",
)
LOSS_KEYS = LOSS_NAMES
_LOSS_SET = frozenset(LOSS_NAMES)


def find_loss(metrics: Mapping[str, object]) -> str | None:
    """The first key of ``metrics`` that names a training loss (:data:`LOSS_NAMES`), else None.
    Costs one C-level set check when there is none (readers fold millions of lines)."""
    if _LOSS_SET.isdisjoint(metrics):
        return None
    return next(key for key in metrics if key in _LOSS_SET)


class NonFinite:
    """Non-finite values of one key: how many, the first and the last step, and how many the
    last warning did not yet mention (warnings are rate-limited)."""

    __slots__ = ("count", "first_step", "last_step", "unreported", "next_report")

    def __init__(self, step: int) -> None:
        self.count = 0
        self.first_step = self.last_step = step
        self.unreported = 0
        self.next_report = 0.0


def nonfinite_text(value: float) -> str:
    """How a non-finite value is written to the JSON record (JSON has no NaN)."""
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


class RunState:
    """Everything the exporters and the progress display read. Written by the training thread."""

    __slots__ = (
        "status",
        "start_ts",
        "epoch",
        "epochs_ended",
        "step",
        "steps_taken",
        "samples",
        "tokens",
        "data_wait_total",
        "compute_total",
        "nonfinite_losses",
        "nonfinite",
        "last_step_ts",
        "latest",
        "user_keys",
        "eval_latest",
        "eval_best",
        "eval_best_step",
        "goals",
        "events",
        "errors",
        "counters",
        "gauges",
        "total_steps",
        "rates",
        "readings",
        "queue_depth",
        "dropped",
        "logged",
        "export_failures",
        "export_error",
        "loss_key",
        "summary",
        "refused",
        "first_error",
    )

    def __init__(self) -> None:
        self.status: RunStatus = "running"
        #: the name of the training loss among the logged values (``is_loss``), None until a
        #: step logs one or ``traintel.init(loss=...)`` names it
        self.loss_key: str | None = None
        #: the numbers of ``run.summary`` (``traintel_summary_value``)
        self.summary: dict[str, float] = {}
        #: the run's first error (ts, error_type, exc_type, step): a job's root cause is the
        #: rank whose first error came first
        self.first_error: dict[str, Any] | None = None
        self.start_ts = time.time()
        self.epoch = 0
        #: epochs that ended (``run.epochs``, ``run.end_epoch``)
        self.epochs_ended = 0
        #: the number of the last step written, on the loop's own step axis (0 before any)
        self.step = 0
        #: steps taken: a step line k steps after the previous one stands for k of them
        self.steps_taken = 0
        self.samples = 0
        self.tokens = 0
        self.data_wait_total = 0.0
        self.compute_total = 0.0
        self.nonfinite_losses = 0
        #: non-finite values by key: count and first, last step (``traintel.run.events``)
        self.nonfinite: dict[str, NonFinite] = {}
        self.last_step_ts: float | None = None
        #: the latest value of every key passed to run.log, as logged: NaN stays NaN
        self.latest: dict[str, float] = {}
        #: run.log keys that are not in KNOWN_KEYS/COUNTED_KEYS (bounded by max_metric_names)
        self.user_keys: set[str] = set()
        self.eval_latest: dict[str, float] = {}
        #: best so far of each eval metric whose direction is known, and the step it came at
        self.eval_best: dict[str, float] = {}
        self.eval_best_step: dict[str, int] = {}
        #: the direction of each eval metric: from goals=, else from its name, else None
        self.goals: dict[str, Goal | None] = {}
        self.events: dict[str, int] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self.counters: dict[str, float] = {}
        self.gauges: dict[str, float] = {}
        self.total_steps: int | None = None
        #: recent rates computed off the hot path by the record writer
        self.rates: dict[str, float] = {}
        #: latest hardware readings from the samplers: (metric, labels) -> value
        self.readings: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.queue_depth = 0
        self.dropped = 0
        #: every value passed to run.log, reduced per key and export interval (record writer)
        self.logged = IntervalStats()
        #: failed OTLP exports by signal (metrics, traces, logs), and the last reason
        self.export_failures: dict[str, int] = {}
        self.export_error: str | None = None
        #: inputs refused by reason (``traintel.core.refusals``): the run went on without them
        self.refused: dict[str, int] = {}

    def progress(self) -> float | None:
        if not self.total_steps:
            return None
        return min(1.0, self.step / self.total_steps)

    def latest_loss(self) -> float | None:
        """The training loss as last logged, NaN included (by its name while no step said)."""
        key = self.loss_key or find_loss(self.latest)
        return None if key is None else self.latest.get(key)

    def is_loss(self, key: str) -> bool:
        """Whether ``key`` is this run's training loss: the declared name, else the first of
        :data:`LOSS_NAMES` logged (this call may be the first)."""
        if self.loss_key is None and key in _LOSS_SET:
            self.loss_key = key
        return key == self.loss_key

    def eta_seconds(self) -> float | None:
        """Seconds to the planned end at the recent step rate; until the record writer has
        measured one (the run's first second or two), at the run's average rate so far."""
        if not self.total_steps:
            return None
        rate = self.rates.get("steps_per_second")
        if not rate and self.step and self.last_step_ts is not None:
            elapsed = self.last_step_ts - self.start_ts
            rate = self.step / elapsed if elapsed > 0 else None
        if not rate:
            return None
        return max(0.0, (self.total_steps - self.step) / rate)


class RateWindow:
    """Steps/samples/tokens per second over a sliding time window, fed by the record writer."""

    def __init__(self, window_s: float = 30.0) -> None:
        self.window_s = window_s
        self._points: deque[tuple[float, int, int, int]] = deque()

    def add(self, ts: float, steps: int, samples: int, tokens: int) -> None:
        if self._points and self._points[-1][0] == ts:
            return  # no step since the last point: nothing new (and no zero-length window)
        self._points.append((ts, steps, samples, tokens))
        while len(self._points) > 2 and ts - self._points[0][0] > self.window_s:
            self._points.popleft()

    def rates(self) -> dict[str, float]:
        if len(self._points) < 2:
            return {}
        t0, s0, n0, k0 = self._points[0]
        t1, s1, n1, k1 = self._points[-1]
        dt = t1 - t0
        if dt <= 0:
            return {}
        rates = {"steps_per_second": (s1 - s0) / dt}
        for name, first, last in (("samples_per_second", n0, n1), ("tokens_per_second", k0, k1)):
            if last:  # a rate of what was never logged is unknown, not zero
                try:
                    rates[name] = (last - first) / dt
                except OverflowError:  # counts beyond float64: no rate to say
                    pass
        return rates


class IntervalStats:
    """Every value passed to run.log, reduced to what one export interval needs: per key, the
    smallest and largest finite value since each reader last asked, and cumulative counts of the
    values logged and of those that were NaN or infinite.

    An export carries the latest value of a key; a spike or a NaN between two exports would
    vanish. The record writer folds each step's values in here (off the training thread, which
    pays nothing more), and each export path takes its own window when it exports, so that every
    value lands in exactly one export's min/max and in the counts. Counts are counters (per
    interval: ``increase``), min and max are gauges of that window.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: one window per reader: key -> [min, max] of the finite values since it last took
        self._windows: list[dict[str, list[float]]] = []
        #: key -> [values logged, of which non-finite], since the run began
        self.counts: dict[str, list[int]] = {}

    def reader(self) -> Callable[[], dict[str, tuple[float, float]]]:
        """A window of its own: each call returns ``{key: (min, max)}`` since the previous call
        (keys with no finite value in between are left out) and starts a new window."""
        with self._lock:
            index = len(self._windows)
            self._windows.append({})

        def take() -> dict[str, tuple[float, float]]:
            with self._lock:
                window, self._windows[index] = self._windows[index], {}
            return {key: (float(low), float(high)) for key, (low, high) in window.items()}

        return take

    def counted(self) -> dict[str, list[int]]:
        """A copy of the counts: a resumed segment's state starts from the record's."""
        with self._lock:
            return {key: list(count) for key, count in self.counts.items()}

    def fold(self, metrics: dict[str, Any]) -> None:
        """One step's run.log values; non-finite ones arrive as text ("nan", "inf")."""
        with self._lock:
            windows, counts = self._windows, self.counts
            for key, value in metrics.items():
                if key in COUNTED_KEYS:
                    continue
                key = LOGGED_NAME.get(key, key)
                count = counts.get(key)
                if count is None:
                    count = counts[key] = [0, 0]
                count[0] += 1
                if value.__class__ is str:
                    count[1] += 1
                    continue
                for window in windows:
                    bounds = window.get(key)
                    if bounds is None:
                        window[key] = [value, value]
                    elif value < bounds[0]:
                        bounds[0] = value
                    elif value > bounds[1]:
                        bounds[1] = value
