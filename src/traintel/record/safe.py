"""Files in a run directory, opened so that a shared directory cannot turn them against the user.

Run directories live on shared cluster file systems, and run ids are predictable (SLURM job ids):
whoever can write into a run directory before the run starts can plant a symbolic link where
traintel will write (``summary.json.tmp`` -> the user's ``~/.bashrc``), a FIFO where it will read
(a sync that hangs forever), or a link to ``/dev/zero`` (a read that never ends). So every file
traintel writes or reads in a run directory is opened here:

* through a descriptor of its directory opened without following a link (``O_NOFOLLOW``), and
  then by name relative to it, itself without following a link;
* checked to be a regular file once open (``fstat``): a FIFO, a device, a socket or a directory is
  refused with a message naming it (a FIFO is opened non-blocking, so the check itself never
  hangs);
* for writing, in a directory and into a file owned by the user (a planted file of another uid is
  refused, not appended to);
* replaced atomically through a temporary file created exclusively (``O_EXCL``) under a random
  name, then renamed over the target: a rename replaces a link, it never writes through it.

What is refused raises :class:`UnsafePath`, an ``OSError``: every caller already handles an
unwritable or unreadable file (a warning, a count, a skipped file), and this is one more reason.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class UnsafePath(OSError):
    """A path in a run directory that traintel refuses to open: a symbolic link, a special file,
    a directory where a file belongs, or a file or directory of another user."""


def _what(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def _refuse(path: Path, what: str, code: int = errno.EINVAL) -> UnsafePath:
    return UnsafePath(
        code,
        f"{what}; traintel does not follow it, read it or write through "
        "it (someone else may have put it there): remove it, or use "
        "another run directory",
        str(path),
    )


def _link_error(exc: OSError, path: Path) -> OSError:
    """``O_NOFOLLOW`` on a link fails with ELOOP (ENOTDIR for ``O_DIRECTORY`` on Linux when the
    link points at a file): say what it was."""
    if exc.errno in (errno.ELOOP, errno.EMLINK):
        return _refuse(path, "a symbolic link", errno.ELOOP)
    if exc.errno in (errno.EISDIR, errno.ENXIO, errno.ETXTBSY):  # a directory, a FIFO for write
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            return exc
        if not stat.S_ISREG(mode):
            return _refuse(path, f"{_what(mode)} where traintel keeps a file")
    if exc.errno == errno.ENOTDIR:
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            return exc
        return _refuse(path, f"{_what(mode)} where a directory belongs", errno.ENOTDIR)
    return exc


def owner_problem(st: os.stat_result) -> str | None:
    """Why a file or directory with this status is not the user's own (None when it is)."""
    uid = os.geteuid() if hasattr(os, "geteuid") else None
    if uid is None or st.st_uid == uid:
        return None
    return f"owned by uid {st.st_uid}, not by this user (uid {uid})"


def open_dir(directory: Path, *, owned: bool = False) -> int:
    """A descriptor of ``directory``, which must not be a link (nor, with ``owned``, belong to
    another user)."""
    try:
        fd = os.open(directory, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC)
    except OSError as exc:
        raise _link_error(exc, directory) from None
    if owned:
        problem = owner_problem(os.fstat(fd))
        if problem:
            os.close(fd)
            raise UnsafePath(
                errno.EPERM,
                f"{problem}: traintel writes only into a run "
                "directory of its own user; give this run another run_id or dir",
                str(directory),
            )
    return fd


def _checked(fd: int, path: Path, *, owned: bool) -> int:
    """``fd`` once it is known to be a regular file (of the user, with ``owned``); closed and
    refused otherwise."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(path, f"{_what(st.st_mode)} where traintel keeps a file")
        problem = owner_problem(st) if owned else None
        if problem:
            raise _refuse(path, f"a file {problem}", errno.EPERM)
        if _NONBLOCK:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_fd(path: Path, flags: int, mode: int = 0o644, *, owned: bool = False) -> int:
    """``os.open`` of a file in a run directory, neither the directory nor the file followed
    when a link, the file refused unless regular (and the user's own, with ``owned``)."""
    path = Path(path)
    directory = open_dir(path.parent, owned=owned)
    try:
        try:
            fd = os.open(
                path.name, flags | _NOFOLLOW | _NONBLOCK | _CLOEXEC, mode, dir_fd=directory
            )
        except OSError as exc:
            raise _link_error(exc, path) from None
    finally:
        os.close(directory)
    return _checked(fd, path, owned=owned)


def open_read(path: Path) -> BinaryIO:
    """A run directory's file, for reading (see :func:`open_fd`)."""
    return os.fdopen(open_fd(path, os.O_RDONLY), "rb")


def open_append(path: Path) -> BinaryIO:
    """A run directory's file of the user, for appending (created when missing)."""
    fd = open_fd(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, owned=True)
    return os.fdopen(fd, "ab", buffering=0)


def open_lock(path: Path) -> int:
    """A lock file of the user's, read-write (created when missing): a directory or a link in
    its place is refused, so that locking is never silently disabled."""
    try:  # made here, exclusively: nobody else's file
        return open_fd(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, owned=True)
    except FileExistsError:  # a lock left by an earlier run (or planted): checked
        return open_fd(path, os.O_RDWR, owned=True)


def read_bytes(path: Path, limit: int) -> bytes:
    """The content of a small file (a JSON document), refused beyond ``limit`` bytes."""
    with open_read(path) as file:
        size = os.fstat(file.fileno()).st_size
        if size > limit:
            raise UnsafePath(
                errno.EFBIG,
                f"{size} bytes, more than the {limit} traintel reads in a file of this kind",
                str(path),
            )
        data = file.read(limit + 1)
    if len(data) > limit:
        raise UnsafePath(
            errno.EFBIG,
            f"more than the {limit} bytes traintel reads in a file of this kind",
            str(path),
        )
    return data


def replace(path: Path, data: bytes) -> None:
    """Write ``path`` atomically: a temporary file created exclusively under a random name in the
    same directory (which must be the user's, not a link), then renamed over ``path`` (a link
    there is replaced, never written through; a directory there is refused by the rename)."""
    path = Path(path)
    directory = open_dir(path.parent, owned=True)
    temporary = f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        fd = os.open(
            temporary,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
            0o644,
            dir_fd=directory,
        )
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            try:
                os.replace(temporary, path.name, src_dir_fd=directory, dst_dir_fd=directory)
            except OSError as exc:  # a directory in its place (EISDIR, ENOTEMPTY, EEXIST)
                if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                    raise _refuse(path, "a directory where traintel keeps a file") from None
                raise
        except BaseException:
            try:
                os.unlink(temporary, dir_fd=directory)
            except OSError:
                pass
            raise
    finally:
        os.close(directory)


def is_link(path: Path) -> bool:
    """Whether ``path`` is a symbolic link (False when it cannot be known)."""
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False
