"""Custom instruments for user code: counters, gauges, histograms and a timer, and the registry
that makes and bounds them (``run.counter("skipped")`` returns the same counter every time).

Counters and gauges live in the run state (read at export time); histogram and timer observations
are queued for the record writer, which feeds the exported histograms and the p50/p95/p99 of the
run summary. A histogram takes its own bucket bounds (``run.histogram("seq_len",
buckets=[64, 128, 256, 512])``); without them it gets the OpenTelemetry SDK's defaults, a timer
the duration buckets.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import ContextDecorator
from typing import Literal, Protocol, TypeVar, cast

from traintel.core.forks import reset_in_child
from traintel.core.misuse import warn_once
from traintel.core.refusals import Refusals, raise_it
from traintel.core.state import RunState
from traintel.core.validate import NameBudget, finite_number
from traintel.record.format import ObservationKind
from traintel.record.queue import Observe, RecordQueue

#: what an instrument does with a value it cannot take (``Refusals.refuse``; default: raise)
Refuse = Callable[..., None]


class Counter:
    """A monotonically increasing count, e.g. skipped batches."""

    def __init__(self, counters: dict[str, float], name: str, refuse: Refuse = raise_it) -> None:
        self.name = name
        self._counters = counters
        self._refuse = refuse
        counters.setdefault(name, 0.0)

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (1 by default; counters only go up)."""
        try:
            amount = finite_number("counter", self.name, amount)
            if amount < 0:
                raise ValueError(
                    f"counter {self.name!r}: counters only go up; got {amount}. "
                    "Use run.gauge() for values that go down."
                )
        except (TypeError, ValueError) as error:
            self._refuse(f"counter {self.name}", "amount", error, then="the counter is unchanged")
            return
        self._counters[self.name] += amount

    @property
    def value(self) -> float:
        """The total so far."""
        return self._counters[self.name]


class Gauge:
    """A value that goes up and down, e.g. queue length."""

    def __init__(self, gauges: dict[str, float], name: str, refuse: Refuse = raise_it) -> None:
        self.name = name
        self._gauges = gauges
        self._refuse = refuse

    def set(self, value: float) -> None:
        """Set the gauge to ``value``; the last value set is exported and summarised."""
        try:
            self._gauges[self.name] = finite_number("gauge", self.name, value)
        except (TypeError, ValueError) as error:
            self._refuse(f"gauge {self.name}", "value", error, then="the gauge is unchanged")


#: bucket bounds a histogram may have at most (each bucket is a series on every export path)
MAX_BUCKETS = 64


def check_buckets(name: str, buckets: object) -> tuple[float, ...]:
    """Bucket upper bounds as given to ``run.histogram``: finite, increasing, 1-64 of them."""
    if isinstance(buckets, (str, bytes)) or not isinstance(buckets, Iterable):
        raise TypeError(
            f"histogram {name!r}: buckets must be a list of numbers, got "
            f"{type(buckets).__name__} {buckets!r}"
        )
    bounds = tuple(finite_number("histogram bucket", name, bound) for bound in buckets)
    if not 1 <= len(bounds) <= MAX_BUCKETS:
        raise ValueError(
            f"histogram {name!r}: give 1 to {MAX_BUCKETS} bucket bounds, got {len(bounds)}"
        )
    if any(lower >= upper for lower, upper in zip(bounds, bounds[1:])):
        raise ValueError(f"histogram {name!r}: bucket bounds must increase, got {list(bounds)}")
    return bounds


class Histogram:
    """A distribution, e.g. sequence lengths; summarised with p50/p95/p99 and exported in
    ``buckets`` (None: the defaults)."""

    kind: ObservationKind = "histogram"

    def __init__(
        self,
        queue: RecordQueue,
        name: str,
        buckets: tuple[float, ...] | None = None,
        refuse: Refuse = raise_it,
    ) -> None:
        self.name = name
        self.buckets = buckets
        self._queue = queue
        self._refuse = refuse

    def observe(self, value: float) -> None:
        """Record one value: counted into the histogram's buckets and summarised (p50/p95/p99)
        off the training thread."""
        try:
            number = finite_number(self.kind, self.name, value)
        except (TypeError, ValueError) as error:
            self._refuse(
                f"{self.kind} {self.name}", "value", error, then="the value is not observed"
            )
            return
        self._queue.append(Observe(self.kind, self.name, number))


class HistogramMaker(Protocol):
    """``run.histogram``: the histogram ``name``, with its own bucket bounds if given."""

    def __call__(self, name: str, buckets: Iterable[float] | None = None) -> Histogram: ...


class Timer(Histogram, ContextDecorator):
    """``with run.timer("forward"):`` or ``@run.timer("forward")``: seconds per call."""

    kind: ObservationKind = "timer"

    def __init__(self, queue: RecordQueue, name: str, refuse: Refuse = raise_it) -> None:
        super().__init__(queue, name, refuse=refuse)
        self._starts: list[float] = []  # a stack: the same timer may be nested or reused

    def __enter__(self) -> Timer:
        self._starts.append(time.perf_counter())
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        if not self._starts:
            warn_once(
                f"timer.exit.{self.name}",
                f"timer {self.name!r} was exited without being "
                "entered; nothing observed (use `with run.timer(name):`)",
            )
            return False
        elapsed = time.perf_counter() - self._starts.pop()
        self._queue.append(Observe("timer", self.name, elapsed))
        return False


_I = TypeVar("_I", Counter, Gauge, Histogram, Timer)


class Instruments:
    """A run's custom instruments by kind and name, each name admitted by the run's name budget
    (each is a series on every export path)."""

    def __init__(
        self,
        state: RunState,
        queue: RecordQueue,
        budget: NameBudget,
        define_buckets: Callable[[str, str, tuple[float, ...]], None] = lambda *_: None,
        refusals: Refusals | None = None,
    ) -> None:
        self._state = state
        #: names and values refused: warned, counted, the run goes on (default: raised)
        self._refuse: Refuse = refusals.refuse if refusals is not None else raise_it
        self._queue = queue
        self._budget = budget
        #: tells the exported histograms a histogram's own bounds (before its first value)
        self._define_buckets = define_buckets
        self._made: dict[str, Counter | Gauge | Histogram | Timer] = {}
        reset_in_child(self._after_fork_in_child)

    def counter(self, name: str) -> Counter:
        """The counter ``name`` (the same object every time: made on first use)."""
        found = self._get(Counter, name)
        if found is not None:
            return found
        if not self._admit(Counter, name):
            return Counter({}, name, self._refuse)
        return self._add(Counter(self._state.counters, name, self._refuse))

    def gauge(self, name: str) -> Gauge:
        """The gauge ``name`` (the same object every time: made on first use)."""
        found = self._get(Gauge, name)
        if found is not None:
            return found
        if not self._admit(Gauge, name):
            return Gauge({}, name, self._refuse)
        return self._add(Gauge(self._state.gauges, name, self._refuse))

    def histogram(self, name: str, buckets: Iterable[float] | None = None) -> Histogram:
        """The histogram ``name``; ``buckets`` (upper bounds) are fixed by its first call."""
        try:
            bounds = None if buckets is None else check_buckets(name, buckets)
        except (TypeError, ValueError) as error:
            self._refuse("run.histogram", name, error, then="its buckets are the defaults")
            bounds = None
        found = self._get(Histogram, name)
        if found is not None:
            if bounds is not None and bounds != found.buckets:
                self._refuse(
                    "run.histogram",
                    name,
                    ValueError(
                        f"histogram {name!r} already has buckets "
                        f"{list(found.buckets or ()) or 'by default'}; a histogram keeps the "
                        "buckets it was made with"
                    ),
                    then="it keeps them",
                )
            return found
        if not self._admit(Histogram, name):
            return Histogram(cast(RecordQueue, _Nowhere()), name, refuse=self._refuse)
        if bounds is not None:
            self._define_buckets("histogram", name, bounds)
        return self._add(Histogram(self._queue, name, bounds, self._refuse))

    def timer(self, name: str) -> Timer:
        """The timer ``name``: ``with run.timer("forward"):`` times the block."""
        found = self._get(Timer, name)
        if found is not None:
            return found
        if not self._admit(Timer, name):
            return Timer(cast(RecordQueue, _Nowhere()), name, self._refuse)
        return self._add(Timer(self._queue, name, self._refuse))

    def _after_fork_in_child(self) -> None:
        """In a forked child: what every instrument queues goes nowhere (counters and gauges
        only set numbers in the child's copy of the state)."""
        self._queue = cast(RecordQueue, _Nowhere())
        for instrument in self._made.values():
            if isinstance(instrument, Histogram):
                instrument._queue = self._queue

    def _get(self, kind: type[_I], name: str) -> _I | None:
        found = self._made.get(f"{kind.__name__}:{name}")
        if found is None:
            return None
        assert type(found) is kind  # keyed by kind
        return found

    def _admit(self, kind: type, name: str) -> bool:
        """Whether a new instrument's name is admitted by the budget; a refused one is an
        instrument that records nowhere (the caller's code runs as it would)."""
        what = f"run.{kind.__name__.lower()}"
        try:
            self._budget.admit(
                what,
                f"{kind.__name__.lower()}s",
                name,
                "Reuse instruments instead of creating one per item",
            )
        except (TypeError, ValueError) as error:
            self._refuse(what, name, error, then="it records nothing")
            return False
        return True

    def _add(self, instrument: _I) -> _I:
        self._made[f"{type(instrument).__name__}:{instrument.name}"] = instrument
        return instrument


class _Nowhere:
    """The queue of an instrument whose name was refused: what it observes goes nowhere."""

    def append(self, item: object) -> None:
        pass
