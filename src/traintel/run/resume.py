"""Continuing a run: ``traintel.init(run_id=..., resume=...)`` after a preemption, a time limit or
a crash, in a new process.

One run keeps one record: the new process takes the record's lock (one live writer per record,
``traintel.record.lock``), folds what the record holds (``RecordFold``: steps, samples, losses,
evaluations with their bests, errors, events, milestones, non-finite counts, configuration,
tags) and goes on as the record's next *segment*. summary.json then covers every segment; a
milestone that fired is not fired again; the configuration's changed keys are named.

``resume``: ``True`` or ``"allow"`` continues a record that exists and starts one that does not;
``"must"`` refuses to start without one; ``False`` or ``"never"`` refuses to continue one; the
default (None) continues an existing record with a warning that says how to ask for this on
purpose (launchers reuse ids: a requeued SLURM job has the same one).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any

from traintel.core.state import IntervalStats, NonFinite, RunState
from traintel.export.readings import Histograms
from traintel.record.format import EVENTS_FILE
from traintel.record.lock import RecordLock
from traintel.record.reader import Records, rotation_set
from traintel.record.summary import EvalFigures, RecordFold, Segment, ended
from traintel.run.identity import RunIdentity
from traintel.run.settings import ResumeMode

#: how the record writes a value that is not finite
NONFINITE_TEXT = frozenset({"nan", "inf", "-inf"})

log = logging.getLogger("traintel.run")

#: a carried sum is rounded up by this part of itself: the record holds each step line's mean
#: data wait and compute time over the steps it stands for, and a carried total a rounding error
#: below the one the killed process last exported would read as a counter reset
ROUND_UP = 1e-9


class Cumulative:
    """The cumulative series a process accumulates beyond what :class:`RecordFold` holds,
    folded from the record's lines exactly as the live process accumulated them: the values
    logged per key (``traintel_logged_values_total``, ``..._nonfinite_total``), evaluations and
    best evaluations (``traintel_events_total{event="eval"|"best_eval"}``), the step-duration
    histogram, data-wait and compute seconds, failed live exports by signal, and user counters
    whose totals the record holds (a segment that ended wrote them; a killed one could not).

    The rule (docs/record-format.md): on resume every cumulative series continues from the
    previous segment's value under the same labels, so that no exported counter goes down
    across a segment. ``traintel sync`` folds the same lines the same way (``sync.plan``), so
    the points it sends for a resumed segment equal the live ones.
    """

    def __init__(self) -> None:
        self.logged = IntervalStats()
        self.histograms = Histograms()
        self.events: dict[str, int] = {}
        self.data_wait = 0.0
        self.compute = 0.0
        self.counters: dict[str, float] = {}
        #: failed live exports by signal (``export`` lines)
        self.export_failures: dict[str, int] = {}
        #: the step the current segment's steps count from, and its last step line's
        self._base: int | None = None
        self._last: int | None = None
        #: no step line yet in the current segment
        self._fresh = True
        self._segments = 0

    def add(self, line: dict[str, Any]) -> None:
        kind = line.get("type")
        if kind == "step":
            self._step(line)
        elif kind == "eval":
            self._count("eval")
            is_best = line.get("is_best")
            if isinstance(is_best, dict) and any(v is True for v in is_best.values()):
                self._count("best_eval")
        elif kind == "run_start":
            self._segments += 1
            initial = line.get("initial_step")
            if self._segments > 1:  # a resumed segment counts from the record's last step
                self._base = self._last if self._last is not None else 0
            else:
                self._base = initial if type(initial) is int and initial >= 0 else None
            self._fresh = True
        elif kind == "export" and line.get("ok") is False and isinstance(line.get("signal"), str):
            signal = line["signal"]
            self.export_failures[signal] = self.export_failures.get(signal, 0) + 1
        elif kind == "instrument" and line.get("kind") == "counter":
            name, total = line.get("name"), line.get("total")
            total = _finite(total)
            if isinstance(name, str) and total is not None:
                self.counters[name] = max(self.counters.get(name, 0.0), total)

    def _step(self, line: dict[str, Any]) -> None:
        """What ``sync.replay.Replay._step`` (and the live process) does with a step line."""
        step, metrics = line.get("step"), line.get("metrics")
        if type(step) is not int or step < 0:
            return
        step_s, data_wait_s = _finite(line.get("step_s")), _finite(line.get("data_wait_s"))
        if self._fresh:
            covers = step - self._base if self._base is not None and step > self._base else 1
            self._fresh = False
        else:
            covers = step - self._last if self._last is not None and step > self._last else 1
        self._last = step
        if step_s is not None and data_wait_s is not None:
            self.data_wait += data_wait_s * covers
            self.compute += (step_s - data_wait_s) * covers
        elif step_s is not None:
            self.compute += step_s * covers
        if isinstance(metrics, dict):
            self.logged.fold(metrics)
        if step_s is not None:
            self.histograms.observe("step", None, step_s)

    def _count(self, event: str) -> None:
        self.events[event] = self.events.get(event, 0) + 1

    def restore(self, state: RunState) -> None:
        """Start ``state`` from these totals (copies: the fold may go on)."""
        state.logged.counts.update(self.logged.counted())
        for event, count in self.events.items():
            state.events[event] = state.events.get(event, 0) + count
        state.data_wait_total += self.data_wait * (1 + ROUND_UP)
        state.compute_total += self.compute * (1 + ROUND_UP)
        for name, total in self.counters.items():
            state.counters[name] = max(state.counters.get(name, 0.0), total)
        for signal, failures in self.export_failures.items():
            state.export_failures[signal] = state.export_failures.get(signal, 0) + failures

    def restore_histograms(self, histograms: Histograms) -> None:
        """Start the exported histograms from these (before any observation of the segment)."""
        histograms.carry(self.histograms)


def _finite(value: object) -> float | None:
    """A finite number of a line as a float, else None."""
    if (type(value) is float or type(value) is int) and math.isfinite(value):
        return float(value)
    return None


@dataclass
class Continuation:
    """Where this process's segment stands in its run's record."""

    #: this segment's number: 1 for a new record
    segment: int = 1
    #: whether ``resume=`` asked for the continuation
    resumed: bool = False
    #: what the record held before this segment (None: a new record)
    before: RecordFold | None = None
    #: this segment's lock on the record
    lock: RecordLock | None = field(default=None, repr=False)
    #: the steps the record held before this segment
    steps_before: int = 0
    #: the cumulative series the record's lines add up to (None: a new record)
    cumulative: Cumulative | None = None

    @property
    def segments(self) -> list[Segment]:
        """The segments before this one; one that never ended was killed (we hold its lock)."""
        if self.before is None:
            return []
        return [ended(dict(s)) for s in self.before.segments]  # type: ignore[arg-type]

    def carried(self, identity: RunIdentity) -> RunIdentity:
        """The identity with what the record said before: every segment's tags, and the group
        and notes unless this segment gives its own."""
        before = self.before
        if before is None:
            return identity
        return replace(
            identity,
            tags=tuple(dict.fromkeys((*before.tags, *identity.tags))),
            group=identity.group or before.group,
            notes=identity.notes or before.notes,
        )

    def release(self) -> None:
        """Give the record back (the run ended, or failed to start)."""
        if self.lock is not None:
            self.lock.release()

    def carry(self, histograms: Histograms) -> None:
        """The step-duration histogram goes on from the record, as every counter does."""
        if self.cumulative is not None:
            self.cumulative.restore_histograms(histograms)

    def restore(
        self,
        state: RunState,
        histograms: Histograms | None = None,
        initial_step: int | None = None,
    ) -> None:
        """The run state as the record left it: step axis, counts, bests, errors, events, and
        every cumulative series (:class:`Cumulative`). ``initial_step``: where this segment
        goes on from (an older checkpoint: the evaluations after it do not count)."""
        before = self.before
        if before is None:
            return
        if self.cumulative is not None:
            self.cumulative.restore(state)
            if histograms is not None:
                self.cumulative.restore_histograms(histograms)
        figures = before.figures
        state.step = next(
            (s["last_step"] for s in reversed(before.segments) if s["last_step"] is not None), 0
        )
        state.steps_taken, state.samples, state.tokens = (
            figures.steps,
            figures.samples,
            figures.tokens,
        )
        self.steps_before = figures.steps
        state.epoch = before.epoch or 0
        state.epochs_ended = before.epochs
        self._evals(state, before.evals if initial_step is None else before.evals_at(initial_step))
        # the last value of each key, as summary.json says it over every segment ("nan" as text)
        state.latest.update({key: float(value) for key, value in before.metrics.items()})
        state.errors.update(before.errors)
        state.first_error = state.first_error or dict(before.first_error or {}) or None
        state.events.update(before.events)
        if state.loss_key is None:
            state.loss_key = before.figures.loss_key
        for key, seen in before.nonfinite.items():
            restored = state.nonfinite[key] = NonFinite(seen["first_step"])
            restored.count, restored.last_step = seen["count"], seen["last_step"]
            if state.is_loss(key):
                state.nonfinite_losses += seen["count"]

    def rewind(self, state: RunState, after: int) -> None:
        """This segment went back to step ``after`` (its first step is not after the record's
        last): the evaluations the record held after it no longer count, nor those this
        process logged before its first step (they stand at the record's last step).
        Counters (``traintel_events_total{event="eval"}``) are not taken back."""
        if self.before is not None:
            self._evals(state, self.before.evals_at(after))

    @staticmethod
    def _evals(state: RunState, evals: dict[str, EvalFigures]) -> None:
        """The evaluations' latest and best values as the record says them (their directions
        stay: they are no values of a step). New dicts, each put in place at once: the
        exporters read them from their own threads."""
        latest: dict[str, float] = {}
        best: dict[str, float] = {}
        best_step: dict[str, int] = {}
        for name, figures_of in evals.items():
            state.goals.setdefault(name, figures_of["mode"])
            last = figures_of["last"]
            if type(last) is float or type(last) is int:
                latest[name] = last
            elif isinstance(last, str) and last in NONFINITE_TEXT:
                latest[name] = float(last)
            if figures_of["best"] is not None and figures_of["mode"] is not None:
                best[name] = figures_of["best"]
                if figures_of["best_step"] is not None:
                    best_step[name] = figures_of["best_step"]
        state.eval_latest, state.eval_best, state.eval_best_step = latest, best, best_step


def open_record(identity: RunIdentity, resume: ResumeMode) -> Continuation:
    """Lock this rank's record and fold what it holds; refuse what ``resume`` rules out
    (``traintel.run.settings`` checked it is one of the modes)."""
    lock = RecordLock(identity.dir).acquire(identity.id)
    try:
        exists = bool(rotation_set(identity.dir / EVENTS_FILE))
        if not exists:
            if resume == "must":
                raise FileNotFoundError(
                    f"traintel.init: resume='must' but run {identity.id!r} has no record in "
                    f"{identity.dir}; check run_id and dir, or pass resume=True to start it"
                )
            return Continuation(lock=lock)
        if resume in (False, "never"):
            raise FileExistsError(
                f"traintel.init: run {identity.id!r} already has a record in {identity.dir} and "
                f"resume={resume!r}; pass another run_id for a new run, or resume=True to "
                "continue it"
            )
        before = RecordFold()
        cumulative = Cumulative()
        records = Records(identity.dir)
        for line in records:
            before.add(line)
            cumulative.add(line)
        continuation = Continuation(
            len(before.segments) + 1, resume is not None, before, lock, cumulative=cumulative
        )
        if resume is None:
            log.warning(
                "traintel.init: run %s already has a record in %s (%d segment(s), last "
                "step %s): continuing it as segment %d. Pass resume=True to continue a "
                "run on purpose, or another run_id for a new one",
                identity.id,
                identity.dir,
                len(before.segments),
                _last_step(before),
                continuation.segment,
            )
        return continuation
    except BaseException:
        lock.release()
        raise


def _last_step(fold: RecordFold) -> int | None:
    return next(
        (s["last_step"] for s in reversed(fold.segments) if s["last_step"] is not None), None
    )
