"""One live writer per record: an exclusive ``flock`` on ``<record>/.lock`` for the life of the
run.

Two live processes appending to one ``events.jsonl`` interleave their lines and overwrite each
other's summary.json; a run id claimed twice (a job started twice, a resumed run whose old
process still lives) is refused at ``traintel.init`` instead. The kernel drops the lock when the
process ends in any way (SIGKILL included), so a crashed run never leaves a stale lock behind;
the file keeps who holds it (pid, host, time) for the refusal's message.

In a shared run directory the lock must not be turned: ``.lock`` is created exclusively
(``O_EXCL``) or, when it is there, opened without following a link and checked to be a regular
file of this user (``traintel.record.safe``). A planted link, directory or FIFO in its place, or
a record directory of another user, refuses the run at ``init`` with a message naming it: it
never silently goes unlocked (two writers would interleave in one record) nor writes through a
link. Where ``flock`` is not supported (some network file systems), the holder the file names is
checked instead: a live process of this host keeps the record.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from traintel.core.forks import reset_in_child
from traintel.record import safe

try:
    import fcntl
except ImportError:  # Windows: no flock; records are not shared between processes there
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"
#: how long ``acquire`` retries: a reader's probe (``is_held``) holds the lock for microseconds
ACQUIRE_S = 1.0


class RecordLocked(RuntimeError):
    """Another live process records this run."""


class RecordRefused(RecordLocked):
    """The record directory or its lock file is not what traintel made: a link, a special file,
    or another user's; the run is refused rather than written unlocked or through a link."""


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
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if safe.is_link(directory):  # mkdir(exist_ok) accepts a link to a directory
                raise safe.UnsafePath(
                    0, "a symbolic link where the record directory belongs", str(directory)
                )
            fd = safe.open_lock(self.path)
        except safe.UnsafePath as exc:
            raise RecordRefused(
                f"traintel.init: refusing to record run {run_id!r}: {exc.filename} is "
                f"{exc.strerror}"
            ) from None
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
            except OSError:  # no flock here (ENOLCK, EOPNOTSUPP): the holder the file names
                if not _holder_alive(fd):
                    break
            holder = _holder(fd) or "another process"
            os.close(fd)
            raise RecordLocked(
                f"traintel.init: run {run_id!r} is being recorded by a live process "
                f"({holder}) in {self.path.parent}; one record has one writer. Stop that "
                "process, or give this one another run_id (or dir)"
            ) from None
        try:  # who holds it, for a refusal's message; a full disk leaves it unsaid, still held
            os.ftruncate(fd, 0)
            os.write(
                fd,
                f"pid {os.getpid()} on {socket.gethostname()} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode(),
            )
        except OSError:
            pass
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
            fd = safe.open_fd(directory / LOCK_FILE, os.O_RDONLY)
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


def _holder(fd: int) -> str:
    """What the lock file says of its holder ("pid N on HOST since ...")."""
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def _holder_alive(fd: int) -> bool:
    """Where ``flock`` is not supported: whether the process the lock file names lives on this
    host (one on another host, or a file that names none, cannot be checked: not held)."""
    words = _holder(fd).split()
    if (
        len(words) < 4
        or words[0] != "pid"
        or not words[1].isdigit()
        or words[3] != socket.gethostname()
    ):
        return False
    pid = int(words[1])
    if pid == os.getpid():
        return True  # this process records it already
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # alive, another user's
    return True
