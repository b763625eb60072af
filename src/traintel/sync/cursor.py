"""How far a record has been synced to a target: ``sync-cursor.json`` beside the record.

One record (one rank's ``events.jsonl`` and its rotations) has one cursor file; in it, one entry
per target (the collector's endpoints), so that syncing to a second stack sends everything
again. An entry says, per signal, what the target acknowledged: for logs and spans the byte
offset (in the record's files read oldest first) past the last line it took, for metrics the
time of the last point, per segment. It is written atomically (a temporary file of a random name,
created exclusively, renamed over it: a link planted in a shared directory is never written
through) after every acknowledged batch, so an interrupted sync resumes where the collector stopped
acknowledging, and a repeated one sends nothing twice. A record that was replaced (its first
line differs) starts again from the beginning.

A lock beside it (``sync-cursor.json.lock``, ``flock``) keeps two syncs of one record apart.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from traintel.record import safe
from traintel.record.files import encode, read_json, read_json_checked
from traintel.record.format import RawLine

CURSOR_FILE = "sync-cursor.json"


class CursorError(OSError):
    """The cursor cannot be kept (an unwritable directory, another sync holding it)."""


@dataclass
class Position:
    """What one target acknowledged of one record."""

    logs: int = 0
    traces: int = 0
    #: segment (the byte offset of its ``run_start`` line) -> last point sent, Unix ms
    metrics: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"logs": self.logs, "traces": self.traces, "metrics": dict(self.metrics)}

    @classmethod
    def from_json(cls, value: Any) -> Position:
        if not isinstance(value, dict):
            return cls()
        metrics = value.get("metrics")
        return cls(
            _offset(value.get("logs")),
            _offset(value.get("traces")),
            {str(k): v for k, v in metrics.items() if _offset(v)}
            if isinstance(metrics, dict)
            else {},
        )


class Cursor:
    """A record's cursor file, held (locked) while a sync sends it."""

    def __init__(self, directory: Path, fingerprint: str, target: str) -> None:
        self.path = directory / CURSOR_FILE
        self.fingerprint = fingerprint
        self.target = target
        self._lock: IO[bytes] | None = None
        self._targets: dict[str, Any] = {}
        self.position = Position()
        #: the record was replaced since the last sync: everything is sent again
        self.reset = False

    def open(self) -> Cursor:
        """Lock the cursor and read it; a clear :class:`CursorError` when neither works."""
        lock = self.path.with_name(self.path.name + ".lock")
        try:  # not through a link, not in another user's directory (record.safe)
            self._lock = os.fdopen(safe.open_lock(lock), "r+b")
        except OSError as exc:
            raise CursorError(
                f"cannot keep a sync cursor beside the record ({lock}: "
                f"{exc.strerror or exc}); copy the run to a writable place "
                "and sync the copy"
            ) from None
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise CursorError(
                f"another traintel sync is sending {self.path.parent} "
                "(its lock is held); wait for it to finish"
            ) from None
        try:
            saved = read_json_checked(self.path)
        except OSError as exc:
            self.close()
            raise CursorError(
                f"cannot read the sync cursor {self.path}: {exc.strerror or exc}"
            ) from None
        self._targets = (
            dict(saved.get("targets", {}))
            if isinstance(saved, dict) and isinstance(saved.get("targets"), dict)
            else {}
        )
        entry = self._targets.get(self.target)
        if isinstance(entry, dict):
            if entry.get("fingerprint") == self.fingerprint:
                self.position = Position.from_json(entry.get("position"))
            else:
                self.reset = True
        return self

    def peek(self) -> Position:
        """The position, read without taking the lock (``--dry-run``)."""
        saved = read_json(self.path)
        targets = saved.get("targets") if isinstance(saved, dict) else None
        entry = targets.get(self.target) if isinstance(targets, dict) else None
        if isinstance(entry, dict) and entry.get("fingerprint") == self.fingerprint:
            return Position.from_json(entry.get("position"))
        return Position()

    def save(self) -> None:
        """Write the position atomically (temporary file, then rename)."""
        self._targets[self.target] = {
            "fingerprint": self.fingerprint,
            "updated": time.time(),
            "position": self.position.as_json(),
        }
        try:  # a temporary file of a random name, made exclusively (record.safe)
            safe.replace(self.path, encode({"version": 1, "targets": self._targets}, indent=True))
        except OSError as exc:
            raise CursorError(
                f"cannot write the sync cursor {self.path}: {exc.strerror or exc}"
            ) from None

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # drops the flock
            self._lock = None


def fingerprint(first: RawLine) -> str:
    """What identifies a record: its first ``run_start`` line."""
    return hashlib.sha256(
        orjson.dumps(first, option=orjson.OPT_SORT_KEYS, default=str)
    ).hexdigest()[:32]


def _offset(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
