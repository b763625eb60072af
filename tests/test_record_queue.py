"""The record queue's bound (traintel.record.queue): a loop that logs faster than the writer
writes waits for it instead of holding the backlog in memory, and loses nothing; a writer that
takes nothing lets the queue grow to its limit, past which the newest steps are dropped,
counted, warned about once and marked by a record_gap line where they were."""

from __future__ import annotations

import time

from traintel.record import writer as writer_module
from traintel.record.queue import CHECK_EVERY, QUEUE_HIGH_WATER

EIGHT = ("loss", "lr", "grad_norm", "samples", "tokens", "accuracy", "aux_loss", "clip_frac")


def step_values(i: int) -> dict[str, float | int]:
    return dict(zip(EIGHT, (1.0 / (i + 1), 3e-4, 1.0 + i % 7, 32, 16384, i % 100 / 100, 0.1, 0.5)))


def test_a_loop_outpacing_the_writer_waits_for_it_and_every_line_arrives_in_order(
    quiet_run, recorded
):
    """The writer made slower than the loop (a listener that sleeps ~50 µs a step on its
    thread): without the bound the queue would hold most of the loop's 40,000 steps."""
    steps = 40_000
    with quiet_run(step_span_every=100) as run:
        run._writer.listeners.append(lambda *heard: time.sleep(0.00002))
        queue = run._writer.queue
        deepest = 0
        for i in range(steps):
            run.log(**step_values(i))
            deepest = max(deepest, len(queue))
    # past the mark a check waits until the writer took what came since the last one (about
    # QUEUE_HIGH_WATER + CHECK_EVERY); a wait cut short at MAX_WAIT_S on a loaded machine lets
    # some checks' worth through. Unbounded, the queue held 40,377 of the 40,000 steps
    assert QUEUE_HIGH_WATER < deepest < steps // 2, deepest
    lines = recorded(run.dir)
    assert [s["step"] for s in lines.of("step")] == list(range(1, steps + 1))
    assert not lines.of("event", "record_gap")
    assert run.state.dropped == 0 and run.summary["record"]["dropped"] == 0


def test_a_stuck_writer_drops_the_newest_steps_counted_warned_once_and_marked(
    quiet_run, recorded, monkeypatch
):
    """The writer held where it takes its lock, as a write into a hung filesystem holds it:
    the loop waits once (MAX_WAIT_S), then no more until the writer moves; past the limit the
    newest steps go."""
    limit = 3 * QUEUE_HIGH_WATER
    monkeypatch.setattr(writer_module, "QUEUE_LIMIT", limit)
    steps = limit + 5 * CHECK_EVERY + 100
    sleeps: list[float] = []

    class Clock:  # the writer module's time, its sleeps counted
        def __getattr__(self, name: str) -> object:
            return getattr(time, name)

        def sleep(self, seconds: float) -> None:
            sleeps.append(seconds)
            time.sleep(seconds)

    with quiet_run() as run:
        writer = run._writer
        writer.flush()  # run_start and config written before the writer is held
        with writer._lock:
            with monkeypatch.context() as patched:
                patched.setattr(writer_module, "time", Clock())
                for i in range(steps):
                    run.log(**step_values(i))
            assert len(writer.queue) <= limit + CHECK_EVERY
    # one wait's sleeps (MAX_WAIT_S of 1 ms sleeps), not one wait per check over the mark
    # (there were about 70 such checks)
    assert 0 < len(sleeps) <= writer_module.MAX_WAIT_S / 0.001 + 1
    lines = recorded(run.dir)
    # said once, in the record as on the console (traintel's logger goes to both)
    warned = [line for line in lines.of("log") if "fell" in line["message"]]
    assert len(warned) == 1 and "record.dropped" in warned[0]["message"]
    assert warned[0]["level"] == "warning" and warned[0]["logger"] == "traintel.record"
    numbers = [s["step"] for s in lines.of("step")]
    gaps = lines.of("event", "record_gap")
    assert len(gaps) == 1
    lost = gaps[0]["fields"]["lost_lines"]
    assert "queue was full" in gaps[0]["fields"]["reason"]
    assert lost > 0 and len(numbers) + lost == steps
    assert numbers == sorted(numbers) and numbers[0] == 1 and numbers[-1] == steps
    # the gap line stands where the steps went: after the last step before them
    at = lines.index(gaps[0])
    before = [line["step"] for line in lines[:at] if line["type"] == "step"]
    after = [line["step"] for line in lines[at:] if line["type"] == "step"]
    assert after[0] - before[-1] - 1 == lost
    assert run.state.dropped == lost and run.summary["record"]["dropped"] == lost
