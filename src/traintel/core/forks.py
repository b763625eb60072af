"""Resets after ``fork()``: a forked child (a data-loader worker) inherits the run's objects but
not their threads, and must never write the parent's record, export its telemetry or finish its
run. Each background worker registers its own reset here, held weakly, as the OpenTelemetry SDK's
batch processors do.

``os.register_at_fork`` cannot unregister, so this module registers with it once per process
and keeps the resets in its own table, which an object leaves when it dies: a registration per worker
(four per run) grew the process by ~24 KB and 42 objects per run, ~24 MB per 1,000 trials.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
#: a run's recording calls, no-ops in a forked child
RECORDING = ("log", "log_values", "log_eval", "event", "error")

_lock = threading.Lock()
#: the live objects' resets, in registration order; an entry leaves when its object dies
_resets: dict[int, weakref.WeakMethod[Callable[[], None]]] = {}
_registered = False


def _after_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork
    for weak in list(_resets.values()):
        bound = weak()
        if bound is not None:
            bound()


def _gone(weak: weakref.WeakMethod[Callable[[], None]]) -> None:
    _resets.pop(id(weak), None)  # atomic: safe from the collector, in any thread


def reset_in_child(method: Callable[[], None]) -> None:
    """Call the bound ``method`` in every child forked from now on, while its object lives."""
    global _registered
    if not hasattr(os, "register_at_fork"):
        return
    weak = weakref.WeakMethod(method, _gone)
    _resets[id(weak)] = weak
    with _lock:
        if not _registered:
            os.register_at_fork(after_in_child=_after_in_child)
            _registered = True


def pending() -> int:
    """How many live objects have a reset registered (for tests)."""
    return len(_resets)


def ignore_in_child(run: object, run_id: str) -> None:
    """In a forked child, ``run``'s recording calls (:data:`RECORDING`, ``track``) become
    no-ops that say so once: the run is the parent's, and what the child records would never be
    written (1.2 M calls used to queue 1 M items, 411 MB, silently). ``run.track`` still yields
    every batch. A child that wants a record calls ``traintel.init()`` for a run of its own."""
    said: list[bool] = []
    parent = os.getppid()

    def ignored(*args: object, **kwargs: object) -> None:
        if not said:
            said.append(True)
            logging.getLogger("traintel.run").warning(
                "traintel: run %s belongs to the parent process (pid %s); calls in this forked "
                "child (pid %s) are ignored. Call traintel.init() in the child for a run of its "
                "own",
                run_id,
                parent,
                os.getpid(),
            )

    def track(iterable: Iterable[T], total: int | None = None) -> Iterator[T]:
        ignored()
        return iter(iterable)

    for name in (*RECORDING, "track"):
        setattr(run, name, track if name == "track" else ignored)


def discard(item: object) -> None:
    """Where a forked child's record items go: nowhere (the writer is the parent's)."""
