"""The hot path and the step model: ``run.log``, ``run.track``, ``run.log_values``, and what a
step sets off now and then (a step span, a progress refresh, a milestone), plus epochs.

**A step is a point on the user's step axis, not a call.** Its number is the ``step=`` the loop
passes (an iteration or global-step counter, any integer-like value), else the next one after the
last (1, 2, 3, ...). A step ends (one ``step`` line in the record) when:

- ``run.log(...)`` is called outside ``run.track`` with ``commit=True`` (the default);
- the body of a ``run.track`` loop ends: every batch is a step, numbered by the ``step=`` the
  loop logged for it, else the next number (pass ``step=`` on every batch or on none);
- ``run.log(..., step=n)`` names a later step than the open one: the open step ends first.

``commit=False`` adds values to the open step without ending it. A step number that is not after
the last one written (values for a step already written, a micro-batch of gradient accumulation
inside ``run.track``) never makes a second step: its values become a ``values`` line at that
step. ``run.log_values`` writes such a line on purpose: epoch-level and other values that neither
count nor time a step.

A step line that comes ``k`` steps after the previous one (a loop that logs every ``k``
iterations) stands for ``k`` steps: steps, samples and tokens count ``k`` times (``samples`` and
``tokens`` are per step), and its ``step_s`` is the wall time since the previous step line over
``k`` unless the loop measured it (``run.track``) or passed ``step_s=``. So rates, samples/s,
tokens/s and the ETA come from step numbers and wall time: logging every ``k`` steps gives the
rates of logging every step.

A step stores numbers in :class:`~traintel.core.state.RunState` and appends one typed item to the
record queue; JSON, aggregates, export and rendering happen on other threads or at collection
time. The tricks that keep it at a couple of microseconds are deliberate (measured by
``benchmarks/step_cost.py``): ``cls is float`` checks before any conversion, local names for
attributes, ``tuple.__new__`` for the queue item, and one comparison of the step against the next
step that needs work (``_next_check``) instead of any per-step bookkeeping.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import Any, SupportsFloat, TypeVar, cast

from traintel.core.forks import discard, reset_in_child
from traintel.core.misuse import printable, warn_once
from traintel.core.refusals import Refusals
from traintel.core.state import (
    COUNTED_KEYS,
    KNOWN_KEYS,
    LOSS_NAMES,
    RunState,
    nonfinite_text,
)
from traintel.core.validate import INT64_MAX, INT64_MIN, NameBudget, check_step, shown, to_number
from traintel.record.format import EpochLine, ValuesLine
from traintel.record.pipeline import Pipeline
from traintel.record.queue import CHECK_EVERY, QUEUE_HIGH_WATER, RecordQueue, Step
from traintel.record.tensors import Deferred, defer, resolve
from traintel.reports.render import progress_text
from traintel.run.events import EventRecorder, ended
from traintel.run.progress import MILESTONES, REFRESH_S, ProgressDisplay
from traintel.run.tracing import RunSpans

T = TypeVar("T")

#: run.track holds batches back until the loop's first run.log says whether it numbers its
#: steps, at most this many or for this long
HOLD_BATCHES, HOLD_S = 100, 1.0
#: builds a Step without the NamedTuple's Python-level __new__ (see traintel.record.queue)
_new = tuple.__new__

log = logging.getLogger("traintel.steps")


class StepRecorder:
    """Steps and epochs of one run. ``log`` and ``track`` are handed to users as they are (the
    run binds them), so they are the functions a training loop calls."""

    def __init__(
        self,
        state: RunState,
        queue: RecordQueue,
        *,
        spans: RunSpans,
        events: EventRecorder,
        pipeline: Pipeline,
        progress: ProgressDisplay,
        make_room: Callable[[], None],
        total_epochs: int | None,
        planned_steps: int | None,
        step_span_every: int,
        budget: NameBudget,
        halt_on_nonfinite: bool = False,
        milestones_done: Iterable[int] = (),
        resumed_at: int | None = None,
        refusals: Refusals | None = None,
        on_supersede: Callable[[int], None] | None = None,
    ) -> None:
        self.state = state
        #: inputs that cannot be recorded: warned and counted, the run goes on (or raised)
        self._refusals = refusals or Refusals(state, strict=True)
        self._queue = queue
        self._append = queue.append
        self._spans = spans
        self._events = events
        self._pipeline = pipeline
        self._progress = progress
        #: the record queue's bound: waits for the writer past its high-water mark
        self._make_room = make_room
        self.total_epochs = total_epochs
        #: the total_steps the user gave (then run.track does not work it out)
        self._planned_steps = planned_steps
        self._span_every = step_span_every
        self._budget = budget
        self._halt = halt_on_nonfinite
        #: 0-d accelerator tensors read off the training thread, unless a non-finite loss must
        #: halt at once (record.tensors)
        self._defer: Callable[[str, Any], Deferred | None] | None = (
            None
            if halt_on_nonfinite
            else partial(defer, on_nonfinite=events.nonfinite, latest=state.latest)
        )
        #: the open step's values (logged with commit=False, or inside run.track) and number
        self._pending: dict[str, Any] | None = None
        self._pending_step: int | None = None
        #: keys of the open step that came from a ``commit=False`` call (W&B's habit: the step
        #: they lead to says so in its line, ``uncommitted``)
        self._uncommitted: set[str] = set()
        #: how many steps the last step written stood for
        self._covers = 1
        #: the last step written in this segment (None before the first)
        self._last: int | None = None
        #: the last step of the record before this segment (a resumed run), else None
        self._base = resumed_at
        #: called with the step a resumed run went back to (its evaluations after it are
        #: taken back: ``Continuation.rewind``)
        self._on_supersede = on_supersede
        #: whether the loop numbers its steps (``step=``; then run.track counts the batches it
        #: did not number into the next numbered step), decided by its first committing
        #: ``run.log``; None until then
        self._numbered: bool | None = None
        self.in_track = False
        #: keys whose first sighting was handled (``loss`` among them once a step logged it)
        self._seen_keys: set[str] = (set(KNOWN_KEYS) | set(COUNTED_KEYS)) - set(LOSS_NAMES)
        self._warned_repeat = False
        self._next_check = 0
        self._next_refresh = 0.0
        self._next_span = 0
        self._milestones = [m for m in MILESTONES if m not in set(milestones_done)]
        self._epoch_started = 0.0
        self._epoch_first_step = 0
        #: where the last epoch ended, else where the run began (perf_counter, wall time,
        #: steps_taken): where an epoch said only at its end began (``since_last_end``)
        self._last_end = (time.perf_counter(), time.time(), state.steps_taken)
        #: called with the time every REFRESH_S or so while steps are logged (rate-limited
        #: warnings, noticing a replaced signal handler)
        self.periodic: list[Callable[[float], None]] = [events.periodic]
        self._reschedule()
        reset_in_child(self._after_fork_in_child)

    # -- the hot path ----------------------------------------------------------------------
    def log(
        self,
        values: Mapping[str, SupportsFloat] | None = None,
        /,
        step: int | None = None,
        *,
        commit: bool = True,
        step_s: float | None = None,
        **metrics: SupportsFloat,
    ) -> None:
        """Record metrics of a step: ``run.log(loss=l, lr=lr)`` or
        ``run.log({"train/loss": l}, step=iter_num)``.

        ``step``: the step's number on the loop's own axis (int, NumPy integer or 0-d integer
        tensor); default: the open step, else the one after the last. ``commit=False`` keeps the
        step open for more values (ignored inside ``run.track``, whose loop body is the step).
        ``step_s``: the step's wall time, when the caller measured it outside ``run.track``.
        Values are numbers, NumPy scalars or 0-d tensors; ``samples`` and ``tokens`` are per
        step. Non-finite values are recorded as they are and flagged, never raised (unless
        ``halt_on_nonfinite``). See the module docstring for the whole step model.
        """
        if not isinstance(commit, bool):
            warn_once(
                f"log.commit.{type(commit).__name__}",
                f"run.log(commit=...) takes True or False, got {printable(commit)[:40]!r}; "
                "the step is committed (pass commit=False to keep it open)",
            )
            commit = True
        if values is not None:
            try:
                metrics = _merged(values, metrics)
            except TypeError as error:
                self._refusals.refuse("run.log", "values", error, "call", "the call is dropped")
                return
        if not metrics and (not commit or self._pending is None or self.in_track):
            # ``run.log()`` with values logged with commit=False open commits them, as
            # ``wandb.log({})`` does (a W&B loop's way to end a step); with none, it is refused
            self._refusals.refuse(
                "run.log",
                "()",
                ValueError(
                    "run.log() needs at least one metric, e.g. run.log(loss=0.5) or "
                    "run.log({'train/loss': 0.5}), or values logged with commit=False to commit"
                ),
                "call",
                "the call is dropped",
            )
            return
        nonfinite = deferred = False
        seen = self._seen_keys
        numbers: dict[str, Any] = metrics
        try:
            for key, value in numbers.items():
                cls = type(value)
                if cls is not float and (cls is not int or not INT64_MIN <= value <= INT64_MAX):
                    later = self._defer(key, value) if self._defer is not None else None
                    if later is None:
                        value = numbers[key] = to_number("run.log", key, value)
                    else:  # an accelerator tensor: read by the writer, no sync (record.tensors)
                        numbers[key] = later
                        deferred = True
                        value = 0.0
                if value - value != 0:
                    nonfinite = True
                if key not in seen:
                    self._new_key("run.log", key)
        except (TypeError, ValueError):  # a key or value refused: the rest is recorded
            numbers = metrics = self._sift("run.log", metrics)
            if not numbers and (not commit or self._pending is None or self.in_track):
                return  # (a call left with nothing still commits values logged before it)
            nonfinite = any(
                type(value) is not Deferred and value - value != 0 for value in numbers.values()
            )
        if step is not None:
            if type(step) is not int or not 0 <= step <= INT64_MAX:
                try:
                    step = check_step("run.log", step)
                except (TypeError, ValueError) as error:
                    self._refusals.refuse("run.log", "step", error, then="the call is dropped")
                    return
            self._numbered = True
        elif commit and self._numbered is None:
            self._numbered = False
        self.state.latest.update(
            numbers
            if not deferred
            else {k: v for k, v in numbers.items() if type(v) is not Deferred}
        )
        halt = nonfinite and self._flag_nonfinite(numbers, step)
        if self.in_track:
            if step is not None:
                self._pending_step = step
            pending = self._pending
            if pending is None:
                self._pending = metrics
            else:
                pending.update(metrics)
            if halt:
                self._halt_now(metrics, step)
            return
        if step is not None:
            last, open_step = self._last, self._pending_step
            if last is not None and step <= last or open_step is not None and step < open_step:
                # not after what is written or open: no step. Values logged with commit=False
                # and no number lead to this step (W&B merges them into it): they join it here
                keys: set[str] = set()
                if open_step is None and self._pending is not None:
                    merged, self._pending = self._pending, None
                    merged.update(metrics)
                    keys, self._uncommitted = self._uncommitted.difference(metrics), set()
                    if not commit:
                        keys.update(metrics)
                    metrics = merged
                elif not commit:
                    keys.update(metrics)
                if keys and step == last:  # the step's own values: counted as its (join)
                    self._count_joined(metrics)
                self._repeated(step, metrics, tuple(sorted(keys)))
                if halt:
                    self._halt_now(metrics, step)
                return
            if open_step is not None and open_step < step:
                self.close()  # a later step: the open one ends first
            self._pending_step = step
        if not commit:
            self._uncommitted.update(metrics)
        pending = self._pending
        if pending is None:
            pending = self._pending = metrics
        else:
            pending.update(metrics)
        if step_s is not None:
            try:
                step_s = _duration(step_s)
                self.state.compute_total += step_s
            except ValueError as error:
                self._refusals.refuse("run.log", "step_s", error, then="step_s is ignored")
                step_s = None
        if commit:
            self._pending = None
            number, self._pending_step = self._pending_step, None
            self._end_step(
                number,
                step_s,
                None,
                pending,
                time.time(),
                uncommitted=self._take_uncommitted(metrics) if self._uncommitted else (),
            )
        if halt:
            self._halt_now(metrics, step)

    def log_values(
        self,
        values: Mapping[str, SupportsFloat] | None = None,
        /,
        step: int | None = None,
        **metrics: SupportsFloat,
    ) -> None:
        """Values that are not a training step (epoch-level figures, values for a step already
        written): a ``values`` line at ``step`` (default: the current one) that neither counts
        nor times a step. Names, numbers and non-finite values as in ``run.log``."""
        self._events.check_live("run.log_values")
        refuse = self._refusals.refuse
        if values is not None:
            try:
                metrics = _merged(values, metrics, "run.log_values")
            except TypeError as error:
                refuse("run.log_values", "values", error, "call", "the call is dropped")
                return
        numbers: dict[str, Any] = self._sift("run.log_values", metrics)
        if not numbers:
            if not metrics:
                refuse(
                    "run.log_values",
                    "()",
                    ValueError(
                        "run.log_values() needs at least one value, e.g. "
                        "run.log_values(train_acc=0.9)"
                    ),
                    "call",
                    "the call is dropped",
                )
            return
        try:
            number = self.state.step if step is None else check_step("run.log_values", step)
        except (TypeError, ValueError) as error:
            refuse("run.log_values", "step", error, then="the call is dropped")
            return
        self.state.latest.update(numbers)
        halt = any(v - v != 0 for v in numbers.values()) and self._flag_nonfinite(numbers, number)
        self._write_values(number, numbers)
        if halt:
            self._halt_now(numbers, number)

    def track(self, iterable: Iterable[T], total: int | None = None) -> Iterator[T]:
        """Iterate over batches, timing data wait vs compute; each batch is a step."""
        if not isinstance(iterable, Iterable) and not hasattr(iterable, "__getitem__"):
            raise TypeError(
                f"run.track(iterable): expects what a for loop takes (a DataLoader, "
                f"range(n), a list), got {type(iterable).__name__}"
            )
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
        #: seconds (and data wait) of batches that are part of the next numbered step
        carried = carried_wait = 0.0
        #: batches before the loop's first run.log: (end, seconds, data wait)
        held: list[tuple[float, float, float]] = []
        in_batch = False
        fetched = started
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
                in_batch = True
                yield batch
                in_batch = False
                done = perf()
                wait = fetched - started
                state.data_wait_total += wait
                state.compute_total += done - fetched
                metrics = self._pending
                number = self._pending_step
                numbered = self._numbered
                if numbered is None:
                    # the loop has not said yet whether it numbers its steps (its first
                    # run.log will): hold the batches back, at most HOLD_BATCHES or HOLD_S
                    held.append((now_(), done - started, wait))
                    started = done
                    if len(held) >= HOLD_BATCHES or held[-1][0] - held[0][0] >= HOLD_S:
                        self._numbered = False
                        self._release(held)
                    continue
                if held:
                    if numbered:  # the batches held back are part of the first numbered step
                        carried += sum(seconds for _, seconds, _ in held)
                        carried_wait += sum(waited for _, _, waited in held)
                        held.clear()
                    else:
                        self._release(held)
                if numbered:
                    # the loop numbers its steps: a batch it did not number (a micro-batch of
                    # gradient accumulation, a batch between two logged ones) is part of the
                    # next numbered step, which stands for every step since the last
                    carried += done - started
                    carried_wait += wait
                    started = done
                    if number is not None:
                        self._pending = self._pending_step = None
                        if self._end_step(
                            number, None, None, metrics or {}, now_(), carried, carried_wait
                        ):
                            carried = carried_wait = 0.0
                    continue
                self._pending = None
                # the next step: _end_step inlined, a call less per step (80 ns of 1.9 µs)
                step = self._last = state.step = state.step + 1
                state.steps_taken += 1
                now = state.last_step_ts = now_()
                if metrics:
                    samples = metrics.get("samples")
                    if samples is not None:
                        if samples >= 0:  # NaN is refused before (_flag_nonfinite)
                            state.samples += samples
                        else:
                            self._refuse_count(metrics, "samples", samples)
                    tokens = metrics.get("tokens")
                    if tokens is not None:
                        if tokens >= 0:
                            state.tokens += tokens
                        else:
                            self._refuse_count(metrics, "tokens", tokens)
                else:
                    metrics = {}
                append(new(step_item, (now, step, state.epoch, done - started, wait, metrics)))
                if step >= self._next_check or now >= self._next_refresh:
                    self._periodic(step, now, done - started)
                started = done
        finally:
            self.in_track = False
            if (
                in_batch
                and self._pending is not None
                and (self._pending_step is not None or self._numbered is False)
            ):
                # the loop left inside a batch that logged (a `break` after run.log): the batch
                # is its step, timed up to now
                number, metrics = self._pending_step, self._pending
                self._pending = self._pending_step = None
                self._end_step(
                    number,
                    None,
                    None,
                    metrics,
                    now_(),
                    carried + perf() - started,
                    carried_wait + fetched - started,
                )
            if held:  # a loop that never called run.log: every batch is a step
                self._numbered = False
                self._release(held)
            if self._numbered and self._pending is not None and self._pending_step is None:
                # values of batches after the last numbered one: no step was numbered for them
                self._write_values(self.state.step, self._pending)
                self._pending = None
            self.close()

    def under_way(self) -> int:
        """The number of the step under way: the open one's, else the one after the last."""
        return self._pending_step if self._pending_step is not None else self.state.step + 1

    def seal(self, run_id: str) -> Callable[..., None]:
        """The run's end: a step logged but not yet closed is written (:meth:`close`), then every
        way to a new step (``log``, ``run.track``) raises instead of queueing for a writer that
        is gone. Costs the hot path nothing: it swaps the queue's ``append`` the step calls
        anyway. Returns the refusing ``log``.

        Values logged with ``commit=False`` and no step number that no later call committed
        join the last step written (a ``values`` line marked ``uncommitted``), as W&B keeps them
        in the step under way: the end of the run is no step of its own. A run that wrote no
        step yet makes them its step."""
        if self._pending is not None and self._pending_step is None and self._last is not None:
            metrics, self._pending = self._pending, None
            self._write_values(self._last, metrics, self._take_uncommitted(()))
        self.close()

        def refuse(*args: object, **kwargs: object) -> None:
            raise RuntimeError(ended("run.log", run_id))

        self._append = refuse
        return refuse

    def _after_fork_in_child(self) -> None:
        """In a forked child: steps go nowhere, never to the parent's record queue."""
        self._append = discard
        self._queue = cast(RecordQueue, _Detached())

    def _release(self, held: list[tuple[float, float, float]]) -> None:
        """Batches held back, each a step of its own (the loop does not number its steps)."""
        for at, seconds, waited in held:
            self._end_step(None, seconds, waited, {}, at)
        held.clear()

    def close(self) -> None:
        """End the open step, if any (the loop was left, the run ends, a later step began)."""
        if self._pending is not None:
            metrics, number = self._pending, self._pending_step
            self._pending = self._pending_step = None
            self._end_step(
                number, None, None, metrics, time.time(), uncommitted=self._take_uncommitted(())
            )

    def _count_joined(self, metrics: dict[str, Any]) -> None:
        """Samples and tokens of values that join the step just written (``StepFigures.join``
        folds them the same way into the record's figures)."""
        state, covers = self.state, self._covers
        samples = metrics.get("samples")
        if samples is not None and samples.__class__ is not str:
            state.samples += samples * covers
        tokens = metrics.get("tokens")
        if tokens is not None and tokens.__class__ is not str:
            state.tokens += tokens * covers

    def _take_uncommitted(self, committed: Iterable[str]) -> tuple[str, ...]:
        """The keys of the step being written that came from ``commit=False`` calls (less those
        the committing call logged again), sorted; the open step's set starts afresh."""
        keys = self._uncommitted
        if not keys:
            return ()
        self._uncommitted = set()
        return tuple(sorted(keys.difference(committed)))

    def _end_step(
        self,
        step: int | None,
        step_s: float | None,
        data_wait_s: float | None,
        metrics: dict[str, Any],
        now: float,
        span_s: float | None = None,
        span_wait_s: float | None = None,
        uncommitted: tuple[str, ...] = (),
    ) -> bool:
        """Write step ``step`` (None: the next number); True if it was written. A number not
        after the last step written is no new step: its values are kept as a ``values`` line.

        A step ``k`` after the last one stands for ``k`` steps; a run's first step for one (or
        for the steps since ``initial_step``); a
        resumed run's first for the steps since the record's last one, when it comes after it.
        ``span_s``/``span_wait_s``: the wall time (data wait) the step line covers, measured
        by ``run.track``; else ``step_s`` as given, else the time since the last step line."""
        state = self.state
        last = self._last
        if step is None:
            step = state.step + 1
            covers = 1
        elif last is None:
            base = self._base
            if base is not None and step <= base:  # resumed from an older checkpoint
                self._events.own_event(
                    "superseded",
                    logging.INFO,
                    {"after_step": step - 1, "through_step": base, "step": step},
                    text=f"resumed at step {step}: the record's steps {step}..{base} are "
                    "superseded (counted once, their lines kept)",
                )
                base = self._base = step - 1
                if self._on_supersede is not None:
                    self._on_supersede(base)
            covers = step - base if base is not None and step > base else 1
        elif step > last:
            covers = step - last
        else:
            if metrics:
                self._repeated(step, metrics, uncommitted)
            return False
        if span_s is not None:
            step_s = span_s / covers
            data_wait_s = None if span_wait_s is None else span_wait_s / covers
        elif step_s is None and last is not None and state.last_step_ts is not None:
            step_s = (now - state.last_step_ts) / covers
        self._last = state.step = step
        self._covers = covers
        state.steps_taken += covers
        state.last_step_ts = now
        if metrics:
            samples = metrics.get("samples")
            if samples is not None:
                if samples >= 0:  # NaN is refused before (_flag_nonfinite)
                    state.samples += samples * covers
                else:
                    self._refuse_count(metrics, "samples", samples)
            tokens = metrics.get("tokens")
            if tokens is not None and tokens.__class__ is not str:
                if tokens >= 0:
                    state.tokens += tokens * covers
                else:
                    self._refuse_count(metrics, "tokens", tokens)
        self._append(
            _new(
                Step,
                (now, step, state.epoch, step_s, data_wait_s, metrics, uncommitted)
                if uncommitted
                else (now, step, state.epoch, step_s, data_wait_s, metrics),
            )
        )
        if step >= self._next_check or now >= self._next_refresh:
            self._periodic(step, now, step_s)
        return True

    def _repeated(
        self, step: int, metrics: dict[str, Any], uncommitted: tuple[str, ...] = ()
    ) -> None:
        """Values for a step already written: a values line, and one warning per run when the
        loop went back (the step just written again is W&B's way of adding to a step: no
        warning)."""
        if not self._warned_repeat and not self.in_track and step != self._last:
            self._warned_repeat = True
            log.warning(
                "run.log: step %d was already written (the last step is %d); its "
                "values are kept as a values line, not a second step. Steps only go "
                "forward: log later values with a later step, or with "
                "run.log_values()",
                step,
                self._last,
            )
        self._write_values(step, metrics, uncommitted)

    def _write_values(
        self, step: int, metrics: dict[str, Any], uncommitted: tuple[str, ...] = ()
    ) -> None:
        resolve(metrics, step)  # a rare line: an accelerator tensor in it is read here
        line: ValuesLine = {
            "ts": time.time(),
            "type": "values",
            "level": "info",
            "step": step,
            "epoch": self.state.epoch,
            "metrics": metrics,
        }
        if uncommitted:
            line["uncommitted"] = list(uncommitted)
        self._pipeline.write(line)

    # -- rare per-step work, scheduled by _next_check / _next_refresh ----------------------
    def _periodic(self, step: int, now: float, step_s: float | None) -> None:
        if self._span_every and step >= self._next_span and step_s is not None:
            self._spans.step(now - step_s, now, step, self.state.epoch)
        if len(self._queue) > QUEUE_HIGH_WATER:
            self._make_room()  # a loop outpacing the writer waits for it (record.queue)
        total = self.state.total_steps
        while total and self._milestones and step >= math.ceil(total * self._milestones[0] / 100):
            self._milestone(self._milestones.pop(0))
        if now >= self._next_refresh:
            self._next_refresh = now + REFRESH_S
            self._progress.refresh()
            for call in self.periodic:
                call(now)
        self._reschedule()

    def _reschedule(self) -> None:
        step = self.state.step
        candidates = [(step // CHECK_EVERY + 1) * CHECK_EVERY]  # a look at the record queue
        if self._span_every:
            self._next_span = (step // self._span_every + 1) * self._span_every
            candidates.append(self._next_span)
        total = self.state.total_steps
        if total and self._milestones:
            candidates.append(math.ceil(total * self._milestones[0] / 100))
        self._next_check = min(candidates)

    def _milestone(self, percent: int) -> None:
        self._progress.line(f"{percent}% reached: {progress_text(self.state, self.total_epochs)}")
        self._events.milestone(percent)

    def set_total_steps(self, total: int) -> None:
        if not isinstance(total, int) or isinstance(total, bool) or total <= 0:
            self._refusals.refuse(
                "run.set_total_steps",
                "total",
                ValueError(
                    f"run.set_total_steps: total must be a positive int, got {shown(total)}"
                ),
                then="the planned steps are unchanged",
            )
            return
        self.state.total_steps = total
        self._reschedule()

    def _sift(self, what: str, metrics: dict[str, Any]) -> dict[str, Any]:
        """The values of ``metrics`` that can be recorded, each checked alone; each refused one
        is left out (warned once, counted; raised when strict). The rare path of ``log``."""
        kept: dict[str, Any] = {}
        for key, value in metrics.items():
            try:
                if (
                    type(value) is not float
                    and type(value) is not Deferred
                    and (type(value) is not int or not INT64_MIN <= value <= INT64_MAX)
                ):
                    value = to_number(what, key, value)
                if key not in self._seen_keys:
                    self._new_key(what, key)
            except (TypeError, ValueError) as error:
                self._refusals.refuse(what, key, error, then=f"{shown(key)} is left out")
                continue
            kept[key] = value
        return kept

    def _refuse_count(self, metrics: dict[str, Any], key: str, value: object) -> None:
        """``samples`` or ``tokens`` that is no count (negative, NaN): left out of the step, so
        that the counters never go down (an OpenMetrics counter that decreases is invalid)."""
        del metrics[key]
        self._refusals.refuse(
            "run.log",
            key,
            ValueError(
                f"run.log: {key!r} = {shown(value)} is refused: {key} is a count per step, a "
                f"non-negative number; pass len(batch) (or the batch's {key}), not a difference"
            ),
            "count",
            f"{key} is left out of the step",
        )

    def _new_key(self, what: str, key: str) -> None:
        state = self.state
        if key not in KNOWN_KEYS:  # a catalog metric of its own is no name of the budget
            # admitted first: a name the budget refuses is never seen (a retry refuses it too)
            self._budget.admit(what, "metrics", key, "Log per-item values with run.histogram()")
            state.user_keys.add(key)
        if state.loss_key is None and key in LOSS_NAMES:
            if what == "run.log":
                state.loss_key = key  # the first loss name a step logs is the loss
            # else (run.log_values: an epoch figure) it stays unseen: a step may still log it
        else:
            self._seen_keys.add(key)

    def _flag_nonfinite(self, values: dict[str, Any], step: int | None) -> bool:
        """NaN/Inf values: written as text (JSON has none), counted, flagged with rate-limited
        warnings, kept out of averages. True when the run must stop (``halt_on_nonfinite`` and
        a non-finite loss)."""
        if step is None:
            step = self._pending_step if self._pending_step is not None else self.state.step + 1
        halt = False
        for key, value in list(values.items()):
            if type(value) is not Deferred and value - value != 0:
                if key in COUNTED_KEYS:  # no count: never summed, never a text in its place
                    self._refuse_count(values, key, value)
                    continue
                values[key] = nonfinite_text(value)
                self._events.nonfinite(key, values[key], step)
                halt = halt or self._halt and self.state.is_loss(key)
        return halt

    def _halt_now(self, values: dict[str, Any], step: int | None) -> None:
        """``halt_on_nonfinite``: the step with the non-finite loss is written, then the
        error is recorded and raised."""
        key = next(k for k in values if values[k].__class__ is str and self.state.is_loss(k))
        self.close()
        self._events.halt_nonfinite(key, values[key], self.state.step if step is None else step)

    # -- epochs ----------------------------------------------------------------------------
    def epochs(self, n: int | None = None, start: int = 0) -> Iterator[int]:
        start = check_step("run.epochs", start, "start")
        if n is not None:
            if not check_step("run.epochs", n, "n"):
                raise ValueError("run.epochs: n must be at least 1 (or None: total_epochs)")
            self.total_epochs = self._progress.total_epochs = n
        total = self.total_epochs
        for epoch in range(start, total) if total else itertools.count(start):
            self.begin_epoch(epoch)
            try:
                yield epoch
            except GeneratorExit:
                # left by a break or by an exception, which look alike from here: the epoch
                # stays open, and what comes next ends it (the next epoch, the end of the run:
                # cut when the run failed, was interrupted or preempted)
                return
            self.end_epoch()

    def begin_epoch(self, epoch: int, since_last_end: bool = False) -> None:
        try:
            number = check_step("run.begin_epoch", epoch, "epoch")
        except (TypeError, ValueError) as error:  # a framework's odd epoch: not a reason to stop
            self._refusals.refuse(
                "run.begin_epoch", "epoch", error, then="the epoch goes on as it was"
            )
            return
        self.end_epoch()  # a loop that only says where epochs begin: the open one ends here
        self.state.epoch = number
        if since_last_end:  # said at its end: it began where the last one ended
            self._epoch_started, began, self._epoch_first_step = self._last_end
            self._spans.begin_epoch(number, began)
        else:
            self._spans.begin_epoch(number)
            self._epoch_started = time.perf_counter()
            self._epoch_first_step = self.state.steps_taken

    def end_epoch(self, cut: bool = False) -> None:
        """The open epoch's end; ``cut``: the run ends inside it (not counted as ended)."""
        if self._spans.epoch is None:
            return
        state = self.state
        steps = state.steps_taken - self._epoch_first_step
        if not cut:
            state.epochs_ended += 1
        self._spans.end_epoch(steps)
        line: EpochLine = {
            "ts": time.time(),
            "type": "epoch",
            "level": "info",
            "epoch": state.epoch,
            "step": state.step,
            "steps": steps,
            "duration_s": time.perf_counter() - self._epoch_started,
            "cut": cut,
        }
        self._pipeline.write(line)
        self._last_end = (time.perf_counter(), line["ts"], state.steps_taken)


class _Detached(list[object]):
    """The record queue of a forked child's steps: always empty (its length is read)."""


def _merged(values: object, metrics: dict[str, Any], what: str = "run.log") -> dict[str, Any]:
    """The dict form and the keywords together (a copy: the caller's dict is left alone)."""
    if not isinstance(values, Mapping):
        raise TypeError(
            f"{what}: the first argument is a dict of metrics, e.g. "
            f"{what}({{'loss': 0.5}}, step=10); got {type(values).__name__} "
            f"{shown(values)}" + ("; pass the step as step=..." if isinstance(values, int) else "")
        )
    merged = dict(values)
    merged.update(metrics)
    return merged


def _duration(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"run.log: step_s must be a non-negative number of seconds, got {value!r}")
    return float(value)


class StepMethods:
    """The step model's methods as a run offers them (``Run`` inherits them; the step recorder
    does the work). The module docstring describes the step model."""

    _steps: StepRecorder

    def log(
        self,
        values: Mapping[str, SupportsFloat] | None = None,
        /,
        step: int | None = None,
        *,
        commit: bool = True,
        step_s: float | None = None,
        **metrics: SupportsFloat,
    ) -> None:
        """Record a step's metrics: ``run.log(loss=l, lr=lr)``,
        ``run.log({"train/loss": l}, step=iter_num)``.

        ``step``: the step's number on the loop's own axis (an int, NumPy integer or 0-d integer
        tensor); by default the open step, else the one after the last. Outside ``run.track``
        a call ends the step unless ``commit=False``, which keeps it open for more values;
        inside ``run.track`` the loop body is the step. A step ``k`` after the previous one
        stands for ``k`` steps (logging every ``k`` iterations). ``step_s``: the step's wall
        time, when the loop measured it. ``samples``, ``tokens``: per step. Values: numbers,
        NumPy scalars, 0-d tensors; NaN/Inf are recorded as they are and flagged."""
        self._steps.log(values, step, commit=commit, step_s=step_s, **metrics)

    def log_values(
        self,
        values: Mapping[str, SupportsFloat] | None = None,
        /,
        step: int | None = None,
        **metrics: SupportsFloat,
    ) -> None:
        """Values that are not a training step (epoch-level figures: ``train_acc``, ...): a
        ``values`` line at ``step`` (default: the current one), neither counted nor timed."""
        self._steps.log_values(values, step, **metrics)

    def track(self, iterable: Iterable[T], total: int | None = None) -> Iterator[T]:
        """Iterate over batches, timing data wait vs compute; each batch is one step (numbered
        by the ``step=`` logged for it, else the next number)."""
        return self._steps.track(iterable, total)

    def epochs(self, n: int | None = None, start: int = 0) -> Iterator[int]:
        """Iterate over epochs ``start, start + 1, ...`` (``n`` or ``total_epochs`` of them;
        forever if neither is known); each is recorded with the loop's own number."""
        return self._steps.epochs(n, start)

    def begin_epoch(self, epoch: int, since_last_end: bool = False) -> None:
        """Start epoch ``epoch`` (for frameworks that report epochs by callback).
        ``since_last_end``: the epoch began where the last one ended (else where the run began),
        for a loop that says an epoch's number only at its end (the ``*_no_trainer.py``
        examples' one ``accelerator.log`` per epoch): begin it so, then end it."""
        self._steps.begin_epoch(epoch, since_last_end)

    def end_epoch(self, cut: bool = False) -> None:
        """End the current epoch: its span and its record line; ``cut``: the loop stopped
        inside it (early stopping), so it is not counted among the epochs that ended."""
        self._steps.end_epoch(cut)

    def set_total_steps(self, total: int) -> None:
        """The planned number of steps on the loop's step axis (progress, ETA, milestones)."""
        self._steps.set_total_steps(total)

    @property
    def total_epochs(self) -> int | None:
        return self._steps.total_epochs

    @property
    def in_track(self) -> bool:
        """Whether a ``run.track`` loop is timing a step now."""
        return self._steps.in_track
