"""What ``traintel sync`` reads: the records its arguments name, and a first pass over each that
finds its segments and what the live export already delivered.

A *record* is one rank's ``events.jsonl`` with its rotations, read oldest first as one stream
of bytes (``traintel.record.reader.positioned``): offsets stay valid when the writer rotates.
A *segment* is what one process wrote, from a ``run_start`` line to the next (a resumed run has
several). Lines that do not parse, or whose fields have the wrong types, are skipped and
counted, as every reader of records does.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeGuard

from traintel.record.format import RawLine
from traintel.record.reader import RecordNotFound, find_run, is_run, positioned, streams
from traintel.record.safe import is_link, owner_problem

log = logging.getLogger("traintel.sync")

#: record lines a live run sends as OTLP logs: ``log`` lines always, the others at or above the
#: run's log level (below it they reach the record alone)
LOGGED_TYPES = frozenset({"event", "eval", "error", "milestone", "log", "run_end"})
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
#: a line's time may be this far from its segment's start before, and from now after, and
#: still be believed (a host's clock can be off; not by more than a day)
SLACK_S = 86400.0


def plausible(ts: object, start: float | None = None) -> TypeGuard[float]:
    """Whether ``ts`` is a time a line can have: a finite number after 2001 (a record's lines
    are recent), not a day before its segment's start, not a day in the future."""
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        return False
    return 1e9 <= ts <= time.time() + SLACK_S and (start is None or ts >= start - SLACK_S)


@dataclass
class Segment:
    """One process's part of a record, as the first pass found it."""

    #: byte offset of its ``run_start`` line: its name in the cursor
    offset: int
    start: RawLine
    #: the time of its last line (export notes aside)
    last_ts: float = -math.inf
    #: live metric exports: (collection time, delivered)
    exports: list[tuple[float, bool]] = field(default_factory=list)
    #: what the live export delivered: log record timestamps (ns; counted), span ids
    delivered_logs: Counter[int] = field(default_factory=Counter)
    delivered_spans: set[str] = field(default_factory=set)

    @property
    def start_ts(self) -> float:
        ts = self.start["ts"]  # plausible: checked by the scan
        return float(ts)

    @property
    def mode(self) -> str | None:
        """``export`` of its ``run_start``: otlp, offline, disabled; None before records said."""
        mode = self.start.get("export")
        return mode if isinstance(mode, str) else None

    @property
    def interval(self) -> float:
        value = self.start.get("export_interval_s")
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value <= 0
        ):
            return 15.0
        return float(value)

    @property
    def log_level(self) -> int:
        return LEVELS.get(str(self.start.get("log_level", "info")).lower(), LEVELS["info"])


@dataclass
class Record:
    """One rank's record: its files, oldest first; its cursor lives in their directory."""

    files: list[Path]
    #: found by :meth:`scan`
    segments: list[Segment] = field(default_factory=list)
    #: the byte offset past the last complete line the scan read: what this sync covers
    end: int = 0
    #: lines skipped by the scan: unreadable, without a time, or before any ``run_start``
    bad: int = 0

    @property
    def directory(self) -> Path:
        return self.files[-1].parent

    @property
    def name(self) -> str:
        """``<run>`` or ``<run>/rank-N``, as the directories say."""
        directory = self.directory
        if directory.name.startswith("rank-"):
            return f"{directory.parent.name}/{directory.name}"
        return directory.name

    def lines(self, start: int = 0) -> Iterator[tuple[int, int, RawLine | None]]:
        """(start, end, line or None) from byte ``start`` to what the scan covered."""
        for begin, stop, line in positioned(self.files, start):
            if self.end and stop > self.end:
                return
            yield begin, stop, line

    def scan(self) -> None:
        """The first pass: segments, the live export's notes, unreadable lines."""
        self.segments, self.bad, self.end = [], 0, 0
        segment: Segment | None = None
        for begin, stop, line in positioned(self.files):
            self.end = stop
            if line is None:
                self.bad += 1
                continue
            kind = line.get("type")
            if kind == "run_start":
                if not plausible(line.get("ts")):
                    self.bad += 1
                    continue
                segment = Segment(begin, line)
                self.segments.append(segment)
            if segment is None:
                self.bad += 1  # nothing says whose it is (project, resource)
                continue
            if kind == "export":
                _note(segment, line)
                continue
            ts = line.get("ts")
            if not plausible(ts, segment.start_ts):
                self.bad += 1
                continue
            segment.last_ts = max(segment.last_ts, ts)


def _note(segment: Segment, line: RawLine) -> None:
    """An ``export`` line: what the live export delivered (a malformed one says nothing)."""
    signal, ok, delivered = line.get("signal"), line.get("ok") is True, line.get("delivered")
    if signal == "metrics":
        at = line.get("at")
        if plausible(at, segment.start_ts):  # "at": 1e13 would ask for billions of points
            segment.exports.append((float(at), ok))
    elif ok and isinstance(delivered, list):
        if signal == "logs":
            segment.delivered_logs.update(
                v for v in delivered if isinstance(v, int) and not isinstance(v, bool)
            )
        elif signal == "traces":
            segment.delivered_spans.update(v for v in delivered if isinstance(v, str))


def find_records(targets: list[str]) -> tuple[list[Record], list[str]]:
    """The records named: run ids, run or rank directories, ``events.jsonl`` files, or
    directories of runs (every run in them); and why any target gave none."""
    records: list[Record] = []
    missing: list[str] = []
    for target in targets:
        try:
            path = find_run(target)
        except RecordNotFound as exc:
            missing.append(str(exc))
            continue
        if is_link(path):  # a shared directory's planted link: another user's run, or a cursor
            missing.append(
                f"{path} is a symbolic link: not followed; name the directory it "
                "points to if it is yours"
            )
            continue
        if is_run(path):
            runs = [path]
        elif path.is_dir():
            entries = sorted(path.iterdir())
            links = [p for p in entries if is_link(p)]
            if links:
                log.warning(
                    "traintel sync: %d symbolic link(s) in %s not followed: %s",
                    len(links),
                    path,
                    ", ".join(p.name for p in links[:5]),
                )
            runs = [p for p in entries if p.is_dir() and not is_link(p) and is_run(p)]
        else:
            runs = []
        found = [Record(files) for run in runs for files in streams(run)]
        if not found:
            missing.append(f"no run record at {path}")
        for record in found:
            problem = _not_owned(record.directory)
            if problem:
                log.warning(
                    "traintel sync: %s is %s: its files are read as they are, and no "
                    "cursor is kept beside them",
                    record.directory,
                    problem,
                )
        records += found
    return records, missing


def _not_owned(directory: Path) -> str | None:
    try:
        return owner_problem(os.lstat(directory))
    except OSError:
        return None
