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
from dataclasses import dataclass, field, replace

from traintel.run.identity import RunIdentity
from traintel.record.format import EVENTS_FILE
from traintel.record.lock import RecordLock
from traintel.record.reader import Records, rotation_set
from traintel.record.summary import RecordFold, Segment
from traintel.run.settings import ResumeMode
from traintel.core.state import LOSS_KEYS, NonFinite, RunState
from traintel.record.summary import RecordFold, Segment, ended
from traintel.core.state import NonFinite, RunState

log = logging.getLogger("traintel.run")



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
        return replace(identity, tags=tuple(dict.fromkeys((*before.tags, *identity.tags))),
                       group=identity.group or before.group, notes=identity.notes or before.notes)

    def release(self) -> None:
        """Give the record back (the run ended, or failed to start)."""
        if self.lock is not None:
            self.lock.release()

    def restore(self, state: RunState) -> None:
        """The run state as the record left it: step axis, counts, bests, errors, events."""
        before = self.before
        if before is None:
            return
        figures = before.figures
        state.step = next((s["last_step"] for s in reversed(before.segments)
                           if s["last_step"] is not None), 0)
        state.steps_taken, state.samples, state.tokens = (figures.steps, figures.samples,
                                                          figures.tokens)
        self.steps_before = figures.steps
        state.epoch = before.epoch or 0
        state.epochs_ended = before.epochs
        for name, figures_of in before.evals.items():
            state.goals[name] = figures_of["mode"]
            if figures_of["best"] is not None and figures_of["mode"] is not None:
                state.eval_best[name] = figures_of["best"]
                if figures_of["best_step"] is not None:
                    state.eval_best_step[name] = figures_of["best_step"]
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
                    f"{identity.dir}; check run_id and dir, or pass resume=True to start it")
            return Continuation(lock=lock)
        if resume in (False, "never"):
            raise FileExistsError(
                f"traintel.init: run {identity.id!r} already has a record in {identity.dir} and "
                f"resume={resume!r}; pass another run_id for a new run, or resume=True to "
                "continue it")
        before = RecordFold()
        records = Records(identity.dir)
        for line in records:
            before.add(line)
        continuation = Continuation(len(before.segments) + 1, resume is not None, before, lock)
        if resume is None:
            log.warning("traintel.init: run %s already has a record in %s (%d segment(s), last "
                        "step %s): continuing it as segment %d. Pass resume=True to continue a "
                        "run on purpose, or another run_id for a new one", identity.id,
                        identity.dir, len(before.segments), _last_step(before),
                        continuation.segment)
        return continuation
    except BaseException:
        lock.release()
        raise


def _last_step(fold: RecordFold) -> int | None:
    return next((s["last_step"] for s in reversed(fold.segments) if s["last_step"] is not None),
                None)
