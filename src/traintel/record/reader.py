"""Reading run records (see ``docs/record-format.md``): find a run, iterate its lines across rotated
files and ranks, follow a live run through rotation.

Readers must survive what a crashed or running writer leaves behind, so a line that does not parse
is skipped and counted, never raised. Nothing here knows about the command line, so diagnostics and
tests reuse it; it imports only the standard library and ``orjson`` to keep ``traintel logs`` quick
to start.
"""

from __future__ import annotations

import heapq
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import IO

import orjson

from .. import env
from .format import EVENTS_FILE, RawLine

_ROTATED = re.compile(r"events\.jsonl\.(\d+)$")
_RANK = re.compile(r"rank-(\d+)$")
_BLOCK = 1 << 20
log = logging.getLogger("traintel.record")


class RecordNotFound(FileNotFoundError):
    pass


def runs_dir() -> Path:
    """Where runs are written when ``traintel.init`` is given no ``dir``."""
    return Path(env.TRAINTEL_DIR.get() or "traintel-runs")


def find_run(target: str | os.PathLike[str]) -> Path:
    """A run directory or events file from a path, a run id or a run's name (looked up under
    :func:`runs_dir`; of several runs with one name, the latest, with a note saying so)."""
    path = Path(target)
    if path.exists():
        return path
    by_id = runs_dir() / str(target)
    if by_id.is_dir():
        return by_id
    named = runs_named(str(target))
    if named:
        if len(named) > 1:
            log.warning("%d runs are named %r; the latest is %s (give a run id or a path for "
                        "another: %s)", len(named), str(target), named[-1].name,
                        ", ".join(p.name for p in named[:-1]))
        return named[-1]
    raise RecordNotFound(f"no run record at {path}, and no run with the id or name "
                         f"{str(target)!r} in {runs_dir()}")


def runs_named(name: str) -> list[Path]:
    """The runs under :func:`runs_dir` whose name (their first line's) is ``name``, oldest
    first."""
    root = runs_dir()
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        files = streams(path) if path.is_dir() else []
        if files and (_first_line(files[0]) or {}).get("name") == name:
            found.append(path)
    return sorted(found, key=lambda p: p.stat().st_mtime)


def first_record(records: Records) -> RawLine | None:
    """The first line of a record's lowest rank (its ``run_start``), without reading the rest."""
    return _first_line(records.streams[0]) if records.streams else None


def _first_line(files: list[Path]) -> RawLine | None:
    for file in files:
        try:
            with open(file, "rb") as f:
                line = f.readline(1 << 16)
        except OSError:
            continue
        try:
            parsed = orjson.loads(line)
        except orjson.JSONDecodeError:
            return None
        return parsed if type(parsed) is dict else None
    return None


def count_type(records: Records, kind: str) -> int:
    """How many lines of a type a record holds, counted in the bytes as traintel writes them
    (``"type":"error"``; quotes inside strings are escaped, so text never matches), without
    parsing: fast enough for every run of ``traintel status --all``."""
    needle = orjson.dumps({"type": kind})[1:-1]
    count = 0
    for files in records.streams:
        for file in files:
            try:
                with open(file, "rb") as f:
                    rest = b""
                    while block := f.read(_BLOCK):
                        data = rest + block
                        count += data.count(needle)
                        rest = data[1 - len(needle):]  # a match split between two blocks
            except OSError:
                continue
    return count


def is_run(path: Path) -> bool:
    return path.is_file() or bool(rank_dirs(path)) or bool(rotation_set(path / EVENTS_FILE))


def rank_dirs(path: Path) -> list[Path]:
    """The ``rank-N`` directories of a multi-process run, by rank."""
    if not path.is_dir():
        return []
    ranks = [(int(m.group(1)), p) for p in path.iterdir()
             if (m := _RANK.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(ranks)]


def rank_directories(path: Path) -> dict[int, Path]:
    """Each rank's record directory: ``rank-N`` ones, else the run's own (rank 0), else the
    directory of a record file."""
    if path.is_file():
        return {0: path.parent} if path.name.startswith(EVENTS_FILE) else {}
    return {int(d.name.split("-")[1]): d for d in rank_dirs(path)} or {0: path}


def rotation_set(current: Path) -> list[Path]:
    """``events.jsonl.N`` down to ``.1`` then ``events.jsonl``: oldest lines first."""
    if not current.parent.is_dir():
        return []
    rotated = [(int(m.group(1)), p) for p in current.parent.iterdir()
               if (m := _ROTATED.match(p.name))]
    files = [p for _, p in sorted(rotated, reverse=True)]
    return files + [current] if current.exists() else files


def streams(path: Path) -> list[list[Path]]:
    """The files of a record, one list per rank, each oldest first.

    A directory holds ``events.jsonl`` (and its rotations) or ``rank-N`` directories holding them;
    ``events.jsonl`` given as a file brings its rotations along, any other file is read alone.
    """
    if path.is_file():
        return [rotation_set(path) if path.name == EVENTS_FILE else [path]]
    dirs = rank_dirs(path) or [path]
    return [files for d in dirs if (files := rotation_set(d / EVENTS_FILE))]


class Records:
    """The records of one run in time order, with a count of the lines that could not be read.

    ``bad`` is complete once iteration has finished. With ``waiting``, a run that has not written
    its first line, or not even made its directory, is accepted: followers wait for it.
    """

    def __init__(self, target: str | os.PathLike[str], waiting: bool = False):
        try:
            self.path = find_run(target)
        except RecordNotFound:
            if not waiting:
                raise
            self.path = Path(target) if os.sep in str(target) else runs_dir() / str(target)
        self.streams = streams(self.path) if self.path.exists() else []
        if not self.streams and waiting and not self.path.is_file():
            self.streams = [[self.path / EVENTS_FILE]]
        if not self.streams:
            raise RecordNotFound(f"no {EVENTS_FILE} under {self.path}")
        self.bad = 0

    def __iter__(self) -> Iterator[RawLine]:
        if len(self.streams) == 1:
            return self.read(self.streams[0])
        # each rank's file is in time order; merging keeps the whole run in time order
        return heapq.merge(*(self.read(s) for s in self.streams), key=_ts)

    def read(self, files: Iterable[Path]) -> Iterator[RawLine]:
        """The records of files in turn; a file that has gone since it was listed is passed over."""
        for file in files:
            try:
                f = open(file, "rb")
            except FileNotFoundError:
                continue
            with f:
                yield from self.parse(f)

    def parse(self, lines: Iterable[bytes]) -> Iterator[RawLine]:
        loads = orjson.loads
        for line in lines:
            try:
                record = loads(line)
            except orjson.JSONDecodeError:
                if line.strip():
                    self.bad += 1
                continue
            if type(record) is dict:
                yield record
            else:
                self.bad += 1


def _ts(record: RawLine) -> float:
    ts = record.get("ts")
    return ts if isinstance(ts, (int, float)) else 0.0


def last_records(records: Records, n: int, ends: dict[Path, int] | None = None) -> list[RawLine]:
    """The last ``n`` records, reading each stream backwards from its end rather than whole;
    ``ends`` stops some files at a byte offset instead of their current end."""
    recent: list[RawLine] = []
    ends = ends or {}
    for files in records.streams if n > 0 else ():
        found: list[RawLine] = []
        existing = [f for f in reversed(files) if f.exists()]
        for line in chain.from_iterable(_reversed_lines(f, ends.get(f)) for f in existing):
            found += records.parse([line])
            if len(found) == n:
                break
        recent += found
    return sorted(recent, key=_ts)[-n:] if n > 0 else []


def _reversed_lines(file: Path, end: int | None = None) -> Iterator[bytes]:
    """The lines of a file before ``end`` (default: its end) from last to first, reading blocks
    backwards."""
    with open(file, "rb") as f:
        pos = f.seek(0, os.SEEK_END) if end is None else end
        rest = b""
        while pos > 0:
            size = min(_BLOCK, pos)
            pos -= size
            f.seek(pos)
            lines = (f.read(size) + rest).split(b"\n")
            rest = lines[0]
            yield from reversed(lines[1:])
        yield rest


class Follower:
    """New lines appended to one ``events.jsonl``, surviving rotation and truncation.

    The writer rotates by renaming the file to ``events.jsonl.1`` and creating a new one. The open
    handle still reads the renamed file, so it is finished before moving on; a changed inode (or a
    file shorter than the read position) is the signal. A partial last line waits for its end.
    """

    def __init__(self, path: Path, records: Records, from_start: bool = False):
        self.path = path
        self.records = records
        self._file: IO[bytes] | None = None
        self._inode: int | None = None
        self._rest = b""
        self._from_start = from_start
        self._late = self._open() is None

    @property
    def position(self) -> int:
        """Where reading starts or goes on in the file open now (0 before it exists)."""
        return self._file.tell() if self._file else 0

    def poll(self) -> list[RawLine]:
        """New records, a block at a time so that a long backlog does not fill memory."""
        file = self._file
        if file is None:
            file = self._open()
            if file is None:
                return []
            if self._late:  # it appeared while we waited, and may have been rotated already
                self._late = False
                return list(self.records.read(self._others()[0]))
        data = file.read(_BLOCK)
        if data or not self._moved(file):
            return self._complete(data)
        # rotated or truncated: finish the old file, then any rotated after it, then the new one
        out = self._complete(file.read())
        if self._rest:
            out += self.records.parse([self._rest])
        file.close()
        out += self.records.read(self._others()[1])
        self._from_start = True
        self._open()
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def _open(self) -> IO[bytes] | None:
        """Open the live file (None while it does not exist)."""
        self._rest = b""
        try:
            file = self._file = open(self.path, "rb")
        except FileNotFoundError:
            self._file = None
            self._from_start = True  # whatever appears later is new
            return None
        self._inode = os.fstat(file.fileno()).st_ino
        if not self._from_start:
            file.seek(0, os.SEEK_END)
        return file

    def _moved(self, file: IO[bytes]) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # between the writer's rename and create
        return st.st_ino != self._inode or st.st_size < file.tell()

    def _others(self) -> tuple[list[Path], list[Path]]:
        """The files rotated before ours and those rotated after it (the writer may rotate more
        than once between polls), oldest first."""
        files = rotation_set(self.path)
        inodes = [_inode(p) for p in files]
        if self._inode not in inodes:
            return [], []
        i = inodes.index(self._inode)
        return files[:i], [p for p in files[i + 1:] if p != self.path]

    def _complete(self, data: bytes) -> list[RawLine]:
        complete, _, self._rest = (self._rest + data).rpartition(b"\n")
        return list(self.records.parse(complete.split(b"\n"))) if complete else []


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def follow(records: Records, last: int | None = 0, poll_s: float = 0.2) -> Iterator[RawLine]:
    """Records as they are written, forever: first the last ``last`` already written (every one
    when None), then the new ones. The caller decides when to stop.

    The live files are opened first, so that what was already written and what comes next meet
    exactly at the offsets they were opened at: nothing is lost or shown twice.
    """
    split = [_current(files) for files in records.streams]
    followers = [Follower(current, records, from_start=last is None) for current, _ in split]
    try:
        if last is None:
            yield from records.read(f for _, rotated in split for f in rotated)
        else:
            yield from last_records(records, last, {f.path: f.position for f in followers})
        while True:
            batch = sorted((r for f in followers for r in f.poll()), key=_ts)
            yield from batch
            if not batch:
                time.sleep(poll_s)
    finally:
        for f in followers:
            f.close()


def _current(files: list[Path]) -> tuple[Path, list[Path]]:
    """The file being written and the rotated ones before it."""
    if _ROTATED.match(files[-1].name):
        return files[-1].parent / EVENTS_FILE, files
    return files[-1], files[:-1]
