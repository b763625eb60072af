"""The record writer drains in slices: each slice is written before the next is folded, in
order, and every line arrives (``traintel.record.writer``, ``SLICE_S``).

Slices are bounded by time; no test asserts on a timing. ``SLICE_S = 0`` makes every slice one
item, so what a slice is can be checked exactly: a ``Call`` queued after N lines (as step spans
are) finds those N lines already in the file when the writer runs it. Drained in one go, as
before slices, it would find none.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from traintel.core.state import RunState
from traintel.record import writer
from traintel.record.queue import Call, Line, Observe, Step
from traintel.record.writer import RecordWriter


def _writer(directory: Path) -> RecordWriter:
    # a flush interval far beyond the test: the thread drains when woken, not on a timer
    return RecordWriter(directory, RunState(), {"run": "r", "rank": 0}, flush_interval=600.0)


def _lines_on_disk(directory: Path) -> int:
    path = directory / "events.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _backlog(w: RecordWriter, steps: int, every: int, seen: list[int]) -> None:
    """``steps`` steps, with a line, an observation and a look at the file every ``every``."""
    for i in range(1, steps + 1):
        w.queue.append(tuple.__new__(Step, (1000.0 + i, i, 0, 0.01, None, {"loss": float(i)})))
        if i % every == 0:
            w.queue.append(Line({"ts": 1000.0 + i, "type": "event", "event": f"mark {i}"}))
            w.queue.append(Observe("timer", "probe", 0.5))
            w.queue.append(Call(lambda d=w.directory: seen.append(_lines_on_disk(d)), ()))


def test_a_backlog_is_written_slice_by_slice_in_order(tmp_path, monkeypatch, recorded):
    monkeypatch.setattr(writer, "SLICE_S", 0.0)  # every slice takes one item
    w = _writer(tmp_path)
    seen: list[int] = []
    _backlog(w, 300, 100, seen)
    w.flush()  # on the caller's thread: slices, without stepping aside
    assert not w.queue
    # each look found every line queued before it written (steps and marks so far)
    assert seen == [101, 202, 303]
    w.close()
    lines = recorded(tmp_path)
    assert [line["step"] for line in lines if line["type"] == "step"] == list(range(1, 301))
    marks = [(i, line["event"]) for i, line in enumerate(lines) if line["type"] == "event"]
    assert marks == [(101 * k - 1, f"mark {100 * k}") for k in (1, 2, 3)]
    assert w.observations[("timer", "probe")].count == 3
    assert w.figures.steps == 300 and w.state.dropped == 0
    # the rate window still sees the steps (a point per 0.1 s of steps, and one at the end)
    assert w.state.rates == {"steps_per_second": pytest.approx(1.0)}


def test_the_writer_thread_steps_aside_between_slices_and_loses_nothing(
    tmp_path, monkeypatch, recorded
):
    """On its own thread the writer sleeps YIELD_S after each slice but the last (a thread
    waiting for the interpreter takes it then) once fewer than DRAIN_BATCH items wait (a larger
    backlog is a loop outpacing it: it takes turns by the switch interval there), and every line
    still arrives in order."""
    monkeypatch.setattr(writer, "SLICE_S", 0.0)
    w = _writer(tmp_path)
    seen: list[int] = []
    _backlog(w, 5000, 1000, seen)
    pauses: list[float] = []
    sleep = time.sleep

    def noted(seconds: float) -> None:
        if threading.current_thread().name == "traintel-record":
            pauses.append(seconds)
        sleep(seconds)

    monkeypatch.setattr(time, "sleep", noted)  # the writer's pauses, counted
    w.start()
    w.flush_soon()
    deadline = time.monotonic() + 60
    while w.queue and time.monotonic() < deadline:
        sleep(0.01)
    w.close()
    assert not w.queue
    assert seen == [1001, 2002, 3003, 4004, 5005]
    # 5,015 items, a slice each: a pause after each slice that left 1 to DRAIN_BATCH - 1 waiting
    assert len(w.queue) == 0 and 5015 > writer.DRAIN_BATCH
    assert pauses == [writer.YIELD_S] * (writer.DRAIN_BATCH - 1)
    steps = [line["step"] for line in recorded(tmp_path) if line["type"] == "step"]
    assert steps == list(range(1, 5001))
