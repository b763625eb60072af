"""Reading run records (see ``docs/record-format.md``): find a run, iterate its lines across rotated
files and ranks, follow a live run through rotation.

Readers must survive what a crashed, running or foreign writer leaves behind: a line that does not
parse, is not a record or is over ``MAX_LINE_BYTES`` is skipped, a known field of the wrong type
(a time out of range, a metric value that is a dict) is left out, a file that cannot be read is
passed over, each counted with a one-line reason (:meth:`Records.problems`), never raised. Lines
are read with a bounded buffer, backwards too, so a 200 MB line costs a pass over it, not its
size in memory or a copy per block. Nothing here knows about the command line, so diagnostics and
tests reuse it; it imports only the standard library and ``orjson`` to keep ``traintel logs`` quick
to start.
"""

from __future__ import annotations

import heapq
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, NamedTuple

import orjson

from traintel.core import env
from traintel.record import safe
from traintel.record.format import EVENTS_FILE, LEVELS, MAX_LINE_BYTES, RawLine

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
            log.warning(
                "%d runs are named %r; the latest is %s (give a run id or a path for another: %s)",
                len(named),
                str(target),
                named[-1].name,
                ", ".join(p.name for p in named[:-1]),
            )
        return named[-1]
    raise RecordNotFound(
        f"no run record at {path}, and no run with the id or name {str(target)!r} in {runs_dir()}"
    )


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
            with safe.open_read(file) as f:
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
                with safe.open_read(file) as f:
                    rest = b""
                    while block := f.read(_BLOCK):
                        data = rest + block
                        count += data.count(needle)
                        rest = data[1 - len(needle) :]  # a match split between two blocks
            except OSError:
                continue
    return count


def is_run(path: Path) -> bool:
    return path.is_file() or bool(rank_dirs(path)) or bool(rotation_set(path / EVENTS_FILE))


def rank_dirs(path: Path) -> list[Path]:
    """The ``rank-N`` directories of a multi-process run, by rank."""
    if not path.is_dir():
        return []
    ranks = [
        (int(m.group(1)), p)
        for p in path.iterdir()  # a link is not followed
        if (m := _RANK.match(p.name)) and p.is_dir() and not p.is_symlink()
    ]
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
    rotated = [
        (int(m.group(1)), p) for p in current.parent.iterdir() if (m := _ROTATED.match(p.name))
    ]
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
        #: lines skipped and fields left out, by reason; files that could not be read, and why
        self.skipped: dict[str, int] = {}
        self.fixed: dict[str, int] = {}
        self.unreadable: dict[str, str] = {}

    @property
    def bad(self) -> int:
        """Lines that could not be read."""
        return sum(self.skipped.values())

    def problems(self) -> str | None:
        """What could not be read, in one line, or None when everything could."""
        parts = [
            f"could not read {', '.join(f'{name} ({why})' for name, why in files)}"
            for files in [self.unreadable.items()]
            if self.unreadable
        ]
        if self.skipped:
            parts.append(f"skipped {self.bad} line(s) ({_reasons(self.skipped)})")
        if self.fixed:
            parts.append(
                f"left out {sum(self.fixed.values())} field(s) of the wrong type "
                f"({_reasons(self.fixed)})"
            )
        return "; ".join(parts) or None

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def skip_file(self, file: Path, error: OSError) -> None:
        name = file.relative_to(self.path) if file.is_relative_to(self.path) else file
        self.unreadable[str(name)] = str(error.strerror or error)

    def __iter__(self) -> Iterator[RawLine]:
        if len(self.streams) == 1:
            return self.read(self.streams[0])
        # each rank's file is in time order; merging keeps the whole run in time order
        return heapq.merge(*(self.read(s) for s in self.streams), key=_ts)

    def read(self, files: Iterable[Path]) -> Iterator[RawLine]:
        """The records of files in turn; a file that has gone since it was listed is passed over,
        one that cannot be read (a directory, a symlink loop, no permission) too, counted."""
        for file in files:
            try:
                with safe.open_read(file) as f:
                    yield from self.parse(bounded_lines(f))
            except FileNotFoundError:
                continue
            except OSError as exc:
                self.skip_file(file, exc)

    def parse(self, lines: Iterable[bytes | None]) -> Iterator[RawLine]:
        """Records from lines (None: a line over MAX_LINE_BYTES, not read); a well-formed step
        line, by far the most common, costs a few type checks."""
        loads = orjson.loads
        for line in lines:
            if line is None:
                self.skip(_OVERLONG)
                continue
            try:
                record = loads(line)
            except orjson.JSONDecodeError:
                if line.strip():
                    self.skip("not JSON")
                continue
            if type(record) is not dict:
                self.skip("not a JSON object")
                continue
            # exactly what the writer writes for a step (about 0.5 us, half of decoding it):
            # anything else takes the full check
            get = record.get
            ts, metrics = get("ts"), get("metrics")
            if (
                ts.__class__ is float
                and 0.0 <= ts <= MAX_TS
                and get("type") == "step"
                and get("level") == "info"
                and (get("step").__class__, get("epoch").__class__, get("rank", 0).__class__)
                == _THREE_INTS
                and get("step_s").__class__ in _SECONDS_CLASSES
                and metrics.__class__ is dict
                and _NUMBER_CLASSES.issuperset(map(type, metrics.values()))
            ):
                yield record
            elif self._checked(record):
                yield record

    def _checked(self, record: RawLine) -> bool:
        """Whether ``record`` is a record line; known fields of the wrong type left out of it."""
        if type(record.get("type")) is not str:
            self.skip("no record type")
            return False
        for key, value in list(record.items()):
            rule = FIELD_RULES.get(key)
            if rule is not None:
                fits, expected = rule
                if not fits(value):
                    del record[key]
                    self._fix(f"{key} not {expected}")
            elif type(value) is dict or type(value) is list:
                if _deeper(value, _MAX_DEPTH):
                    record[key] = f"<nested deeper than {_MAX_DEPTH} levels>"
                    self._fix(f"{key} nested too deep")
        for key in ("metrics", "best"):
            values = record.get(key)
            if values is not None:
                for name, value in list(values.items()):
                    if not (
                        _number(value)
                        or type(value) is str
                        and value in _NONFINITE_TEXT
                        or value is None
                        and key == "best"
                    ):
                        del values[name]
                        self._fix(f"{key} value not a number")
        return True

    def _fix(self, reason: str) -> None:
        self.fixed[reason] = self.fixed.get(reason, 0) + 1


#: the latest time a record line may carry (the year 9999): a larger ``ts`` is not a time
MAX_TS = 253402300799.0
_MAX_DEPTH = 32
_OVERLONG = f"over {MAX_LINE_BYTES >> 20} MiB"
_NONFINITE_TEXT = frozenset({"nan", "inf", "-inf"})
_LEVELS = frozenset(LEVELS)
_NUMBER_CLASSES = frozenset({float, int})
_THREE_INTS = (int, int, int)
_SECONDS_CLASSES = frozenset({float, type(None)})
_INT64_MAX = 2**63 - 1


def _number(value: object) -> bool:
    return (type(value) is float or type(value) is int) and value == value


def _seconds(value: object) -> bool:
    return value is None or (type(value) is float or type(value) is int) and 0 <= value < 1e300


def _time(value: object) -> bool:
    return (type(value) is float or type(value) is int) and 0 <= value <= MAX_TS


def _count(value: object) -> bool:
    return type(value) is int and 0 <= value <= _INT64_MAX


def _text(value: object) -> bool:
    return type(value) is str


def _mapping(value: object) -> bool:
    return type(value) is dict and not _deeper(value, _MAX_DEPTH)


def _deeper(value: object, limit: int) -> bool:
    """Whether ``value`` nests deeper than ``limit`` (without recursion: a hostile line may nest
    a thousand levels)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if type(item) is dict else item if type(item) is list else ()
        stack.extend(
            (child, depth + 1) for child in children if type(child) is dict or type(child) is list
        )
    return False


#: what each known field of a record line must be (``docs/record-format.md``), as a check and
#: the words for a field that fails it
FIELD_RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "ts": (_time, "a time"),
    "level": (lambda v: type(v) is str and v in _LEVELS, "a level"),
    **{
        key: (_count, "a count")
        for key in ("rank", "step", "epoch", "steps", "percent", "pid", "world_size", "count")
    },
    **{
        key: (lambda v: v is None or _count(v), "a count")
        for key in ("local_rank", "total_steps", "total_epochs")
    },
    **{
        key: (_seconds, "seconds")
        for key in ("step_s", "data_wait_s", "duration_s", "elapsed_s", "eta_s")
    },
    **{
        key: (lambda v: v is None or _number(v), "a number")
        for key in ("total", "mean", "min", "max", "p50", "p95", "p99", "last", "std")
    },
    **{
        key: (_text, "text")
        for key in (
            "run",
            "message",
            "traceback",
            "exc_type",
            "error_type",
            "severity",
            "logger",
            "event",
            "name",
            "project",
            "host",
            "status",
            "kind",
            "traintel_version",
            "config_hash",
        )
    },
    "operation": (lambda v: v is None or _text(v), "text"),
    "hints": (lambda v: type(v) is list and all(type(h) is str for h in v), "a list of text"),
    **{
        key: (_mapping, "a mapping")
        for key in ("metrics", "best", "is_best", "fields", "context", "config")
    },
}


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def bounded_lines(file: IO[bytes]) -> Iterator[bytes | None]:
    """The lines of a file, each at most MAX_LINE_BYTES: a longer one is read past, not held,
    and stands as None. Blocks are split in C and their lines handed on as a list, so this costs
    less per line than iterating the file itself."""
    pieces: list[bytes] = []  # the line that goes on into the next block, while it fits
    size = 0  # its length so far (0: no line goes on)
    while block := file.read(_BLOCK):
        lines: list[bytes | None] = block.split(b"\n")  # type: ignore[assignment]  # bytes
        last = lines.pop()  # goes on in the next block (b"": the block ended a line)
        if lines:
            if size:
                head = lines[0]
                assert head is not None
                size += len(head)
                lines[0] = b"".join([*pieces, head]) if size <= MAX_LINE_BYTES else None
                pieces, size = [], 0
            yield from lines
        if last:
            size += len(last)
            if size <= MAX_LINE_BYTES:
                pieces.append(last)
            else:
                pieces.clear()
    if size:
        yield b"".join(pieces) if size <= MAX_LINE_BYTES else None


def positioned(files: Iterable[Path], start: int = 0) -> Iterator[tuple[int, int, RawLine | None]]:
    """The complete lines of files read in turn as one stream of bytes, from byte ``start`` on:
    (where the line starts, where it ends, the line, or None when it is not a JSON object).
    Offsets count across the files, so they stay valid when the writer rotates (oldest files
    first; nothing is deleted). A last line without its newline is being written, or was torn
    by a crash: it is left out. Blank lines are passed over."""
    loads = orjson.loads
    base = 0
    for path in files:
        try:
            file = safe.open_read(path)
        except FileNotFoundError:
            continue
        except OSError as exc:  # a link, a FIFO, a device (record.safe), no permission
            if path not in _SAID:
                _SAID.add(path)
                log.warning("traintel: %s is passed over: %s", path, exc.strerror or exc)
            continue
        with file:
            size = os.fstat(file.fileno()).st_size
            if base + size <= start:
                base += size
                continue
            at = max(0, start - base)
            file.seek(at)
            for raw in file:
                begin, at = base + at, at + len(raw)
                if not raw.endswith(b"\n"):
                    break
                if not raw.strip():
                    continue
                try:
                    line = loads(raw)
                except orjson.JSONDecodeError:
                    line = None
                yield begin, base + at, line if type(line) is dict else None
            base += max(size, at)  # the live file may have grown while it was read


#: files :func:`positioned` could not read, said once each (a sync reads a record twice)
_SAID: set[Path] = set()


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
        for file in reversed(files):
            try:
                for line in _reversed_lines(file, ends.get(file)):
                    found += records.parse([line])
                    if len(found) == n:
                        break
            except FileNotFoundError:
                continue
            except OSError as exc:
                records.skip_file(file, exc)
            if len(found) == n:
                break
        recent += found
    return sorted(recent, key=_ts)[-n:] if n > 0 else []


def _reversed_lines(file: Path, end: int | None = None) -> Iterator[bytes | None]:
    """The lines of a file before ``end`` (default: its end) from last to first, reading blocks
    backwards. A line that spans blocks is kept as its pieces and joined once, so a long line
    costs one copy (not one per block); one over MAX_LINE_BYTES stands as None."""
    with safe.open_read(file) as f:
        pos = f.seek(0, os.SEEK_END) if end is None else end
        tail: list[bytes] = []  # the pieces of the line being read, last piece first
        tail_size = 0
        while pos > 0:
            size = min(_BLOCK, pos)
            pos -= size
            f.seek(pos)
            pieces = f.read(size).split(b"\n")
            if len(pieces) > 1:
                yield _joined(pieces[-1], tail, tail_size)
                yield from reversed(pieces[1:-1])
                tail, tail_size = [], 0
            first = pieces[0]
            tail_size += len(first)
            if tail_size <= MAX_LINE_BYTES:
                tail.append(first)
        yield _joined(b"", tail, tail_size)


def _joined(start: bytes, tail: list[bytes], tail_size: int) -> bytes | None:
    """A line from its first piece and the rest of it, read backwards (None: too long)."""
    if len(start) + tail_size > MAX_LINE_BYTES:
        return None
    return start + b"".join(reversed(tail)) if tail else start


class Mark(NamedTuple):
    """A :class:`Follower`'s place: the file (inode), the offset read to, the partial last line
    read so far and whether it is a line over MAX_LINE_BYTES being skipped."""

    inode: int
    offset: int
    rest: bytes
    overlong: bool


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
        self._overlong = False
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

    def mark(self) -> Mark | None:
        """Where this follower stands in the file open now (None before it is open): two followers
        of one file at one mark read the same lines next, so one may take the other's reading
        (``go_to``) instead of doing it again (the live page's streams share their work so)."""
        if self._file is None or self._late:
            return None
        return Mark(self._inode or 0, self._file.tell(), self._rest, self._overlong)

    def go_to(self, mark: Mark) -> None:
        """Stand where a follower of the same file stood (its ``mark()``), as if it had read the
        lines between: only within the file open now (the same inode), else nothing changes."""
        if self._file is None or self._late or mark.inode != self._inode:
            return
        self._file.seek(mark.offset)
        self._rest, self._overlong = mark.rest, mark.overlong

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def _open(self) -> IO[bytes] | None:
        """Open the live file (None while it does not exist)."""
        self._rest = b""
        try:
            file = self._file = safe.open_read(self.path)
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
            st = os.lstat(self.path)
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
        return files[:i], [p for p in files[i + 1 :] if p != self.path]

    def _complete(self, data: bytes) -> list[RawLine]:
        if self._overlong:  # the rest of a line over MAX_LINE_BYTES: read past, not kept
            end = data.find(b"\n")
            if end < 0:
                return []
            data, self._overlong = data[end + 1 :], False
            self.records.skip(_OVERLONG)
        complete, _, self._rest = (self._rest + data).rpartition(b"\n")
        if len(self._rest) > MAX_LINE_BYTES:
            self._rest, self._overlong = b"", True
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
