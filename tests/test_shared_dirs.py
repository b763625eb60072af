"""A shared run directory cannot turn traintel against its user (issue 28, findings 5-8).

Run directories live on cluster file systems where others can write, and run ids are
predictable (SLURM job ids). Each test plants what a second user would, as that user: files are
made by ``setpriv`` under uid 65534 (nobody), so a test run as root proves it too (root's own
files would not show an ownership check). What each plants aims at a victim file of the user;
the test checks that the victim is untouched, nothing hangs, and memory stays bounded.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import traintel
from conftest import QUIET
from reliability_log import record
from traintel.core.redact import MAX_DEPTH, TOO_DEEP, Redactor
from traintel.record.lock import RecordLocked, RecordRefused
from traintel.sync.cursor import Cursor, CursorError
from traintel.sync.timeline import MAX_POINTS, metric_times

OTHER = 65534
SETPRIV = shutil.which("setpriv")
pytestmark = pytest.mark.skipif(
    SETPRIV is None or not hasattr(os, "geteuid"),
    reason="needs setpriv (util-linux) to act as a second user",
)


def as_other(*command: str) -> None:
    """Run ``command`` as uid/gid 65534: what a second user of the cluster can do."""
    assert SETPRIV is not None
    subprocess.run(
        [SETPRIV, f"--reuid={OTHER}", f"--regid={OTHER}", "--clear-groups", *command],
        check=True,
        timeout=30,
    )


@pytest.fixture
def shared() -> Iterator[Path]:
    """A world-writable directory with the sticky bit, as /tmp or a shared scratch space: a
    second user can plant files in it (tmp_path is under a 0700 directory, out of their reach)."""
    root = Path(tempfile.mkdtemp(prefix="traintel-shared-", dir="/tmp"))
    root.chmod(0o1777)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file of the user that planted links aim at (their ~/.bashrc, say)."""
    path = tmp_path / "precious"
    path.write_text("the user's own file\n")
    return path


def planted_by_other(path: Path) -> None:
    """The planted path is the second user's, not root's: the test proves what it says."""
    assert os.lstat(path).st_uid == OTHER


def premade_run(shared: Path, run_id: str = "r") -> Path:
    """The run directory the user's job will record into, made by the user ahead of time and
    open to the group, as job scripts on shared scratch often do."""
    run_dir = shared / run_id
    run_dir.mkdir()
    run_dir.chmod(0o1777)
    return run_dir


def start(shared: Path, run_id: str = "r", **options: object) -> traintel.Run:
    return traintel.init(project="t", dir=str(shared), run_id=run_id, **{**QUIET, **options})


# -- finding 6: the record writer follows planted links ----------------------------------------
def test_a_planted_lock_link_is_refused_not_truncated(shared, victim):
    run_dir = premade_run(shared)
    as_other("ln", "-s", str(victim), str(run_dir / ".lock"))
    planted_by_other(run_dir / ".lock")
    with pytest.raises(
        RecordRefused,
        match=r"\.lock is a symbolic link; traintel does not "
        r"follow it",
    ):
        start(shared)
    assert victim.read_text() == "the user's own file\n"


def test_a_planted_summary_tmp_link_is_not_written_through(shared, victim):
    run_dir = premade_run(shared)
    for name in ("summary.json.tmp", "config.json.tmp", "crash-report.json.tmp"):
        as_other("ln", "-s", str(victim), str(run_dir / name))
    planted_by_other(run_dir / "summary.json.tmp")
    run = start(shared)
    run.log(loss=1.0)
    run.finish()
    assert victim.read_text() == "the user's own file\n"
    summary = run_dir / "summary.json"
    assert stat.S_ISREG(os.lstat(summary).st_mode)  # not the planted link, renamed into place
    assert orjson.loads(summary.read_bytes())["status"] == "finished"
    record(
        "planted links in a pre-made run directory (as uid 65534): summary.json.tmp, "
        "config.json.tmp, crash-report.json.tmp -> the user's file; .lock -> the user's file; "
        ".lock a directory; the run directory another user's or a link",
        "nothing written through a link; the lock never silently off; another user's "
        "directory refused for writing",
        f"victim file unchanged ({victim.stat().st_size} bytes); summary.json a regular file "
        "(renamed from a random O_EXCL temporary); each planted .lock and foreign directory "
        "refuses init with RecordRefused naming it (tests/test_shared_dirs.py)",
    )


def test_a_lock_that_is_a_directory_does_not_silently_disable_locking(shared):
    run_dir = premade_run(shared)
    as_other("mkdir", str(run_dir / ".lock"))
    planted_by_other(run_dir / ".lock")
    with pytest.raises(
        RecordRefused,
        match=r"\.lock is a directory where traintel keeps a "
        r"file",
    ):
        start(shared)


def test_a_lock_file_of_another_user_is_refused(shared):
    run_dir = premade_run(shared)
    as_other("touch", str(run_dir / ".lock"))
    with pytest.raises(RecordRefused, match=rf"a file owned by uid {OTHER}"):
        start(shared)


def test_a_run_directory_of_another_user_is_refused_for_writing(shared, victim):
    as_other("mkdir", "-m", "0777", str(shared / "r"))
    planted_by_other(shared / "r")
    with pytest.raises(RecordRefused, match=rf"owned by uid {OTHER}, not by this user"):
        start(shared)
    assert not any((shared / "r").iterdir())


def test_a_run_directory_that_is_a_link_is_refused(shared, tmp_path):
    elsewhere = tmp_path / "theirs"
    elsewhere.mkdir()
    as_other("ln", "-s", str(elsewhere), str(shared / "r"))
    with pytest.raises(RecordRefused, match="symbolic link where the record directory belongs"):
        start(shared)
    assert not any(elsewhere.iterdir())


def test_planted_events_file_of_another_user_is_not_appended_to(shared, caplog):
    run_dir = premade_run(shared)
    as_other("sh", "-c", f"echo '{{}}' > {run_dir / 'events.jsonl'}")
    run = start(shared, resume=True)
    run.log(loss=1.0)
    run.finish()
    assert (run_dir / "events.jsonl").read_text() == "{}\n"
    assert f"a file owned by uid {OTHER}" in caplog.text


def test_the_lock_still_keeps_two_writers_apart(shared):
    """The O_EXCL lock file is a real lock: a second writer is refused while the first lives,
    and the lock left behind by a finished run is taken again."""
    run = start(shared, run_id="x")
    with pytest.raises(RecordLocked, match="being recorded by a live process"):
        start(shared, run_id="x", reinit="create_new")
    run.finish()
    start(shared, run_id="x", resume=True).finish()


# -- finding 5 and 7: sync's cursor and the files it reads -------------------------------------
def _record(shared: Path, run_id: str = "r") -> Path:
    run = start(shared, run_id=run_id, mode="offline")
    for step in range(3):
        run.log(loss=1.0 / (step + 1))
    run.finish()
    run.dir.chmod(0o1777)  # open to the group, as job scripts on shared scratch often do
    return run.dir


def _sync(*args: str, limit_mb: int = 2048) -> subprocess.CompletedProcess[str]:
    """``traintel sync`` as a user runs it, with its address space capped: a sync that tries
    to allocate without bound fails here instead of taking the machine."""
    return _capped(f"from traintel.cli import main\nmain({['sync', *args]!r})", limit_mb)


def test_sync_does_not_write_its_cursor_through_a_planted_tmp_link(shared, victim):
    run_dir = _record(shared)
    as_other("ln", "-s", str(victim), str(run_dir / "sync-cursor.json.tmp"))
    planted_by_other(run_dir / "sync-cursor.json.tmp")
    cursor = Cursor(run_dir, "f" * 32, "http://collector:4318/v1/metrics").open()
    cursor.position.logs = 10
    cursor.save()
    cursor.close()
    assert victim.read_text() == "the user's own file\n"
    assert stat.S_ISREG(os.lstat(run_dir / "sync-cursor.json").st_mode)
    assert Cursor(run_dir, "f" * 32, "http://collector:4318/v1/metrics").peek().logs == 10


def _capped(code: str, limit_mb: int = 1024) -> subprocess.CompletedProcess[str]:
    """Python code in a child whose address space is capped: what would read without end fails
    there, not on the machine."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_mb << 20, limit_mb << 20))

    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, preexec_fn=cap
    )


def _peak_child_mb() -> float:
    """The largest resident set of any child waited for so far, in MB (Linux: KiB)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def test_a_cursor_linked_to_dev_zero_is_refused(shared):
    run_dir = _record(shared)
    as_other("ln", "-s", "/dev/zero", str(run_dir / "sync-cursor.json"))
    opening = (
        "from pathlib import Path\nfrom traintel.sync.cursor import Cursor, CursorError\n"
        f"try:\n    Cursor(Path({str(run_dir)!r}), 'f' * 32, 't').open()\n"
        "except CursorError as exc:\n    print(exc)\n"
    )
    proc = _capped(opening)
    assert "sync-cursor.json: a symbolic link; traintel does not follow it" in proc.stdout, (
        proc.stderr[-1000:]
    )
    (run_dir / "sync-cursor.json").unlink()
    (run_dir / "sync-cursor.json.lock").unlink()
    as_other("mkfifo", "-m", "0666", str(run_dir / "sync-cursor.json.lock"))
    proc = _capped(opening)
    assert "a FIFO where traintel keeps a file" in proc.stdout, proc.stderr[-1000:]


def test_sync_of_a_record_that_is_a_fifo_does_not_hang(shared):
    run_dir = premade_run(shared)
    as_other("mkfifo", "-m", "0666", str(run_dir / "events.jsonl"))
    started = time.monotonic()
    proc = _sync("--dry-run", "--endpoint", "http://127.0.0.1:9", str(run_dir))
    took = time.monotonic() - started
    assert took < 60
    assert "a FIFO where traintel keeps a file" in proc.stderr
    record(
        "traintel sync over planted files (as uid 65534): events.jsonl a FIFO, "
        "sync-cursor.json -> /dev/zero, sync-cursor.json.tmp -> the user's file, a symlinked "
        "run directory",
        "no hang, no unbounded read, no write through a link, no other user's run sent",
        f"FIFO passed over with a note in {took:.1f} s (hung forever before); /dev/zero "
        "cursor refused under a 1 GiB address-space cap (MemoryError before); victim file "
        "unchanged; the linked run not listed, named alone refused (exit 1)",
    )


def test_sync_does_not_follow_a_planted_run_directory_link(shared, tmp_path):
    theirs = _record(tmp_path, "theirs")  # another user's run, elsewhere
    runs = shared / "runs"
    runs.mkdir()
    runs.chmod(0o1777)
    _record(runs, "mine")
    as_other("ln", "-s", str(theirs), str(runs / "planted"))
    proc = _sync("--dry-run", "--endpoint", "http://127.0.0.1:9", str(runs))
    assert proc.returncode == 0, proc.stderr
    assert "mine" in proc.stdout and "theirs" not in proc.stdout
    assert "symbolic link(s) in" in proc.stderr and "planted" in proc.stderr
    proc = _sync("--dry-run", "--endpoint", "http://127.0.0.1:9", str(runs / "planted"))
    assert proc.returncode == 1 and "is a symbolic link: not followed" in proc.stderr
    assert not (theirs / "sync-cursor.json").exists()


def test_sync_warns_about_another_users_record_and_keeps_no_cursor_in_it(shared):
    run_dir = _record(shared)
    os.chown(run_dir, OTHER, OTHER)  # the record is someone else's (a colleague's run)
    cursor = Cursor(run_dir, "f" * 32, "t")
    with pytest.raises(CursorError, match=rf"owned by uid {OTHER}"):
        cursor.open()
    proc = _sync("--dry-run", "--endpoint", "http://127.0.0.1:9", str(run_dir))
    assert f"owned by uid {OTHER}, not by this user" in proc.stderr


# -- finding 8: sync's memory whatever the times and depths in a record ---------------------
def _crafted(shared: Path, *lines: dict[str, object]) -> Path:
    """A record made by a real run, then given crafted lines (and an export mode under which
    sync trusts the export notes)."""
    run_dir = _record(shared)
    path = run_dir / "events.jsonl"
    raw = path.read_bytes().splitlines()
    first = orjson.loads(raw[0])
    first["export"] = "otlp"
    who = {key: first[key] for key in ("run", "run_id", "rank") if key in first}
    extra = [json.dumps({"ts": time.time(), **who, **line}).encode() for line in lines]
    path.write_bytes(b"\n".join([orjson.dumps(first), *raw[1:], *extra]) + b"\n")
    return run_dir


@pytest.mark.parametrize("at", [1e13, 1e300])
def test_an_export_far_in_the_future_does_not_exhaust_memory(shared, at):
    run_dir = _crafted(shared, {"type": "export", "signal": "metrics", "ok": False, "at": at})
    started = time.monotonic()
    proc = _sync("--dry-run", "--endpoint", "http://127.0.0.1:9", str(run_dir), limit_mb=1024)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "would send" in proc.stdout
    record(
        f'traintel sync of a record with an export note "at": {at:g}',
        "memory bounded whatever the times in a record",
        f"dry run in {took:.1f} s under a 1 GiB address-space cap, peak child RSS "
        f"{_peak_child_mb():.0f} MB (before: {(at - time.time()) / 15:.1e} points asked "
        "for, MemoryError)",
    )


def test_a_field_nested_500_deep_does_not_crash_sync(shared):
    deep: object = "leaf password=hunter2hunter2"
    for _ in range(500):
        deep = {"x": deep}
    run_dir = _crafted(
        shared,
        {
            "type": "event",
            "level": "warning",
            "event": "deep",
            "step": 1,
            "fields": {"nested": deep},
        },
    )
    proc = _sync("--dry-run", "--endpoint", "http://127.0.0.1:9", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RecursionError" not in proc.stderr
    record(
        "traintel sync of an event field nested 500 deep",
        "no RecursionError; the line sent",
        f"exit 0; redact.deep stops at {MAX_DEPTH} levels with {TOO_DEEP!r} (RecursionError "
        "in redact.deep before)",
    )


nested = st.recursive(
    st.text(max_size=8) | st.integers() | st.none(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=30,
)


@settings(max_examples=60, deadline=None)
@given(value=nested, depth=st.integers(0, 2000))
def test_redact_deep_is_bounded_at_any_depth(value, depth):
    for _ in range(depth):
        value = {"k": value} if depth % 2 else [value]
    out = Redactor().deep(value)
    level = 0
    while isinstance(out, (dict, list)) and out:
        out = next(iter(out.values())) if isinstance(out, dict) else out[0]
        level += 1
    assert level <= MAX_DEPTH + 1 or out == TOO_DEEP


times = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=200, deadline=None)
@given(
    start=st.floats(1e9, 2e9),
    span=st.floats(0, 1e8),
    interval=times,
    exports=st.lists(st.tuples(times, st.booleans()), max_size=20),
    mode=st.sampled_from([None, "otlp", "offline"]),
)
def test_metric_times_are_bounded_whatever_the_times(start, span, interval, exports, mode):
    ms = metric_times(mode, interval, start, start + span, exports)
    assert len(ms) <= MAX_POINTS + len(exports) + 2


# -- every kind of planted path against every way traintel opens one (hypothesis) -------------
KINDS = [
    "missing",
    "regular",
    "other-users-file",
    "directory",
    "fifo",
    "link-to-victim",
    "dangling-link",
    "link-to-dir",
    "link-to-dev-zero",
]


def _plant(path: Path, kind: str, victim: Path) -> None:
    if kind == "regular":
        path.write_bytes(b"{}")
    elif kind == "other-users-file":
        path.write_bytes(b"{}")
        os.chown(path, OTHER, OTHER)
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "link-to-victim":
        path.symlink_to(victim)
    elif kind == "dangling-link":
        path.symlink_to(victim.parent / "nowhere")
    elif kind == "link-to-dir":
        path.symlink_to(victim.parent)
    elif kind == "link-to-dev-zero":
        path.symlink_to("/dev/zero")


@settings(max_examples=80, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    how=st.sampled_from(["read", "append", "replace", "lock", "read_json", "write_json"]),
)
def test_no_planted_path_is_written_through_or_hangs(kind, how):
    from traintel.record import safe
    from traintel.record.files import read_json, write_json

    root = Path(tempfile.mkdtemp(prefix="traintel-planted-"))
    try:
        victim = root / "victim"
        victim.write_bytes(b"precious")
        directory = root / "run"
        directory.mkdir()
        path = directory / "summary.json"
        _plant(path, kind, victim)
        outcome: object
        try:
            if how == "read":
                with safe.open_read(path) as file:
                    outcome = file.read(100)
            elif how == "append":
                with safe.open_append(path) as file:
                    outcome = file.write(b"x")
            elif how == "replace":
                outcome = safe.replace(path, b"new")
            elif how == "lock":
                os.close(safe.open_lock(path))
                outcome = "locked"
            elif how == "read_json":
                outcome = read_json(path)
            else:
                outcome = write_json(path, {"a": 1}, quiet=True)
        except FileNotFoundError:
            outcome = "missing"
        except safe.UnsafePath as exc:
            outcome = exc
            assert exc.filename == str(path) and exc.strerror
        assert victim.read_bytes() == b"precious"
        assert not (root / "nowhere").exists()
        fine = kind in ("missing", "regular") or (
            kind == "other-users-file" and how in ("read", "read_json")
        )
        if how in ("replace", "write_json") and kind in (
            "link-to-victim",
            "dangling-link",
            "link-to-dir",
            "link-to-dev-zero",
            "other-users-file",
            "fifo",
        ):
            fine = True  # renamed over: the planted entry is replaced, nothing written through
        if not fine:
            assert isinstance(outcome, safe.UnsafePath) or outcome in (None, False), (
                kind,
                how,
                outcome,
            )
        if how in ("replace", "write_json") and fine and kind != "missing":
            assert stat.S_ISREG(os.lstat(path).st_mode)
    finally:
        shutil.rmtree(root, ignore_errors=True)
