"""One optimizer step pre-hook per process, shared by every run that watches a model.

torch keeps its global optimizer hooks in an ``OrderedDict`` and iterates over it at every
``optimizer.step()``; a hook that removes itself from inside that iteration (a finished run's
watch, on the next step) raised ``RuntimeError: OrderedDict mutated during iteration`` in the
*next* run's first step: in a sweep with ``run.watch``, trial 0 trained and every later trial
failed with 0 steps. Removing it from the run's end is no cure either: the end can come from
inside a step (a user's hook, a signal) or from another thread while torch iterates.

So traintel registers one dispatcher with torch, at the first ``watch`` in the process, and
never takes it out of torch's dictionary; each run's callback lives in a tuple here that is
replaced, never mutated, so that a run adds and removes its callback at any moment, from any
thread, even from inside a step. With no run watching, the dispatcher is one Python call per
optimizer step that does nothing (~0.1 µs); the process keeps exactly one traintel hook however
many runs come and go.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

#: what a callback receives: the optimizer and the arguments of its ``step()``
StepCallback = Callable[[Any, Any, Any], None]

_lock = threading.Lock()
_callbacks: tuple[StepCallback, ...] = ()
_torch_handle: Any = None


def _new_lock_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):  # once per process
    os.register_at_fork(after_in_child=_new_lock_in_child)


def _dispatch(optimizer: Any, args: Any, kwargs: Any) -> None:
    for callback in _callbacks:  # a snapshot: a removal during the step takes effect next step
        callback(optimizer, args, kwargs)


class Registration:
    """A callback's place in the dispatcher; ``remove()`` is safe anywhere, and idempotent."""

    def __init__(self, callback: StepCallback) -> None:
        self._callback: StepCallback | None = callback

    @property
    def active(self) -> bool:
        return self._callback is not None

    def remove(self) -> None:
        global _callbacks
        with _lock:
            callback, self._callback = self._callback, None
            if callback is not None:
                _callbacks = tuple(c for c in _callbacks if c is not callback)


def on_optimizer_step(callback: StepCallback) -> Registration:
    """Call ``callback(optimizer, args, kwargs)`` before every ``optimizer.step()`` in this
    process, until the returned registration is removed."""
    global _callbacks, _torch_handle
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    with _lock:
        if _torch_handle is None:
            _torch_handle = register_optimizer_step_pre_hook(_dispatch)
        _callbacks = (*_callbacks, callback)
    return Registration(callback)


def active() -> int:
    """How many callbacks are registered now (for tests and doctors)."""
    return len(_callbacks)
