"""Resets after ``fork()``: a forked child (a data-loader worker) inherits the run's objects but
not their threads, and must never write the parent's record, export its telemetry or finish its
run. Each background worker registers its own reset here, held weakly, as the OpenTelemetry SDK's
batch processors do (``os.register_at_fork`` cannot unregister, so dead objects are skipped)."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable


def reset_in_child(method: Callable[[], None]) -> None:
    """Call the bound ``method`` in every child forked from now on, while its object lives."""
    if not hasattr(os, "register_at_fork"):
        return
    weak = weakref.WeakMethod(method)

    def after_in_child() -> None:
        bound = weak()
        if bound is not None:
            bound()

    os.register_at_fork(after_in_child=after_in_child)
