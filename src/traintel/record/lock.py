"""One live writer per record: an exclusive ``flock`` on ``<record>/.lock`` for the life of the
run.

Two live processes appending to one ``events.jsonl`` interleave their lines and overwrite each
other's summary.json; a run id claimed twice (a job started twice, a resumed run whose old
process still lives) is refused at ``traintel.init`` instead. The kernel drops the lock when the
process ends in any way (SIGKILL included), so a crashed run never leaves a stale lock behind;
the file keeps who holds it (pid, host, time) for the refusal's message.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from traintel.core.forks import reset_in_child

try:
    import fcntl
except ImportError:  # Windows: no flock; records are not shared between processes there
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"
#: how long ``acquire`` retries: a reader's probe (``is_held``) holds the lock for microseconds
ACQUIRE_S = 1.0


class RecordLocked(RuntimeError):
    """Another live process records this run."""


class RecordLock:
    """The exclusive lock of one record directory, held from :meth:`acquire` to :meth:`release`
    (a forked child closes its copy: the parent holds the lock)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, run_id: str) -> RecordLock:
        """Take the lock, or raise :class:`RecordLocked` naming the process that holds it. A
        directory that cannot be written has no lock: the record writer says so and counts what
        it could not write, and training goes on."""
        if fcntl is None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            return self
        deadline = time.monotonic() + ACQUIRE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RecordLocked(
                f"traintel.init: run {run_id!r} is being recorded by a live process "
                f"({holder}) in {self.path.parent}; one record has one writer. Stop that "
                "process, or give this one another run_id (or dir)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        self._fd = fd
        reset_in_child(self._after_fork_in_child)
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    @staticmethod
    def is_held(directory: Path) -> bool | None:
        """Whether a live process records into ``directory`` now (a shared lock is refused);
        None when that cannot be known here (no lock file: a record from before locks, or a
        filesystem without them)."""
        if fcntl is None:
            return None
        try:
            fd = os.open(directory / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        except BlockingIOError:
            return True
        except OSError:
            return None
        finally:
            os.close(fd)

    def _after_fork_in_child(self) -> None:
        """A forked child (a data-loader worker) must not keep the parent's record locked after
        the parent is gone: it closes its copy of the descriptor."""
        self.release()
