"""Custom instruments (traintel.run.instruments) on their own: what they store or queue, what they
refuse, and the registry that returns the same instrument for a name, each name admitted by the
run's name budget."""

from __future__ import annotations

from collections import deque

import pytest

from traintel.core.state import RunState
from traintel.core.validate import NameBudget
from traintel.record.queue import Observe
from traintel.run.instruments import Counter, Instruments, Timer


@pytest.fixture
def parts():
    state, queue = RunState(), deque()
    return state, queue, Instruments(state, queue, NameBudget(3))


def test_counters_and_gauges_live_in_the_state(parts) -> None:
    state, _, instruments = parts
    counter = instruments.counter("skipped")
    counter.inc()
    counter.inc(2)
    instruments.gauge("queue").set(5)
    assert (state.counters, state.gauges, counter.value) == ({"skipped": 3.0}, {"queue": 5.0}, 3.0)
    assert instruments.counter("skipped") is counter


def test_histograms_and_timers_queue_observations_for_the_writer(parts) -> None:
    _, queue, instruments = parts
    instruments.histogram("seq_len").observe(12)
    with instruments.timer("io"):
        pass

    @instruments.timer("io")
    def work() -> int:
        return 1

    assert work() == 1
    observations = list(queue)
    assert observations[0] == Observe("histogram", "seq_len", 12.0)
    assert [(o.kind, o.name) for o in observations[1:]] == [("timer", "io"), ("timer", "io")]
    assert all(type(o) is Observe and o.value >= 0 for o in observations)


def test_a_timer_can_be_nested_in_itself() -> None:
    queue: deque = deque()
    timer = Timer(queue, "t")
    with timer:
        with timer:
            pass
    assert len(queue) == 2 and queue[1].value >= queue[0].value


def test_bad_values_and_names_are_refused(parts) -> None:
    _, _, instruments = parts
    with pytest.raises(ValueError, match="counters only go up"):
        instruments.counter("c").inc(-1)
    with pytest.raises(TypeError, match="'g' must be a number .*, got str"):
        instruments.gauge("g").set("7")  # type: ignore[arg-type]  # what the test is about
    with pytest.raises(ValueError, match="must be finite"):
        instruments.histogram("h").observe(float("inf"))
    with pytest.raises(ValueError, match="name 'a b' is refused: ' ' is not allowed"):
        instruments.timer("a b")


def test_the_registry_is_bounded_per_run(parts) -> None:
    _, _, instruments = parts
    instruments.counter("a")
    instruments.counter("b")
    instruments.gauge("a")  # another kind of the same name is another instrument
    with pytest.raises(ValueError, match="'c' would be name number 4 of this run; the limit is 3"):
        instruments.histogram("c")
    assert isinstance(instruments.counter("a"), Counter)  # existing ones are still returned
