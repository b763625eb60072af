"""The local run record: ``events.jsonl`` written by one background thread.

The training thread appends typed items (``traintel.record.queue``) to a deque; this thread wakes
every ``flush_interval`` seconds, turns them into JSON lines, writes them with one system call,
rotates by size, and folds each step into the figures that become ``summary.json``
(``StepFigures``, the same fold ``traintel logs summary`` runs on what it reads). A disk that is
full or unwritable costs one warning and a dropped-line count, never an exception in training.
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
from typing import IO, Literal, Union

import orjson

from ..forks import reset_in_child
from ..state import RateWindow, RunState
from ..stats import RunningStats
from .files import encode
from .format import EVENTS_FILE, ObservationKind
from .queue import Call, Line, Observe, RecordQueue, Step
from .summary import StepFigures

log = logging.getLogger("traintel.record")

#: lines serialized and written per system call at most
DRAIN_BATCH = 4096

#: what a listener hears about: a step's duration, or an instrument's observation
Heard = Union[Literal["step"], ObservationKind]
#: a listener gets ("step", None, step_seconds) for each timed step and (kind, name, value) for
#: each histogram, timer or operation observation, on the writer thread
Listener = Callable[[Heard, "str | None", float], None]


class RecordWriter:
    """Drains the queue into ``events.jsonl``; ``identity`` (run id, rank) goes on step lines,
    which are built here (the event pipeline puts it on every other line)."""

    def __init__(self, directory: Path, state: RunState, identity: Mapping[str, object], *,
                 flush_interval: float = 1.0, max_bytes: int = 256 * 1024 * 1024,
                 rates: RateWindow | None = None) -> None:
        self.directory = directory
        self.path = directory / EVENTS_FILE
        self.state = state
        self.identity = dict(identity)
        self.flush_interval = flush_interval
        self.max_bytes = max_bytes
        self.queue: RecordQueue = deque()
        #: what summary.json says of the steps, folded as they are written
        self.figures = StepFigures()
        #: histogram, timer and operation observations by (kind, name)
        self.observations: dict[tuple[ObservationKind, str], RunningStats] = {}
        #: lines serialized so far (written or counted as dropped)
        self.lines = 0
        self.listeners: list[Listener] = []
        self.rates = rates or RateWindow()
        self._file: IO[bytes] | None = None
        self._size = 0
        self._failed_at: float | None = None
        self._warned = False
        self._forked = False
        self._wake = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()  # one drain at a time (thread or final flush)
        self._thread = threading.Thread(target=self._loop, name="traintel-record", daemon=True)
        reset_in_child(self._after_fork_in_child)

    # -- producer side (any thread) -------------------------------------------------------
    def line(self, line: Mapping[str, object]) -> None:
        """Queue a ready-made record line (rare: config, evals, events, errors, logs)."""
        self.queue.append(Line(line))

    def flush_soon(self) -> None:
        self._wake.set()

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._open()
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued and stop the thread."""
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._drain()
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def flush(self) -> None:
        """Write everything queued now, on the caller's thread (crash and signal paths)."""
        self._drain()

    def _after_fork_in_child(self) -> None:
        """In a forked child: no thread, a lock that may have been held at the fork, the
        parent's file. Nothing queued here is ever written; the parent writes its own."""
        self._forked = self._stopping = True
        self._lock = threading.Lock()
        self.queue.clear()
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
        """Write everything queued, in batches of at most DRAIN_BATCH lines so a backlog (a
        tight loop outpacing the disk) never becomes one giant buffer."""
        while not self._forked and self._drain_batch():
            pass

    def _drain_batch(self) -> bool:
        """Write up to DRAIN_BATCH queued items; True if more are waiting."""
        with self._lock:
            queue = self.queue
            self.state.queue_depth = len(queue)
            if not queue:
                return False
            chunks: list[bytes] = []
            figures = self.figures
            logged = self.state.logged  # min/max/counts of every value, for the exporters
            identity = self.identity
            for _ in range(min(len(queue), DRAIN_BATCH)):
                item = queue.popleft()
                if type(item) is Step:
                    ts, step, epoch, step_s, data_wait_s, metrics = item
                    figures.add(ts, step_s, data_wait_s, metrics)
                    logged.fold(metrics)
                    if step_s is not None:
                        for listener in self.listeners:
                            listener("step", None, step_s)
                    line: Mapping[str, object] = {
                        "ts": ts, "type": "step", "level": "info", **identity, "step": step,
                        "epoch": epoch, "step_s": step_s, "data_wait_s": data_wait_s,
                        "metrics": metrics}
                elif type(item) is Call:
                    item.fn(*item.args)
                    continue
                elif type(item) is Observe:
                    self._observe(*item)
                    continue
                else:
                    assert type(item) is Line
                    line = item.line
                chunks.append(_serialize(line, identity))
            self.lines += len(chunks)
            if figures.last_ts is not None:
                self.rates.add(figures.last_ts, figures.steps, figures.samples, figures.tokens)
                self.state.rates = self.rates.rates()
            self._write(chunks)
            return bool(queue)

    def _observe(self, kind: ObservationKind, name: str, value: float) -> None:
        stats = self.observations.get((kind, name))
        if stats is None:
            stats = self.observations[(kind, name)] = RunningStats()
        stats.add(value)
        for listener in self.listeners:
            listener(kind, name, value)

    def _write(self, chunks: list[bytes]) -> None:
        """Write lines, rotating whenever the next line would take the file past max_bytes."""
        file = self._file or self._reopen()
        if file is None:
            self.state.dropped += len(chunks)
            return
        batch: list[bytes] = []
        size = self._size
        for index, chunk in enumerate(chunks):
            if size > 0 and size + len(chunk) + 1 > self.max_bytes:
                if batch and not self._write_batch(file, batch, len(chunks) - index + len(batch)):
                    return
                batch = []
                file = self._rotate(file)
                size = 0
            batch.append(chunk)
            size += len(chunk) + 1
        if batch:
            self._write_batch(file, batch, len(batch))

    def _write_batch(self, file: IO[bytes], batch: list[bytes], at_stake: int) -> bool:
        """Write lines with as few system calls as possible; on failure keep the complete
        lines that made it and cut the file back to the last of them (no torn line)."""
        data = b"\n".join(batch) + b"\n"
        written = 0
        try:
            while written < len(data):
                count = file.write(data[written:] if written else data)
                if not count:
                    raise OSError(errno.ENOSPC, "no progress writing the run record")
                written += count
            self._size += len(data)
            return True
        except OSError as exc:
            keep = data.rfind(b"\n", 0, written) + 1
            self.state.dropped += at_stake - data.count(b"\n", 0, keep)
            try:
                os.ftruncate(file.fileno(), self._size + keep)
                self._size += keep
            except OSError:
                pass
            self._fail(exc)
            return False

    def _open(self) -> IO[bytes] | None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            file = self._file = open(self.path, "ab", buffering=0)
            self._size = file.tell()
            return file
        except OSError as exc:
            self._fail(exc)
            return None

    def _reopen(self) -> IO[bytes] | None:
        """After a failure, try again at most every 30 s (the disk may have been cleaned)."""
        if self._failed_at and time.monotonic() - self._failed_at < 30:
            return None
        return self._open()

    def _fail(self, exc: OSError) -> None:
        self._failed_at = time.monotonic()
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
        if not self._warned:
            self._warned = True
            reason = {errno.ENOSPC: "the disk is full", errno.EFBIG: "the file size limit was hit",
                      errno.EACCES: "permission denied", errno.EROFS: "read-only filesystem"}
            log.warning("traintel cannot write the run record %s (%s: %s); training and "
                        "telemetry export continue, lines are counted as dropped",
                        self.path, reason.get(exc.errno or 0, "I/O error"), exc.strerror or exc)

    def _rotate(self, file: IO[bytes]) -> IO[bytes]:
        """events.jsonl -> events.jsonl.1 -> .2 ...: nothing is deleted."""
        file.close()
        existing = sorted((int(p.suffix[1:]) for p in self.directory.glob(f"{EVENTS_FILE}.*")
                           if p.suffix[1:].isdigit()), reverse=True)
        for n in existing:
            os.replace(self.directory / f"{EVENTS_FILE}.{n}",
                       self.directory / f"{EVENTS_FILE}.{n + 1}")
        os.replace(self.path, self.directory / f"{EVENTS_FILE}.1")
        new = self._file = open(self.path, "ab", buffering=0)
        self._size = 0
        return new


def _serialize(line: Mapping[str, object], identity: Mapping[str, object]) -> bytes:
    """One record line; a warning line in its place if nothing can encode it, so one bad
    value never breaks the file."""
    try:
        return encode(line)
    except (TypeError, ValueError) as exc:
        return orjson.dumps({"ts": line.get("ts", time.time()), "type": "event",
                             "level": "warning", **identity, "event": "unserializable",
                             "fields": {"error": str(exc)[:500]}})
