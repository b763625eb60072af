"""The user's own ``logging`` lines in the run's record and OTLP logs, with the run, step and
trace ids, as W&B and MLflow users expect of a run tracker.

By default: WARNING and above from every logger, and INFO and above from the script's own
loggers (``__main__`` and the names given to ``traintel.init(log_loggers=[...])``, with their
children). Library noise (a dependency's INFO) stays out. The user's handlers are left as
they are, and nothing is printed twice: captured lines skip traintel's console (the user's own
handlers print them, as they did before the run).

How, within stdlib ``logging``: a handler on the root logger takes what reaches it (the records
the user's configuration lets through). INFO from the script's loggers is often below the level
the user configured (the root logger's default is WARNING): there a filter on each of those
loggers takes the records below the level the user set, records them and stops them, so the
user's handlers see exactly what they saw before. ``traintel.init(capture_logs=False)`` turns
all of it off; the ``traintel`` logger tree is the run's own and never passes here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from traintel.core.state import RunState
    from traintel.record.pipeline import Pipeline
    from traintel.run.settings import Settings

#: the script's own logger, whatever file it is
MAIN = "__main__"
#: loggers that are the run's own machinery: traintel's tree (it does not propagate; a copy
#: might) and the OpenTelemetry SDK's (``traintel.export.health`` reports its export lines, and
#: taking them would feed the OTLP log exporter its own complaints)
OWN = ("traintel", "opentelemetry")  # traintel.run.logger.ROOT (it imports this module)


_inside = threading.local()


class UserLogs(logging.Handler):
    """Installed on the root logger (and as a filter on the script's loggers) during a run;
    ``record`` gets each record taken, once."""

    def __init__(
        self, record: Callable[[logging.LogRecord], None], names: Sequence[str] = ()
    ) -> None:
        super().__init__(logging.INFO)
        self._record = record
        self.names = (MAIN, *names)
        #: script loggers whose level we lowered to INFO: name -> the level the user had set
        self._lowered: dict[str, int] = {}

    # -- the root handler: what the user's configuration lets through -----------------------
    def emit(self, record: logging.LogRecord) -> None:
        name = record.name
        if (
            not any(name == own or name.startswith(own + ".") for own in OWN)
            and (record.levelno >= logging.WARNING or self._scripts(name))
            and not getattr(_inside, "taking", False)
        ):
            _inside.taking = True  # a line logged while one is taken is not taken again
            try:
                self._record(record)
            finally:
                _inside.taking = False
        last = logging.lastResort
        if (
            last is not None
            and record.levelno >= last.level
            and not _other_handlers(record.name, self)
        ):
            # no handler of the user's would have printed it: Python's last resort prints
            # warnings to stderr then, and this handler must not take that away
            last.handle(record)

    def _scripts(self, name: str) -> bool:
        return any(name == n or name.startswith(n + ".") for n in self.names)

    # -- the script loggers: INFO below the level the user configured ----------------------
    def below(self, record: logging.LogRecord) -> bool:
        """A filter of a script logger: a record below the level the user's configuration has
        for it is taken here and stopped (their handlers would not have seen it)."""
        if record.levelno < self._user_level(record.name):
            if record.levelno >= logging.INFO and not getattr(_inside, "taking", False):
                _inside.taking = True
                try:
                    self._record(record)
                finally:
                    _inside.taking = False
            return False
        return True

    def _user_level(self, name: str) -> int:
        """The effective level the user's configuration gives logger ``name``: its levels
        before this capture lowered any (``getEffectiveLevel`` with the saved levels)."""
        logger: logging.Logger | None = logging.getLogger(name)
        while logger is not None:
            level = self._lowered.get(logger.name, logger.level)
            if level:
                return level
            logger = logger.parent
        return logging.WARNING

    def install(self) -> None:
        """On the root logger, and as a filter on each script logger whose level is above
        INFO (set to INFO meanwhile)."""
        logging.getLogger().addHandler(self)
        existing = [n for n in logging.Logger.manager.loggerDict if self._scripts(n)]
        for name in dict.fromkeys([*self.names, *existing]):  # children made later: see docs
            logger = logging.getLogger(name)
            if logger.getEffectiveLevel() > logging.INFO:
                self._lowered[name] = logger.level
                logger.addFilter(self.below)
        for name in self._lowered:  # after every level was read
            logging.getLogger(name).setLevel(logging.INFO)

    def uninstall(self) -> None:
        logging.getLogger().removeHandler(self)
        for name, level in self._lowered.items():
            logger = logging.getLogger(name)
            logger.removeFilter(self.below)
            if logger.level == logging.INFO:  # unless the user set it since
                logger.setLevel(level)
        self._lowered.clear()


def _other_handlers(name: str, mine: logging.Handler) -> bool:
    """Whether a logger on the way from ``name`` to the root has a handler besides ``mine``
    (``Logger.callHandlers``' walk)."""
    logger: logging.Logger | None = logging.getLogger(name)
    while logger is not None:
        if any(h is not mine for h in logger.handlers):
            return True
        logger = logger.parent if logger.propagate else None
    return False


def for_run(
    settings: Settings,
    pipeline: Pipeline,
    state: RunState,
    error: Callable[[BaseException, dict[str, object]], object],
) -> UserLogs | None:
    """The run's capture of the user's logging (``capture_logs``, ``log_loggers``), or None.
    ``logger.exception(...)`` (an ERROR with an exception) is recorded as ``run.error`` records
    an exception, classified and counted (summary.json, ``traintel logs errors``), with the
    logger and its message as context; every other record is a ``log`` line."""
    if not settings.capture_logs:
        return None

    def take(record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and record.levelno >= logging.ERROR:
            try:
                error(exc, {"logger": record.name, "message": record.getMessage()})
                return
            except Exception:  # the run is not ready for errors yet: a log line then
                pass
        pipeline.foreign(record, state.step)

    return UserLogs(take, settings.log_loggers)
