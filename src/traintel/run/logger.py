"""traintel's place in stdlib ``logging``: the ``traintel`` logger tree and the console handler
(the OpenTelemetry SDK's export lines are ``traintel.export.health``'s).

While a run is active the tree's one handler is the run's event pipeline
(``traintel.record.pipeline``): component loggers (``run.logger("data")``) and the run's own
events reach the record, OTLP logs, the live ``/events`` stream and the console through it.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

from traintel.core.forks import reset_in_child

if TYPE_CHECKING:
    from rich.console import Console

    from traintel.run.userlogs import UserLogs

ROOT = "traintel"


class LoggerTree:
    """The ``traintel`` logger tree during a run: its one handler is the run's event pipeline, at
    the run's level, not propagating to the application's root logger; what was there comes
    back when the run ends. ``console`` is the pipeline's console handler, whose level follows
    debug mode."""

    def __init__(
        self,
        pipeline: logging.Handler,
        level: str,
        console: logging.Handler | None,
        user: UserLogs | None = None,
    ) -> None:
        self.pipeline = pipeline
        #: the user's own loggers' lines, taken into the record too (``traintel.run.userlogs``)
        self.user = user
        self.level = level
        self.console = console
        self._saved: tuple[int, bool, list[logging.Handler]] | None = None

    def install(self) -> None:
        root = logging.getLogger(ROOT)
        self._saved = (root.level, root.propagate, list(root.handlers))
        root.handlers = [self.pipeline]
        root.setLevel(self.level)
        root.propagate = False
        if self.user is not None:
            self.user.install()
        # in a forked child traintel's logs go where the child sends them, not to the record
        reset_in_child(self.restore)

    def restore(self) -> None:
        if self.user is not None:
            self.user.uninstall()
        if self._saved is not None:
            root = logging.getLogger(ROOT)
            root.setLevel(self._saved[0])
            root.propagate = self._saved[1]
            root.handlers = self._saved[2]
            self._saved = None

    def set_debug(self, enabled: bool) -> None:
        """traintel's logs at DEBUG (or back at the run's level), the console's too."""
        logging.getLogger(ROOT).setLevel(logging.DEBUG if enabled else self.level)
        if self.console is not None:
            self.console.setLevel(logging.DEBUG if enabled else logging.INFO)

    @property
    def debug(self) -> bool:
        return logging.getLogger(ROOT).level == logging.DEBUG


def console_handler(console: Console | None = None) -> logging.Handler:
    """Rich, coloured lines on a terminal; plain timestamped lines in batch-job logs.

    ``console`` is the progress bar's rich Console while one is shown: lines go through it so
    that they scroll above the bar rather than through it.
    """
    if console is not None or sys.stderr.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(
            console=console or Console(stderr=True),
            show_path=False,
            markup=False,
            rich_tracebacks=False,
        )
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler
