"""A run's state rebuilt from its record, line by line, as the live export saw it.

``traintel sync`` does not compute metrics a second way: it replays the record into the same
:class:`~traintel.core.state.RunState`, :class:`~traintel.export.readings.Histograms` and
:class:`~traintel.core.state.IntervalStats` the live run kept, and the live export code reads them
(``traintel.export.otlp.RunMetrics``). :class:`Replay` does, for each line, what the training
thread and the record writer did when the line was made: a step sets the step, counts, latest
values, data-wait and compute totals, the values' interval statistics and the step-duration
histogram; an evaluation its latest and best values; events, milestones and errors their counts;
the run's end its status. A test holds the rebuilt state to the live one for every catalog
metric the record can rebuild (``tests/test_sync.py``).

What the record does not hold is not rebuilt, and those metrics are not sent: GPU, CUDA and
system samples, custom instruments (the record keeps their end-of-run summaries), the record
writer's own health (:data:`NOT_IN_RECORD`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from traintel.core.catalog import METRICS, get
from traintel.core.state import COUNTED_KEYS, KNOWN_KEYS, RateWindow, RunState, find_loss
from traintel.export.readings import Histograms
from traintel.record.format import END_STATUSES, RawLine
from traintel.record.summary import RecordFold, StepFigures
from traintel.run.resume import Continuation, Cumulative

#: catalog groups whose metrics the record cannot rebuild, and why
NOT_IN_RECORD: dict[str, str] = {
    "gpu": "GPU samples are not recorded",
    "cuda": "CUDA allocator samples are not recorded",
    "system": "system samples are not recorded",
    "custom": "custom instruments are recorded as end-of-run summaries only",
    "telemetry": "the record writer's own health is the live process's",
}
#: the catalog metrics a sync sends
REBUILT: frozenset[str] = frozenset(m.name for m in METRICS if m.group not in NOT_IN_RECORD)
#: counters the record rebuilds only nearly: the training thread adds up each batch's data wait
#: and compute time, a step line holds their mean over the steps it stands for. A sync sends
#: them for runs that exported nothing; between a live run's samples a counter a rounding error
#: too high would read as a reset, so there they are left out (``rate()`` spans the gap)
NEARLY: frozenset[str] = frozenset(
    get(name).name
    for name in ("traintel_data_wait_seconds_total", "traintel_compute_seconds_total")
)


class BadLine(ValueError):
    """A line whose fields do not have the types the record format says."""


class Replay:
    """One segment's state (a process: from its ``run_start`` line on), rebuilt line by line.

    ``before`` is what the record held before the segment (a resumed run): the state starts
    from it as the resumed process's did (``traintel.run.resume.Continuation.restore``)."""

    def __init__(
        self, start: RawLine, before: RecordFold | None = None, cumulative: Cumulative | None = None
    ) -> None:
        self.state = state = RunState()
        state.start_ts = number(start.get("ts"))
        total = start.get("total_steps")
        state.total_steps = total if isinstance(total, int) and total > 0 else None
        self.histograms = Histograms()
        initial = start.get("initial_step")
        if type(initial) is not int or initial < 0:
            initial = None
        #: what the record held before the segment; a resumed run that went back to an older
        #: checkpoint takes back the evaluations after it, as the live process did
        self.continuation = Continuation(before=before, cumulative=cumulative)
        self.continuation.restore(state, self.histograms, initial)
        #: the last step number this segment wrote; the number its first step counts from
        #: (``StepRecorder``'s base: the loop's ``initial_step``, else a resumed run's last step)
        self.last: int | None = None
        self.base = initial if initial is not None or before is None else state.step
        if self.base is not None:
            state.step = self.base
        #: what the record writer folds for its rates
        self.figures = StepFigures(percentiles=False, initial_step=self.base)
        self.rates = RateWindow()

    def apply(self, line: RawLine) -> None:
        """Fold one record line in; :class:`BadLine` for a line that cannot be folded."""
        kind = line.get("type")
        if kind == "step":
            self._step(line)
        elif kind == "values":
            self._values(mapping(line.get("metrics")))
        elif kind == "eval":
            self._eval(line)
        elif kind == "event":
            self._count(text(line.get("event")))
        elif kind == "milestone":
            self._count("milestone")
        elif kind == "error":
            key = (text(line.get("error_type")), text(line.get("severity")))
            self.state.errors[key] = self.state.errors.get(key, 0) + 1
            ts = line.get("ts")
            if self.state.first_error is None and isinstance(ts, (float, int)):
                # as the live run kept it (traintel_first_error_timestamp_seconds, RunFailed's
                # root cause): its time, kind and step
                step = line.get("step")
                self.state.first_error = {
                    "ts": float(ts),
                    "error_type": key[0],
                    "exc_type": text(line.get("exc_type")),
                    "step": step if type(step) is int else None,
                }
        elif kind == "epoch":
            self.state.epochs_ended += line.get("cut") is not True
        elif kind == "run_end":
            status = line.get("status")
            if status not in END_STATUSES:
                raise BadLine(f"run_end status {status!r}")
            self.state.status = status
        epoch = line.get("epoch")
        if isinstance(epoch, int) and not isinstance(epoch, bool) and kind != "epoch":
            self.state.epoch = epoch

    def _step(self, line: RawLine) -> None:
        """What ``StepRecorder`` did on the training thread, then the record writer: a step
        ``k`` after the previous one stands for ``k`` steps (samples and tokens are per step)."""
        state = self.state
        ts = number(line.get("ts"))
        step = line.get("step")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise BadLine(f"step {step!r}")
        metrics = mapping(line.get("metrics"))
        step_s = optional_number(line.get("step_s"))
        data_wait_s = optional_number(line.get("data_wait_s"))
        values = _values(metrics)
        if state.loss_key is None:
            state.loss_key = find_loss(metrics)
        last = self.last
        if last is None:
            if self.base is not None and step <= self.base and self.continuation.before is not None:
                self.base = step - 1  # went back to an older checkpoint (StepRecorder._end_step)
                self.continuation.rewind(state, self.base)
            covers = step - self.base if self.base is not None and step > self.base else 1
        else:
            covers = step - last if step > last else 1
        self._values(metrics, values)
        for key in COUNTED_KEYS:
            value = values.get(key)
            if value is not None and math.isfinite(value):
                if key == "samples":
                    state.samples += metrics[key] * covers
                else:
                    state.tokens += metrics[key] * covers
        self.last = state.step = step
        state.steps_taken += covers
        state.last_step_ts = ts
        if data_wait_s is not None and step_s is not None:  # run.track's own timing
            state.data_wait_total += data_wait_s * covers
            state.compute_total += (step_s - data_wait_s) * covers
        elif step_s is not None:
            state.compute_total += step_s * covers
        # the record writer
        self.figures.add(ts, step, step_s, data_wait_s, metrics)
        state.logged.fold(metrics)
        if step_s is not None:
            self.histograms.observe("step", None, step_s)
        figures = self.figures
        if figures.last_ts is not None:
            self.rates.add(figures.last_ts, figures.steps, figures.samples, figures.tokens)
            state.rates = self.rates.rates()

    def _values(self, metrics: Mapping[str, Any], values: dict[str, float] | None = None) -> None:
        """Values logged (a step's or a ``values`` line's): the latest of each key, as logged
        (NaN stays NaN); non-finite losses counted; new keys among the user's."""
        values = _values(metrics) if values is None else values
        state = self.state
        for key, value in values.items():
            if key not in KNOWN_KEYS and key not in COUNTED_KEYS:
                state.user_keys.add(key)
            if not math.isfinite(value) and state.is_loss(key):
                state.nonfinite_losses += 1
        state.latest.update(values)

    def _eval(self, line: RawLine) -> None:
        """What ``run.log_eval`` did: latest and best values, the eval (and best) counts."""
        metrics, best, best_step, is_best, modes = (
            mapping(line.get(key)) for key in ("metrics", "best", "best_step", "is_best", "mode")
        )
        latest = _values(metrics)
        bests = {name: number(value) for name, value in best.items() if value is not None}
        steps = {name: value for name, value in best_step.items() if isinstance(value, int)}
        state = self.state
        state.eval_latest.update(latest)
        state.eval_best.update(bests)
        state.eval_best_step.update(steps)
        state.goals.update(
            {name: mode for name, mode in modes.items() if mode in ("min", "max", None)}
        )
        self._count("eval")
        if any(value is True for value in is_best.values()):
            self._count("best_eval")

    def _count(self, event: str) -> None:
        self.state.events[event] = self.state.events.get(event, 0) + 1


def _values(metrics: Mapping[str, Any]) -> dict[str, float]:
    """A line's values as numbers: "nan", "inf", "-inf" (how the record writes them) as
    floats; :class:`BadLine` for anything else that is not a number."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise BadLine("metric name")
        if isinstance(value, str):
            if value not in _NONFINITE:
                raise BadLine(f"{key}={value!r}")
            out[key] = _NONFINITE[value]
        else:
            out[key] = number(value)
    return out


_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def number(value: Any) -> float:
    """A finite JSON number that fits a float, or :class:`BadLine`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadLine(f"not a number: {value!r}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        finite = False
    if not finite:
        raise BadLine(f"not a finite number: {value!r}")
    return value


def optional_number(value: Any) -> float | None:
    return None if value is None else number(value)


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise BadLine(f"not text: {value!r}")
    return value


def mapping(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadLine(f"not a mapping: {value!r}")
    return value
