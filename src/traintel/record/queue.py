"""What the training thread hands to the record writer: typed queue items.

The training thread appends items to a ``deque`` (an atomic, lock-free append in CPython); the
writer thread pops them. The hot path builds a :class:`Step` with ``tuple.__new__(Step, (...))``:
a NamedTuple's generated ``__new__`` is a Python call (190 ns per step on the project's machine
against 60 ns for a plain tuple and 120 ns this way), and a step is a few microseconds.

**The queue is bounded, by pace first.** A loop that logs faster than the writer turns items into
lines (a tight loop at ~100,000 steps/s with 8 values: the writer's fold and encoding cost about
2-3 times the step's own, on the same interpreter) held the whole backlog in memory: 80,000 steps
and +54 MB after 100,000 steps, kept by the allocator after the writer caught up. Now every
``CHECK_EVERY`` steps the step path looks at the queue; past ``QUEUE_HIGH_WATER`` items it wakes
the writer and waits until the writer has brought it back under the mark (backpressure, as a
bounded queue's ``put`` does), at most ``MAX_WAIT_S`` at a time. Such a loop is slowed to the
writer's pace, a few milliseconds at a time, and nothing is lost; a loop with real work per step
never reaches the mark. A writer that takes nothing for a whole wait is stuck (a hung
filesystem): steps wait no more until it moves again, and past ``QUEUE_LIMIT`` items the newest
are dropped, never silently: one warning, ``summary.json``'s ``record.dropped`` and
``traintel_record_dropped_total`` count them, and a :class:`Dropped` item in their place
becomes a ``record_gap`` line saying how many went, where they went.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from traintel.record.format import Metrics, ObservationKind


class Step(NamedTuple):
    """One training step: written as a ``step`` line and folded into the run's figures."""

    ts: float
    step: int
    epoch: int
    step_s: float | None
    data_wait_s: float | None
    metrics: Metrics
    #: keys logged with ``commit=False``: the hot path builds the six fields above; a step with
    #: such values has this seventh (the writer checks ``len``)
    uncommitted: tuple[str, ...] = ()


class Line(NamedTuple):
    """A ready-made record line (events, evals, errors, logs, epochs, ...), as the event pipeline
    finished it."""

    line: Mapping[str, Any]


class Observe(NamedTuple):
    """One observation of a histogram, timer or operation: folded and exported, not written."""

    kind: ObservationKind
    name: str
    value: float


class Dropped(NamedTuple):
    """Where queued items were dropped (the queue past ``QUEUE_LIMIT``): written as a
    ``record_gap`` line in their place."""

    lines: int
    #: observations and span calls dropped with them (no lines of their own)
    others: int
    reason: str


class Call(NamedTuple):
    """Work taken off the training thread (a step span costs 0.1-0.3 ms to create)."""

    fn: Callable[..., None]
    args: tuple[Any, ...]


Item = Step | Line | Observe | Call | Dropped
#: the queue between the training thread and the record writer
RecordQueue = deque[Item]

#: queued items above which a step waits for the writer (about 5 MB at 8 values a step)
QUEUE_HIGH_WATER = 8192
#: steps between two looks at the queue's length (the look costs nothing in between: it rides
#: on the step path's one comparison against its next scheduled check)
CHECK_EVERY = 256
#: the longest a step waits for the writer at once
MAX_WAIT_S = 0.05
#: queued items beyond which the newest are dropped: only a writer that is stuck lets the queue
#: grow past the high-water mark (about 60 MB at 8 values a step)
QUEUE_LIMIT = 100_000
#: ready-made lines (events, errors, warnings) kept where the queue's newest steps are dropped
KEPT_LINES = 64
