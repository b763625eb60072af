"""The local run record: ``events.jsonl`` written by one background thread.

The training thread appends tuples to a deque (an atomic, lock-free append in CPython); this
thread wakes every ``flush_interval`` seconds, turns them into JSON lines, writes them with one
system call, rotates by size, and folds each line into the aggregates that become
``summary.json``. A disk that is full or unwritable costs one warning and a dropped-line count,
never an exception in training.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from .state import COUNTED_KEYS, RateWindow, RunState, nonfinite_text
from .stats import RunningStats

log = logging.getLogger("traintel.record")

STEP = "step"
LINE = "line"
OBSERVE = "observe"
#: a deferred call, run on the writer thread (work taken off the training thread)
CALL = "call"
#: lines serialized and written per system call at most
DRAIN_BATCH = 4096

#: a listener gets ("step", None, step_seconds) for each step and (kind, name, value) for each
#: user histogram/timer observation, on the writer thread
Listener = Callable[[str, "str | None", float], None]


class Aggregates:
    """What ``summary.json`` needs, folded line by line as the record is written."""

    def __init__(self) -> None:
        self.lines = 0
        self.steps = 0
        self.samples = 0
        self.tokens = 0
        self.loss = RunningStats()
        self.nonfinite_loss = 0
        self.step_time = RunningStats()
        self.data_wait = 0.0
        self.timed = 0.0
        self.first_step_ts: float | None = None
        self.last_step_ts: float | None = None
        self.instruments: dict[tuple[str, str], RunningStats] = {}

    def fold_step(self, ts: float, step_s: float | None, data_wait_s: float | None,
                  metrics: dict[str, Any]) -> None:
        self.steps += 1
        if self.first_step_ts is None:
            self.first_step_ts = ts - (step_s or 0.0)
        self.last_step_ts = ts
        if step_s is not None:
            self.step_time.add(step_s)
            self.timed += step_s
            if data_wait_s is not None:
                self.data_wait += data_wait_s
        loss = metrics.get("loss")
        if loss is not None:
            if isinstance(loss, str):
                self.nonfinite_loss += 1
            else:
                self.loss.add(loss)
        for key in COUNTED_KEYS:  # non-finite counts are written as text and not counted
            value = metrics.get(key)
            if value is not None and not isinstance(value, str):
                setattr(self, key, getattr(self, key) + int(value))

    def fold_observation(self, kind: str, name: str, value: float) -> None:
        stats = self.instruments.get((kind, name))
        if stats is None:
            stats = self.instruments[(kind, name)] = RunningStats()
        stats.add(value)


class RecordWriter:
    def __init__(self, directory: Path, state: RunState, base: dict[str, Any], *,
                 flush_interval: float = 1.0, max_bytes: int = 256 * 1024 * 1024,
                 rates: RateWindow | None = None) -> None:
        self.directory = directory
        self.path = directory / "events.jsonl"
        self.state = state
        self.base = base
        self.flush_interval = flush_interval
        self.max_bytes = max_bytes
        self.queue: deque[tuple[Any, ...]] = deque()
        self.aggregates = Aggregates()
        self.listeners: list[Listener] = []
        self.rates = rates or RateWindow()
        self._file: Any = None
        self._size = 0
        self._failed_at: float | None = None
        self._warned = False
        self._wake = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()  # one drain at a time (thread or final flush)
        self._thread = threading.Thread(target=self._loop, name="traintel-record", daemon=True)

    # -- producer side (any thread) -------------------------------------------------------
    def line(self, record: dict[str, Any]) -> None:
        """Queue a ready-made record line (rare events: config, eval, errors, logs)."""
        self.queue.append((LINE, record))

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
        while self._drain_batch():
            pass

    def _drain_batch(self) -> bool:
        """Write up to DRAIN_BATCH queued items; True if more are waiting."""
        with self._lock:
            queue = self.queue
            self.state.queue_depth = len(queue)
            if not queue:
                return False
            chunks: list[bytes] = []
            dumps = orjson.dumps
            agg = self.aggregates
            base = self.base
            for _ in range(min(len(queue), DRAIN_BATCH)):
                item = queue.popleft()
                kind = item[0]
                if kind == STEP:
                    _, ts, step, epoch, step_s, data_wait_s, metrics = item
                    agg.fold_step(ts, step_s, data_wait_s, metrics)
                    if step_s is not None:
                        for listener in self.listeners:
                            listener(STEP, None, step_s)
                    record = {"ts": ts, "type": "step", "level": "info", **base, "step": step,
                              "epoch": epoch, "step_s": step_s, "data_wait_s": data_wait_s,
                              "metrics": metrics}
                elif kind == CALL:
                    item[1](*item[2])
                    continue
                elif kind == OBSERVE:
                    _, obs_kind, name, value = item
                    agg.fold_observation(obs_kind, name, value)
                    for listener in self.listeners:
                        listener(obs_kind, name, value)
                    continue
                else:
                    record = item[1]
                    for key, value in base.items():
                        record.setdefault(key, value)
                chunks.append(_serialize(record, base))
            agg.lines += len(chunks)
            if agg.last_step_ts is not None:
                self.rates.add(agg.last_step_ts, agg.steps, agg.samples, agg.tokens)
                self.state.rates = self.rates.rates()
            self._write(chunks)
            return bool(queue)

    def _write(self, chunks: list[bytes]) -> None:
        """Write lines, rotating whenever the next line would take the file past max_bytes."""
        if self._file is None and not self._reopen():
            self.state.dropped += len(chunks)
            return
        batch: list[bytes] = []
        size = self._size
        for index, chunk in enumerate(chunks):
            if size > 0 and size + len(chunk) + 1 > self.max_bytes:
                if batch and not self._write_batch(batch, len(chunks) - index + len(batch)):
                    return
                batch = []
                self._rotate()
                size = 0
            batch.append(chunk)
            size += len(chunk) + 1
        if batch:
            self._write_batch(batch, len(batch))

    def _write_batch(self, batch: list[bytes], at_stake: int) -> bool:
        """Write lines with as few system calls as possible; on failure keep the complete
        lines that made it and cut the file back to the last of them (no torn line)."""
        data = b"\n".join(batch) + b"\n"
        written = 0
        try:
            while written < len(data):
                count = self._file.write(data[written:] if written else data)
                if not count:
                    raise OSError(errno.ENOSPC, "no progress writing the run record")
                written += count
            self._size += len(data)
            return True
        except OSError as exc:
            keep = data.rfind(b"\n", 0, written) + 1
            self.state.dropped += at_stake - data.count(b"\n", 0, keep)
            try:
                os.ftruncate(self._file.fileno(), self._size + keep)
                self._size += keep
            except OSError:
                pass
            self._fail(exc)
            return False

    def _open(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab", buffering=0)
            self._size = self._file.tell()
        except OSError as exc:
            self._fail(exc)

    def _reopen(self) -> bool:
        """After a failure, try again at most every 30 s (the disk may have been cleaned)."""
        if self._failed_at and time.monotonic() - self._failed_at < 30:
            return False
        self._open()
        return self._file is not None

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

    def _rotate(self) -> None:
        """events.jsonl -> events.jsonl.1 -> .2 ...: nothing is deleted."""
        self._file.close()
        existing = sorted((int(p.suffix[1:]) for p in self.directory.glob("events.jsonl.*")
                           if p.suffix[1:].isdigit()), reverse=True)
        for n in existing:
            os.replace(self.directory / f"events.jsonl.{n}",
                       self.directory / f"events.jsonl.{n + 1}")
        os.replace(self.path, self.directory / "events.jsonl.1")
        self._file = open(self.path, "ab", buffering=0)
        self._size = 0


def encode(value: Any, *, sort_keys: bool = False, indent: bool = False) -> bytes:
    """JSON bytes for anything traintel writes: orjson first, the stdlib for what orjson
    refuses (integers beyond 64 bits), ``str()`` for objects neither knows."""
    option = orjson.OPT_NON_STR_KEYS | (orjson.OPT_SORT_KEYS if sort_keys else 0) | (
        orjson.OPT_INDENT_2 if indent else 0)
    try:
        return orjson.dumps(value, option=option, default=_json_default)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(_text_for_nonfinite(value), default=_json_default, ensure_ascii=False,
                          allow_nan=False, sort_keys=sort_keys, indent=2 if indent else None
                          ).encode("utf-8", "surrogatepass")


def _text_for_nonfinite(value: Any) -> Any:
    """NaN/Inf as "nan"/"inf" text, as the record format says (orjson would write null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return nonfinite_text(value)
    if isinstance(value, dict):
        return {k: _text_for_nonfinite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_text_for_nonfinite(v) for v in value]
    return value


def _serialize(record: dict[str, Any], base: dict[str, Any]) -> bytes:
    """One record line; a warning line in its place if nothing can encode it, so one bad
    value never breaks the file."""
    try:
        return encode(record)
    except (TypeError, ValueError) as exc:
        return orjson.dumps({"ts": record.get("ts", time.time()), "type": "event",
                             "level": "warning", **base, "event": "unserializable",
                             "fields": {"error": str(exc)[:500]}})


def _json_default(value: Any) -> Any:
    """Last resort for values orjson does not know (paths, sets, tensors in user fields)."""
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            pass
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)
