"""The runs live in this process: one at a time by default.

A second ``traintel.init`` while a run is live (a re-run notebook cell, a script that forgot
``finish``) finishes the first with a warning, so that its hooks, lock and threads do not linger
behind the new one; ``reinit="create_new"`` keeps both (the newest is the current one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from traintel.run.settings import ReinitMode

log = logging.getLogger("traintel.run")


class LiveRun(Protocol):
    """What this registry needs of a run (``traintel.run.facade.Run``, which imports this module)."""

    @property
    def id(self) -> str: ...

    @property
    def finished(self) -> bool: ...

    def finish(self) -> None: ...


_live: list[LiveRun] = []
#: called with each run that ends (its last step), e.g. to take out the hooks it put into
#: torch (``traintel.run.watch``); a listener that fails is logged, never raised
on_end: list[Callable[[LiveRun], None]] = []


def newest() -> LiveRun | None:
    """The newest live run in this process, if any (integrations attach to it)."""
    return _live[-1] if _live else None


def make_room(reinit: ReinitMode) -> None:
    """Before a new run starts: finish the live ones unless ``reinit`` keeps them."""
    for gone in [run for run in _live if run.finished]:  # its finish() failed on the way
        _live.remove(gone)
    if reinit == "create_new":
        return
    for previous in list(_live):
        log.warning(
            "traintel.init: run %s is still live in this process; finishing it before "
            "starting a new one (reinit='create_new' keeps both)",
            previous.id,
        )
        previous.finish()


def started(run: LiveRun) -> None:
    _live.append(run)


def ended(run: LiveRun) -> None:
    if run in _live:
        _live.remove(run)
    for listener in list(on_end):
        try:
            listener(run)
        except Exception:
            log.warning("traintel: cleaning up after run %s failed", run.id, exc_info=True)
