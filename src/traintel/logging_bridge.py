"""traintel's place in stdlib ``logging``: the ``traintel`` logger tree, the console handler,
and the OpenTelemetry SDK's export errors kept to one line every few minutes.

While a run is active the tree's one handler is the run's event pipeline
(``traintel.record.pipeline``): component loggers (``run.logger("data")``) and the run's own
events reach the record, OTLP logs, the live ``/events`` stream and the console through it.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

ROOT = "traintel"


class LoggerTree:
    """The ``traintel`` logger tree during a run: its one handler is the run's event pipeline, at
    the run's level, not propagating to the application's root logger; what was there comes
    back when the run ends. ``console`` is the pipeline's console handler, whose level follows
    debug mode."""

    def __init__(self, pipeline: logging.Handler, level: str,
                 console: logging.Handler | None) -> None:
        self.pipeline = pipeline
        self.level = level
        self.console = console
        self._saved: tuple[int, bool, list[logging.Handler]] | None = None

    def install(self) -> None:
        root = logging.getLogger(ROOT)
        self._saved = (root.level, root.propagate, list(root.handlers))
        root.handlers = [self.pipeline]
        root.setLevel(self.level)
        root.propagate = False

    def restore(self) -> None:
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

        handler: logging.Handler = RichHandler(console=console or Console(stderr=True),
                                               show_path=False, markup=False,
                                               rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


class EveryNSeconds(logging.Filter):
    """Lets one record through per interval: a dead collector is reported, not repeated."""

    def __init__(self, interval: float = 300.0) -> None:
        super().__init__()
        self.interval = interval
        self._last = -float("inf")

    def filter(self, record: logging.LogRecord) -> bool:
        if any(part in str(record.msg) for part in _SHUTDOWN_CHATTER):
            return False  # our bounded shutdown aborting retries on purpose
        now = time.monotonic()
        if now - self._last < self.interval:
            return False
        self._last = now
        original = _summary(record)
        record.msg = ("traintel: telemetry export failed (%s); retrying in the background, "
                      "the local run record is complete. Check the collector with "
                      "`traintel doctor`.")
        record.args = (original,)
        record.exc_info = None
        return True


def _summary(record: logging.LogRecord) -> str:
    try:
        return str(record.msg % record.args if record.args else record.msg)[:300]
    except (TypeError, ValueError):
        return str(record.msg)[:300]


_SHUTDOWN_CHATTER = ("already shutdown", "Shutdown in progress", "max retries or shutdown")
_EXPORT_LOGGERS = ("opentelemetry.exporter.otlp.proto.http",
                   "opentelemetry.exporter.otlp.proto.http.metric_exporter",
                   "opentelemetry.exporter.otlp.proto.http.trace_exporter",
                   "opentelemetry.exporter.otlp.proto.http._log_exporter",
                   "opentelemetry.sdk._shared_internal",
                   "opentelemetry.sdk.metrics._internal.export")
_quieted = False


def quiet_export_errors() -> None:
    """Rate-limit the SDK's per-attempt export errors to one friendly line every 5 minutes."""
    global _quieted
    if _quieted:
        return
    _quieted = True
    shared = EveryNSeconds()
    for name in _EXPORT_LOGGERS:
        logging.getLogger(name).addFilter(shared)
