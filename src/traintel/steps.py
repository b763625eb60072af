"""The hot path: ``run.log`` and ``run.track``, and what a step sets off now and then (a step span,
a progress refresh, a milestone), plus epochs.

A step stores numbers in :class:`~traintel.state.RunState` and appends one typed item to the
record queue; JSON, aggregates, export and rendering happen on other threads or at collection
time. The tricks that keep it at a couple of microseconds are deliberate (measured by
``benchmarks/step_cost.py``): ``cls is float`` checks before any conversion, local names for
attributes, ``tuple.__new__`` for the queue item, and one comparison of the step against the next
step that needs work (``_next_check``) instead of any per-step bookkeeping.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, SupportsFloat, TypeVar

from .events import EventRecorder, ended
from .progress import MILESTONES, REFRESH_S, ProgressDisplay
from .record.pipeline import Pipeline
from .record.queue import RecordQueue, Step
from .render import progress_text
from .spans import RunSpans
from .state import COUNTED_KEYS, KNOWN_KEYS, RunState, nonfinite_text
from .validate import INT64_MAX, INT64_MIN, NameBudget, check_step, to_number

T = TypeVar("T")

#: queued record items above which the writer is woken at once
QUEUE_HIGH_WATER = 50_000
#: builds a Step without the NamedTuple's Python-level __new__ (see traintel.record.queue)
_new = tuple.__new__


class StepRecorder:
    """Steps and epochs of one run. ``log`` and ``track`` are handed to users as they are (the
    run binds them), so they are the functions a training loop calls."""

    def __init__(self, state: RunState, queue: RecordQueue, *, spans: RunSpans,
                 events: EventRecorder, pipeline: Pipeline, progress: ProgressDisplay,
                 flush_soon: Callable[[], None], total_epochs: int | None,
                 planned_steps: int | None, step_span_every: int, budget: NameBudget) -> None:
        self.state = state
        self._queue = queue
        self._append = queue.append
        self._spans = spans
        self._events = events
        self._pipeline = pipeline
        self._progress = progress
        self._flush_soon = flush_soon
        self.total_epochs = total_epochs
        #: the total_steps the user gave (then run.track does not work it out)
        self._planned_steps = planned_steps
        self._span_every = step_span_every
        self._budget = budget
        #: a step's values logged inside run.track, written when the step ends
        self._pending: dict[str, Any] | None = None
        self.in_track = False
        self._seen_keys: set[str] = set(KNOWN_KEYS) | set(COUNTED_KEYS)
        self._next_check = 0
        self._next_refresh = 0.0
        self._milestones = list(MILESTONES)
        self._epoch_started = 0.0
        self._epoch_first_step = 0
        self._reschedule()

    # -- the hot path ----------------------------------------------------------------------
    def log(self, step: int | None = None, step_s: float | None = None,
            **values: SupportsFloat) -> None:
        """Record metrics for the current step: ``run.log(loss=l, lr=lr, samples=32)``.

        Inside ``run.track`` the values belong to the step being timed; outside it, each call
        is one step, timed by ``step_s`` when the caller measured it (framework callbacks).
        Numbers, NumPy scalars and 0-d tensors are accepted; non-finite values are counted and
        flagged, never raised.
        """
        if not values:
            raise ValueError("run.log() needs at least one metric, e.g. run.log(loss=0.5)")
        nonfinite = False
        seen = self._seen_keys
        numbers: dict[str, Any] = values
        for key, value in numbers.items():
            cls = type(value)
            if cls is not float and (cls is not int or not INT64_MIN <= value <= INT64_MAX):
                value = numbers[key] = to_number("run.log", key, value)
            if value - value != 0:
                nonfinite = True
            if key not in seen:
                self._new_key(key)
        state = self.state
        if nonfinite:
            self._flag_nonfinite(numbers)
        else:
            state.latest.update(numbers)
        samples = numbers.get("samples")
        if samples is not None and samples.__class__ is not str:  # str: flagged non-finite
            state.samples += samples
        tokens = numbers.get("tokens")
        if tokens is not None and tokens.__class__ is not str:
            state.tokens += tokens
        if self.in_track and step is None:
            pending = self._pending
            if pending is None:
                self._pending = numbers
            else:
                pending.update(numbers)
        else:
            if step_s is not None:
                step_s = _duration(step_s)
                state.compute_total += step_s
            self._end_step(step_s, None, numbers, step)

    def track(self, iterable: Iterable[T], total: int | None = None) -> Iterator[T]:
        """Iterate over batches, timing data wait vs compute and counting one step per batch."""
        if total is None:
            try:
                total = len(iterable)  # type: ignore[arg-type]  # any iterable; TypeError if none
            except TypeError:
                total = None
        if total is not None and self.total_epochs and self._planned_steps is None:
            self.set_total_steps(self.total_epochs * total)
        return self._track(iter(iterable))

    def _track(self, iterator: Iterator[T]) -> Iterator[T]:
        perf, now_ = time.perf_counter, time.time
        append, new, step_item = self._append, _new, Step
        state = self.state
        self.in_track = True
        started = perf()
        try:
            while True:
                try:
                    batch = next(iterator)
                except StopIteration:
                    return
                except Exception as exc:
                    self._events.error(exc, operation="data_loading")
                    raise
                fetched = perf()
                yield batch
                done = perf()
                wait = fetched - started
                step_s = done - started
                state.data_wait_total += wait
                state.compute_total += done - fetched
                metrics = self._pending
                self._pending = None
                # _end_step inlined: a call less per step (about 80 ns of 1.9 us, measured)
                step = state.step = state.step + 1
                now = state.last_step_ts = now_()
                append(new(step_item, (now, step, state.epoch, step_s, wait, metrics or {})))
                if step >= self._next_check or now >= self._next_refresh:
                    self._periodic(step, now, step_s)
                started = done
        finally:
            self.in_track = False
            self.close()

    def seal(self, run_id: str) -> Callable[..., None]:
        """The run's end: a step logged but not yet closed is written (:meth:`close`), then every
        way to a new step (``log``, ``run.track``) raises instead of queueing for a writer that
        is gone. Costs the hot path nothing: it swaps the queue's ``append`` the step calls
        anyway. Returns the refusing ``log``."""
        self.close()

        def refuse(*args: object, **kwargs: object) -> None:
            raise RuntimeError(ended("run.log", run_id))

        self._append = refuse
        return refuse

    def close(self) -> None:
        """Write a step that was logged but not closed (the loop was left, the run ended)."""
        if self._pending is not None:
            metrics, self._pending = self._pending, None
            self._end_step(None, None, metrics, None)

    def _end_step(self, step_s: float | None, data_wait_s: float | None,
                  metrics: dict[str, Any], step: int | None, new: Any = _new,
                  step_item: type[Step] = Step) -> None:
        """A step ends (outside ``run.track``, which does the same inline); ``new`` and
        ``step_item`` are locals for speed."""
        state = self.state
        if step is None:
            step = state.step + 1
        elif not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise TypeError(f"run.log: step must be a non-negative int, got {step!r}")
        state.step = step
        now = time.time()
        state.last_step_ts = now
        self._append(new(step_item, (now, step, state.epoch, step_s, data_wait_s, metrics)))
        if step >= self._next_check or now >= self._next_refresh:
            self._periodic(step, now, step_s)

    # -- rare per-step work, scheduled by _next_check / _next_refresh ----------------------
    def _periodic(self, step: int, now: float, step_s: float | None) -> None:
        every = self._span_every
        if every and step % every == 0 and step_s is not None:
            self._spans.step(now - step_s, now, step, self.state.epoch)
        if len(self._queue) > QUEUE_HIGH_WATER:
            self._flush_soon()  # a loop outpacing the writer: don't wait for the timer
        total = self.state.total_steps
        while total and self._milestones and step >= math.ceil(total * self._milestones[0] / 100):
            self._milestone(self._milestones.pop(0))
        if now >= self._next_refresh:
            self._next_refresh = now + REFRESH_S
            self._progress.refresh()
        self._reschedule()

    def _reschedule(self) -> None:
        step = self.state.step
        candidates = []
        if self._span_every:
            candidates.append((step // self._span_every + 1) * self._span_every)
        total = self.state.total_steps
        if total and self._milestones:
            candidates.append(math.ceil(total * self._milestones[0] / 100))
        self._next_check = min(candidates) if candidates else sys.maxsize

    def _milestone(self, percent: int) -> None:
        self._progress.line(f"{percent}% reached: {progress_text(self.state, self.total_epochs)}")
        self._events.milestone(percent)

    def set_total_steps(self, total: int) -> None:
        if not isinstance(total, int) or isinstance(total, bool) or total <= 0:
            raise ValueError(f"run.set_total_steps: total must be a positive int, got {total!r}")
        self.state.total_steps = total
        self._reschedule()

    def _new_key(self, key: str) -> None:
        self._budget.admit("run.log", "metrics", key, "Log per-item values with run.histogram()")
        self.state.user_keys.add(key)
        self._seen_keys.add(key)

    def _flag_nonfinite(self, values: dict[str, Any]) -> None:
        """NaN/Inf values: counted, written as text, kept out of averages, never raised."""
        for key, value in list(values.items()):
            if value - value != 0:
                values[key] = nonfinite_text(value)
                if key == "loss":
                    self.state.nonfinite_losses += 1
                self._events.nonfinite(key, values[key])
            else:
                self.state.latest[key] = value

    # -- epochs ----------------------------------------------------------------------------
    def epochs(self, n: int | None = None, start: int = 0) -> Iterator[int]:
        start = check_step("run.epochs", start, "start")
        if n is not None:
            if not check_step("run.epochs", n, "n"):
                raise ValueError("run.epochs: n must be at least 1 (or None: total_epochs)")
            self.total_epochs = self._progress.total_epochs = n
        total = self.total_epochs
        for epoch in (range(start, total) if total else itertools.count(start)):
            self.begin_epoch(epoch)
            try:
                yield epoch
            finally:
                self.end_epoch()

    def begin_epoch(self, epoch: int) -> None:
        self.state.epoch = check_step("run.begin_epoch", epoch, "epoch")
        self._spans.begin_epoch(epoch)
        self._epoch_started = time.perf_counter()
        self._epoch_first_step = self.state.step

    def end_epoch(self) -> None:
        if self._spans.epoch is None:
            return
        state = self.state
        steps = state.step - self._epoch_first_step
        self._spans.end_epoch(steps)
        self._pipeline.write({"ts": time.time(), "type": "epoch", "level": "info",
                              "epoch": state.epoch, "step": state.step, "steps": steps,
                              "duration_s": time.perf_counter() - self._epoch_started})


def _duration(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"run.log: step_s must be a non-negative number of seconds, got {value!r}")
    return float(value)
