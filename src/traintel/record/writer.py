"""The local run record: ``events.jsonl`` written by one background thread.

The training thread appends typed items (``traintel.record.queue``) to a deque; this thread wakes
every ``flush_interval`` seconds, turns them into JSON lines in slices of at most ``SLICE_S`` of
work, writes each slice with one system call and steps aside between slices (``YIELD_S``), so
that the training thread never waits on it for a switch interval; rotates by size, and folds
each step into the figures that become ``summary.json`` (``StepFigures``, the same fold
``traintel logs summary`` runs on what it reads). At the end of a run the queue is folded first
(:meth:`RecordWriter.fold`), so that summary.json can be written before the last lines are
(:meth:`RecordWriter.close`).

Nothing is lost without a word. A value no encoder takes costs its line, which is replaced by a
``record_line_dropped`` line saying what it was. A disk that is full or unwritable costs one
warning; the lines wait in memory (up to ``MAX_PENDING_BYTES``) and are written when the disk has
room again, tried every flush; what did not fit is counted and said in a ``record_gap`` line. A
run directory deleted under a running writer is noticed at the next flush: the directory is made
again, starting with the record's first lines, and a ``record_gap`` line says how many lines went
with it. ``close`` retries for up to ``shutdown_s`` before it counts what is left as dropped.
A forked child (a data-loader worker) inherits the writer but not its thread: it resets itself
there and never writes the parent's record.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Literal

from traintel.core.forks import reset_in_child
from traintel.core.state import RateWindow, RunState
from traintel.core.stats import RunningStats
from traintel.record import safe, tensors
from traintel.record.files import encode
from traintel.record.format import (
    EVENTS_FILE,
    MAX_LINE_BYTES,
    EventLine,
    ObservationKind,
    StepLine,
    Whose,
)
from traintel.record.queue import (
    KEPT_LINES,
    MAX_WAIT_S,
    QUEUE_HIGH_WATER,
    QUEUE_LIMIT,
    Call,
    Dropped,
    Line,
    Observe,
    RecordQueue,
    Step,
)
from traintel.record.summary import StepFigures

log = logging.getLogger("traintel.record")

#: lines serialized and written per system call at most
DRAIN_BATCH = 4096
#: the most work (seconds) one slice of a drain does before it is written and the writer steps
#: aside. Folding an item is Python code that holds the interpreter: a span every step made a
#: drain of 100 steps hold it for 6-7 ms (0.03-0.07 ms per step span), longer than the switch
#: interval (5 ms), so a training thread waking from its sleep then waited 5 ms for a forced
#: switch: late steps in the stall benchmark even with export off
SLICE_S = 0.001
#: how long the writer thread sleeps between slices: a thread waiting for the interpreter takes it
#: then. ``sleep(0)`` releases it too, but the writer takes it back before the woken thread runs
#: (and the waiter's 5 ms clock starts again); a tenth of a millisecond leaves time to wake.
#: Only while fewer than DRAIN_BATCH items wait: a larger backlog is a loop outpacing the writer
#: (a tight loop holds the interpreter all the time), where stepping aside would leave the writer
#: a slice per switch interval and the backlog would grow; there it takes turns by the switch
#: interval, as before
YIELD_S = 0.0001
#: seconds of steps between the points of the rate window (``state.rates``) within a drain: a
#: point per slice would be up to a thousand a second in a tight loop, tens of thousands in the
#: 30 s window; a drain that empties the queue always adds its point
RATE_EVERY_S = 0.1
#: lines kept in memory while the record cannot be written (a full disk), oldest dropped first
MAX_PENDING_BYTES = 64 * 1024 * 1024
#: the record's first lines, written again at the top of a run directory made anew
HEAD_TYPES = ("run_start", "config")
_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file size limit was hit",
    errno.EACCES: "permission denied",
    errno.EROFS: "read-only filesystem",
    errno.ENOTDIR: "a path part is not a directory",
}

#: what a listener hears about: a step's duration, or an instrument's observation
Heard = Literal["step"] | ObservationKind
#: a listener gets ("step", None, step_seconds) for each timed step and (kind, name, value) for
#: each histogram, timer or operation observation, on the writer thread
Listener = Callable[[Heard, "str | None", float], None]


class RecordWriter:
    """Drains the queue into ``events.jsonl``; ``identity`` (run id, rank) goes on step lines,
    which are built here (the event pipeline puts it on every other line)."""

    def __init__(
        self,
        directory: Path,
        state: RunState,
        identity: Whose,
        *,
        flush_interval: float = 1.0,
        max_bytes: int = 256 * 1024 * 1024,
        shutdown_s: float = 2.0,
        rates: RateWindow | None = None,
        figures: StepFigures | None = None,
    ) -> None:
        self.directory = directory
        self.path = directory / EVENTS_FILE
        self.state = state
        self.identity: Whose = {"run": identity["run"], "rank": identity["rank"]}
        self.flush_interval = flush_interval
        self.max_bytes = max_bytes
        self.shutdown_s = shutdown_s
        self.queue: RecordQueue = deque()
        #: what summary.json says of the steps, folded as they are written (a resumed run's
        #: go on from what its record held: this is the record's next segment)
        self.figures = figures or StepFigures()
        if figures is not None:
            figures.new_segment()
        #: histogram, timer and operation observations by (kind, name)
        self.observations: dict[tuple[ObservationKind, str], RunningStats] = {}
        #: lines serialized so far (written, waiting, or counted as dropped)
        self.lines = 0
        self.listeners: list[Listener] = []
        self.rates = rates or RateWindow()
        self._rated_ts = -float("inf")  # the step time of the rate window's latest point
        self._file: IO[bytes] | None = None
        self._size = 0
        #: complete lines in the live file, and in the directory's rotated files
        self._in_file = 0
        self._in_rotated = 0
        #: the record's first lines (run_start, config), written again into a directory made anew
        self._head: list[bytes] = []
        #: lines not yet written because the record could not be (a full disk), oldest first
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0
        #: lines folded and serialized at the end of a run, written by close()
        self._unwritten: list[bytes] = []
        #: while writing fails: since when, why, and how many lines were dropped meanwhile
        self._outage: tuple[float, str] | None = None
        self._gap_lost = 0
        self._gap_reasons: list[str] = []
        self._warned: set[str] = set()
        self._forked = False
        #: the queue's first item when a wait for room (make_room) saw the writer take nothing
        self._stuck_on: object = None
        self._wake = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()  # one drain at a time (thread or final flush)
        self._thread = threading.Thread(target=self._loop, name="traintel-record", daemon=True)
        reset_in_child(self._after_fork_in_child)

    # -- producer side (any thread) -------------------------------------------------------
    def line(self, line: Mapping[str, object]) -> None:
        """Queue a ready-made record line (rare: config, evals, events, errors, logs)."""
        self.queue.append(Line(line))

    def note(self, line: Mapping[str, object]) -> None:
        """A line from another thread that may come after the record was closed: the outcome
        of a live export (the last ones happen as the run ends, after ``run_end``). Queued while
        the writer runs; after it stopped, appended to the file at once. Whose it is (run,
        rank) is added here."""
        line = {**line, **self.identity}
        if not self._stopping:
            self.queue.append(Line(line))
            return
        if self._forked:
            return
        with self._lock:
            self._write([encode(line)])
            if self._file is not None:
                self._file.close()
                self._file = None

    def flush_soon(self) -> None:
        self._wake.set()

    def make_room(self) -> None:
        """The queue's bound (``traintel.record.queue``), called by the step path every
        ``CHECK_EVERY`` steps: past ``QUEUE_HIGH_WATER`` items, wake the writer and wait until
        it has brought the queue back under the mark, at most ``MAX_WAIT_S``. A writer that
        took nothing in a whole wait is stuck (its oldest item is still first): steps wait no
        more until it takes that one, and past ``QUEUE_LIMIT`` the newest items are dropped,
        counted and said."""
        queue = self.queue
        if len(queue) <= QUEUE_HIGH_WATER:
            return
        self._wake.set()
        head = queue[0]  # thousands queued: the writer cannot empty it meanwhile
        if head is not self._stuck_on and self._thread.is_alive() and not self._stopping:
            deadline = time.monotonic() + MAX_WAIT_S
            sleep = time.sleep
            # each sleep hands the interpreter to the writer (for a switch interval, 5 ms,
            # before this thread gets it back); polling asks nothing of the writer's loop
            while len(queue) > QUEUE_HIGH_WATER and time.monotonic() < deadline:
                sleep(0.001)
            self._stuck_on = head if queue and queue[0] is head else None
        if len(queue) > QUEUE_LIMIT:
            self._drop_newest()

    def _drop_newest(self) -> None:
        """Drop the steps past QUEUE_LIMIT, newest first, and leave one :class:`Dropped` in
        their place (taking up the count of an earlier one it meets). Ready-made lines (events,
        errors, traintel's own warning about this) are kept, up to KEPT_LINES, and go after
        it. The writer counts the dropped lines when it reaches the marker, on its own thread
        (``state.dropped`` has one writer at a time)."""
        queue = self.queue
        lines = others = 0
        kept: list[Line] = []
        while len(queue) > QUEUE_LIMIT:
            item = queue.pop()
            if type(item) is Dropped:
                lines += item.lines
                others += item.others
            elif type(item) is Line and len(kept) < KEPT_LINES:
                kept.append(item)
            elif type(item) in (Step, Line):
                lines += 1
            else:
                others += 1
        queue.append(
            Dropped(
                lines,
                others,
                f"the record queue was full ({QUEUE_LIMIT} items): the writer fell behind "
                "(a slow or hung filesystem?)",
            )
        )
        queue.extend(reversed(kept))
        self._warn_once(
            "queue_full",
            "traintel: the run record's writer fell %d items behind (is the filesystem of "
            "%s slow or hung?); newer steps are dropped until it catches up, counted in "
            "summary.json's record.dropped and traintel_record_dropped_total and said by a "
            "record_gap line where they were. Training goes on; put the run directory on a "
            "local disk (traintel.init(dir=...)) to keep every step",
            QUEUE_LIMIT,
            self.directory,
        )

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._open()
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; what is still queued stays queued (for :meth:`fold` and
        :meth:`close`)."""
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def fold(self) -> None:
        """Fold everything queued into the figures and serialize it, without writing it yet:
        the end of a run writes summary.json from the figures first, then the lines
        (:meth:`close`), so that a kill during a long final write never loses the summary."""
        if self._forked:
            return
        with self._lock:
            queue = self.queue
            while queue:
                self._unwritten += self._fold_batch(len(queue))

    def close(self) -> int:
        """Write everything folded or still queued, then close the file; the number of lines
        that could not be written (counted in ``state.dropped`` and said). Lines that cannot be
        written yet (a full disk) are retried for up to ``shutdown_s``."""
        self.stop()
        self.fold()
        dropped = self.state.dropped
        with self._lock:
            unwritten, self._unwritten = self._unwritten, []
            for start in range(0, len(unwritten), DRAIN_BATCH):
                self._write(unwritten[start : start + DRAIN_BATCH])
        self._drain()
        deadline = time.monotonic() + self.shutdown_s
        while self._pending and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            self._drain()
        with self._lock:
            if self._pending:
                lost = len(self._pending)
                self._pending.clear()
                self._pending_bytes = 0
                self._count_lost(lost)
                log.warning(
                    "traintel: %d run record lines could not be written before the run "
                    "ended (%s); they are lost, and counted in summary.json's "
                    "record.dropped",
                    lost,
                    self._outage[1] if self._outage else "I/O error",
                )
            if self._file is not None:
                self._file.close()
                self._file = None
        return self.state.dropped - dropped

    def flush(self) -> None:
        """Write everything queued now, on the caller's thread (crash and signal paths)."""
        self._drain()

    def _after_fork_in_child(self) -> None:
        """In a forked child: no thread, a lock that may have been held at the fork, the
        parent's file. Nothing queued here is ever written; the parent writes its own."""
        self._forked = self._stopping = True
        self._lock = threading.Lock()
        self.queue.clear()
        self._pending.clear()
        self._file = None  # the parent's descriptor: the parent closes it

    # -- writer thread --------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self._drain()
            except Exception:  # never let the writer die: count and carry on
                log.exception("traintel record writer failed; continuing")

    def _drain(self) -> None:
        """Write everything queued, in slices of at most DRAIN_BATCH lines and SLICE_S of work,
        so a backlog (a tight loop outpacing the disk) never becomes one giant buffer nor one
        long hold of the interpreter. On the writer thread, it sleeps YIELD_S between slices
        while it keeps up (a flush on the caller's thread, at a crash, does not). Once per drain, the live file is
        checked: deleted under us, its lines are gone and the record starts again."""
        if self._forked:
            return
        with self._lock:
            self._check_file()
        step_aside = threading.current_thread() is self._thread
        while self._drain_batch():
            if step_aside and len(self.queue) < DRAIN_BATCH:
                time.sleep(YIELD_S)

    def _drain_batch(self) -> bool:
        """Write one slice of the queue (up to DRAIN_BATCH items, SLICE_S of work), in order;
        True if more are waiting."""
        with self._lock:
            queue = self.queue
            self.state.queue_depth = len(queue)
            if not queue and not self._pending:
                return False
            self._write(self._fold_batch(DRAIN_BATCH, time.perf_counter() + SLICE_S))
            return bool(queue)

    def _fold_batch(self, most: int, until: float | None = None) -> list[bytes]:
        """Take up to ``most`` queued items, oldest first, stopping after the one that ends at
        or after ``until`` (``time.perf_counter``) when given: fold steps into the figures and
        observations into their statistics, run calls, and serialize the lines (the caller holds
        the lock). At least one item is taken, so a slice always makes progress."""
        queue = self.queue
        chunks: list[bytes] = []
        figures = self.figures
        logged = self.state.logged  # min/max/counts of every value, for the exporters
        identity = self.identity
        clock = time.perf_counter
        for taken in range(min(len(queue), most)):
            if taken and until is not None and clock() >= until:
                break
            item = queue.popleft()
            try:
                if type(item) is Step:
                    ts, step, epoch, step_s, data_wait_s, metrics = (
                        item if len(item) == 6 else item[:6]
                    )
                    if tensors.waiting:  # accelerator tensors become numbers here, in order
                        tensors.resolve(metrics, step)
                    figures.add(ts, step, step_s, data_wait_s, metrics)
                    logged.fold(metrics)
                    if step_s is not None:
                        for listener in self.listeners:
                            listener("step", None, step_s)
                    step_line: StepLine = {
                        "ts": ts,
                        "type": "step",
                        "level": "info",
                        "run": identity["run"],
                        "rank": identity["rank"],
                        "step": step,
                        "epoch": epoch,
                        "step_s": step_s,
                        "data_wait_s": data_wait_s,
                        "metrics": metrics,
                    }
                    if len(item) > 6:  # values from commit=False calls (Step.uncommitted)
                        step_line["uncommitted"] = list(item[6])
                    line: Mapping[str, object] = step_line
                elif type(item) is Call:
                    item.fn(*item.args)
                    continue
                elif type(item) is Observe:
                    self._observe(*item)
                    continue
                elif type(item) is Dropped:  # steps the queue had no room for (make_room)
                    self.state.dropped += item.lines
                    reason = item.reason
                    if item.others:
                        reason += f"; {item.others} observations and span calls with them"
                    line = self._event_line(
                        "record_gap", {"lost_lines": item.lines, "reason": reason}
                    )
                else:
                    assert type(item) is Line
                    line = item.line
                    if "uncommitted" in line and line.get("type") == "values":
                        figures.join(line)
                    elif line.get("type") == "epoch":
                        figures.epoch_ended(line)  # counted as summary.json and readers count it
                    elif line.get("type") == "run_start" and line.get("segment", 1) != 1:
                        after = line.get("initial_step")
                        if type(after) is int:
                            figures.supersede(after)  # resumed from an older checkpoint
                    if line.get("type") in HEAD_TYPES and len(self._head) < len(HEAD_TYPES):
                        self._head.append(encode(line))
                chunk = encode(line)
                if len(chunk) > MAX_LINE_BYTES:
                    chunk = self._dropped_line(
                        item,
                        f"the line is {len(chunk)} bytes, over the {MAX_LINE_BYTES}-byte limit",
                    )
            except Exception as exc:  # one bad item never costs its batch
                if type(item) in (Call, Observe):
                    self._warn_once(
                        "item",
                        "traintel: the record writer skipped work it "
                        "could not do (%s: %s); continuing",
                        type(exc).__name__,
                        exc,
                    )
                    continue
                chunk = self._dropped_line(item, f"{type(exc).__name__}: {exc}")
            chunks.append(chunk)
        self.lines += len(chunks)
        last = figures.last_ts
        if last is not None and (not queue or last - self._rated_ts >= RATE_EVERY_S):
            self._rated_ts = last
            self.rates.add(last, figures.steps, figures.samples, figures.tokens)
            self.state.rates = self.rates.rates()
        return chunks

    def _dropped_line(self, item: object, reason: str) -> bytes:
        """The line that stands for one that could not be written, saying what it was."""
        self.state.dropped += 1
        line = getattr(item, "line", None)
        what = (
            {"type": "step", "step": item[1]}
            if type(item) is Step
            else {"type": line.get("type"), "event": line.get("event")}
            if isinstance(line, Mapping)
            else {"type": type(item).__name__}
        )
        return encode(self._event_line("record_line_dropped", {**what, "reason": reason[:500]}))

    def _event_line(self, event: str, fields: dict[str, object]) -> EventLine:
        """An error-level event line the writer itself writes about the record."""
        return {
            "ts": time.time(),
            "type": "event",
            "level": "error",
            "run": self.identity["run"],
            "rank": self.identity["rank"],
            "event": event,
            "step": self.state.step,
            "epoch": self.state.epoch,
            "fields": fields,
        }

    def _observe(self, kind: ObservationKind, name: str, value: float) -> None:
        stats = self.observations.get((kind, name))
        if stats is None:
            stats = self.observations[(kind, name)] = RunningStats()
        stats.add(value)
        for listener in self.listeners:
            listener(kind, name, value)

    # -- the file ---------------------------------------------------------------------------
    def _check_file(self) -> None:
        """Notice a live file (or the whole directory) deleted since the last drain: its lines
        are lost; say how many and start the record again with its first lines."""
        file = self._file
        if file is None:
            return
        try:
            deleted = os.fstat(file.fileno()).st_nlink == 0
        except OSError:
            deleted = True
        if not deleted:
            return
        directory_gone = not self.directory.is_dir()
        lost = self._in_file + (self._in_rotated if directory_gone else 0)
        what = "the run directory was deleted" if directory_gone else f"{EVENTS_FILE} was deleted"
        file.close()
        self._file = None
        self._in_file = 0
        if directory_gone:
            self._in_rotated = 0
        self._count_lost(lost, what)
        log.warning(
            "traintel: %s while the run was recording; %d lines written before were "
            "lost with it. The record goes on in %s",
            what,
            lost,
            self.directory,
        )
        restart = [*self._head, self._gap_line()]
        self._pending.extendleft(reversed(restart))
        self._pending_bytes += sum(len(c) + 1 for c in restart)

    def _count_lost(self, lost: int, reason: str | None = None) -> None:
        """Lines that will never be written: counted (summary.json's record.dropped, the
        exported traintel_record_dropped_total) and said in the next gap line."""
        reason = reason or (self._outage[1] if self._outage else "I/O error")
        self.state.dropped += lost
        self._gap_lost += lost
        if reason not in self._gap_reasons:
            self._gap_reasons.append(reason)

    def _write(self, chunks: list[bytes]) -> None:
        """Write what waits and then ``chunks``; what cannot be written waits for the next
        drain (bounded), so a disk that frees up within a flush loses nothing."""
        if self._pending:
            chunks = [*self._pending, *chunks]
            self._pending.clear()
            self._pending_bytes = 0
        if self._gap_lost and chunks:
            chunks.insert(0, self._gap_line())
        if not chunks:
            return
        file = self._file or self._open()
        written = 0 if file is None else self._write_rotating(file, chunks)
        if written < len(chunks):
            self._keep(chunks[written:])
        elif self._outage is not None:
            since, reason = self._outage
            self._outage = None
            self._warned.discard("outage")
            log.warning(
                "traintel: the run record is writable again after %.1fs (%s before)",
                time.monotonic() - since,
                reason,
            )

    def _gap_line(self) -> bytes:
        """The line that says how many lines are missing before it, and why."""
        line = encode(
            self._event_line(
                "record_gap", {"lost_lines": self._gap_lost, "reason": "; ".join(self._gap_reasons)}
            )
        )
        self._gap_lost = 0
        self._gap_reasons = []
        return line

    def _keep(self, chunks: list[bytes]) -> None:
        """Lines to write at the next drain, within MAX_PENDING_BYTES (oldest dropped first,
        counted, and said in the gap line)."""
        pending = self._pending
        for chunk in chunks:
            pending.append(chunk)
            self._pending_bytes += len(chunk) + 1
        dropped = 0
        while self._pending_bytes > MAX_PENDING_BYTES and pending:
            self._pending_bytes -= len(pending.popleft()) + 1
            dropped += 1
        if dropped:
            self._count_lost(dropped)

    def _write_rotating(self, file: IO[bytes], chunks: list[bytes]) -> int:
        """Write lines, rotating whenever the next line would take the file past max_bytes;
        the number of lines written."""
        batch: list[bytes] = []
        size = self._size
        done = 0
        for chunk in chunks:
            if size > 0 and size + len(chunk) + 1 > self.max_bytes:
                if batch:
                    written = self._write_batch(file, batch)
                    done += written
                    if written < len(batch):
                        return done
                batch = []
                try:
                    file = self._rotate(file)
                except OSError as exc:
                    self._fail(exc)
                    return done
                size = 0
            batch.append(chunk)
            size += len(chunk) + 1
        if batch:
            done += self._write_batch(file, batch)
        return done

    def _write_batch(self, file: IO[bytes], batch: list[bytes]) -> int:
        """Write lines with as few system calls as possible; on failure keep the complete
        lines that made it and cut the file back to the last of them (no torn line). The number
        of lines written."""
        data = b"\n".join(batch) + b"\n"
        written = 0
        try:
            while written < len(data):
                count = file.write(data[written:] if written else data)
                if not count:
                    raise OSError(errno.ENOSPC, "no progress writing the run record")
                written += count
            self._size += len(data)
            self._in_file += len(batch)
            return len(batch)
        except OSError as exc:
            keep = data.rfind(b"\n", 0, written) + 1
            complete = data.count(b"\n", 0, keep)
            try:
                os.ftruncate(file.fileno(), self._size + keep)
                self._size += keep
            except OSError:
                complete = 0  # the torn tail may stay: its lines are written again later
            self._in_file += complete
            self._fail(exc)
            return complete

    def _open(self) -> IO[bytes] | None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            # not through a link, not into a FIFO or another user's file (record.safe)
            file = self._file = safe.open_append(self.path)
            self._size = file.seek(0, os.SEEK_END)
            return file
        except OSError as exc:
            self._fail(exc)
            return None

    def _fail(self, exc: OSError) -> None:
        """Writing failed: close the file (the next drain opens it again) and say so once per
        outage."""
        reason = _REASONS.get(exc.errno or 0, "I/O error")
        if self._outage is None:
            self._outage = (time.monotonic(), reason)
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
        self._warn_once(
            "outage",
            "traintel cannot write the run record %s (%s: %s); training "
            "and telemetry export continue. Lines wait in memory (up to %d MiB) "
            "and are written when it can be written again; what does not fit is "
            "counted as dropped",
            self.path,
            reason,
            exc.strerror or exc,
            MAX_PENDING_BYTES >> 20,
        )

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def _rotate(self, file: IO[bytes]) -> IO[bytes]:
        """events.jsonl -> events.jsonl.1 -> .2 ...: nothing is deleted."""
        file.close()
        self._file = None
        existing = sorted(
            (
                int(p.suffix[1:])
                for p in self.directory.glob(f"{EVENTS_FILE}.*")
                if p.suffix[1:].isdigit()
            ),
            reverse=True,
        )
        for n in existing:
            os.replace(
                self.directory / f"{EVENTS_FILE}.{n}", self.directory / f"{EVENTS_FILE}.{n + 1}"
            )
        os.replace(self.path, self.directory / f"{EVENTS_FILE}.1")
        self._in_rotated += self._in_file
        self._in_file = 0
        new = self._file = safe.open_append(self.path)
        self._size = 0
        return new
