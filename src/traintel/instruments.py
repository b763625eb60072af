"""Custom instruments for user code: counters, gauges, histograms and a timer, and the registry
that makes and bounds them (``run.counter("skipped")`` returns the same counter every time).

Counters and gauges live in the run state (read at export time); histogram and timer observations
are queued for the record writer, which feeds the exported histograms and the p50/p95/p99 of the
run summary.
"""

from __future__ import annotations

import time
from contextlib import ContextDecorator
from typing import Literal, TypeVar

from .record.format import ObservationKind
from .record.queue import Observe, RecordQueue
from .state import RunState
from .validate import NameBudget, finite_number


class Counter:
    """A monotonically increasing count, e.g. skipped batches."""

    def __init__(self, counters: dict[str, float], name: str) -> None:
        self.name = name
        self._counters = counters
        counters.setdefault(name, 0.0)

    def inc(self, amount: float = 1.0) -> None:
        amount = finite_number("counter", self.name, amount)
        if amount < 0:
            raise ValueError(f"counter {self.name!r}: counters only go up; got {amount}. "
                             "Use run.gauge() for values that go down.")
        self._counters[self.name] += amount

    @property
    def value(self) -> float:
        return self._counters[self.name]


class Gauge:
    """A value that goes up and down, e.g. queue length."""

    def __init__(self, gauges: dict[str, float], name: str) -> None:
        self.name = name
        self._gauges = gauges

    def set(self, value: float) -> None:
        self._gauges[self.name] = finite_number("gauge", self.name, value)


class Histogram:
    """A distribution, e.g. sequence lengths; summarised with p50/p95/p99."""

    kind: ObservationKind = "histogram"

    def __init__(self, queue: RecordQueue, name: str) -> None:
        self.name = name
        self._queue = queue

    def observe(self, value: float) -> None:
        self._queue.append(Observe(self.kind, self.name,
                                   finite_number(self.kind, self.name, value)))


class Timer(Histogram, ContextDecorator):
    """``with run.timer("forward"):`` or ``@run.timer("forward")``: seconds per call."""

    kind: ObservationKind = "timer"

    def __init__(self, queue: RecordQueue, name: str) -> None:
        super().__init__(queue, name)
        self._starts: list[float] = []  # a stack: the same timer may be nested or reused

    def __enter__(self) -> Timer:
        self._starts.append(time.perf_counter())
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        elapsed = time.perf_counter() - self._starts.pop()
        self._queue.append(Observe("timer", self.name, elapsed))
        return False


_I = TypeVar("_I", Counter, Gauge, Histogram, Timer)


class Instruments:
    """A run's custom instruments by kind and name, each name admitted by the run's name budget
    (each is a series on every export path)."""

    def __init__(self, state: RunState, queue: RecordQueue, budget: NameBudget) -> None:
        self._state = state
        self._queue = queue
        self._budget = budget
        self._made: dict[str, Counter | Gauge | Histogram | Timer] = {}

    def counter(self, name: str) -> Counter:
        return self._get(Counter, name) or self._add(Counter(self._state.counters, name))

    def gauge(self, name: str) -> Gauge:
        return self._get(Gauge, name) or self._add(Gauge(self._state.gauges, name))

    def histogram(self, name: str) -> Histogram:
        return self._get(Histogram, name) or self._add(Histogram(self._queue, name))

    def timer(self, name: str) -> Timer:
        return self._get(Timer, name) or self._add(Timer(self._queue, name))

    def _get(self, kind: type[_I], name: str) -> _I | None:
        found = self._made.get(f"{kind.__name__}:{name}")
        if found is None:
            self._budget.admit(f"run.{kind.__name__.lower()}", f"{kind.__name__.lower()}s",
                               name, "Reuse instruments instead of creating one per item")
            return None
        assert type(found) is kind  # keyed by kind
        return found

    def _add(self, instrument: _I) -> _I:
        self._made[f"{type(instrument).__name__}:{instrument.name}"] = instrument
        return instrument
