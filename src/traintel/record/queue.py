"""What the training thread hands to the record writer: typed queue items.

The training thread appends items to a ``deque`` (an atomic, lock-free append in CPython); the
writer thread pops them. The hot path builds a :class:`Step` with ``tuple.__new__(Step, (...))``:
a NamedTuple's generated ``__new__`` is a Python call (190 ns per step on the project's machine
against 60 ns for a plain tuple and 120 ns this way), and a step is a few microseconds.
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


class Call(NamedTuple):
    """Work taken off the training thread (a step span costs 0.1-0.3 ms to create)."""

    fn: Callable[..., None]
    args: tuple[Any, ...]


Item = Step | Line | Observe | Call
#: the queue between the training thread and the record writer
RecordQueue = deque[Item]
