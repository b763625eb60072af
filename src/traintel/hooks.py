"""A run's hooks into the process: SIGTERM (preemption, a time limit) finishes it as
interrupted, SIGUSR1 toggles debug logging, SIGXFSZ is ignored (a file-size limit must fail a
write, not kill training), an uncaught exception finishes it as failed, and interpreter exit
finishes it (the traceback printed redacted). Each is chained to what was installed before and
removed when the run ends; a forked child drops them, so that it never finishes the parent's
run."""

from __future__ import annotations

import atexit
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

from .forks import reset_in_child

SignalHandler = Callable[[int, "FrameType | None"], Any]


class ProcessHooks:
    def __init__(self, *, on_sigterm: Callable[[], None], on_sigusr1: Callable[[], None],
                 on_uncaught: Callable[[BaseException], None], on_exit: Callable[[], None],
                 on_fork_child: Callable[[], None], redact: Callable[[str], str],
                 signals: bool = True) -> None:
        self._on_sigterm = on_sigterm
        self._on_sigusr1 = on_sigusr1
        self._on_uncaught = on_uncaught
        self._on_exit = on_exit
        self._on_fork_child = on_fork_child
        self._redact = redact
        self._signals = signals
        self._previous_signals: dict[int, Any] = {}
        self._previous_excepthook = sys.excepthook
        self._removed = False

    def install(self) -> None:
        self._previous_excepthook = sys.excepthook
        sys.excepthook = self._excepthook
        atexit.register(self._on_exit)
        reset_in_child(self._after_fork_in_child)
        if not self._signals or threading.current_thread() is not threading.main_thread():
            return
        handlers: dict[int, SignalHandler | int] = {signal.SIGTERM: self._sigterm}
        if hasattr(signal, "SIGUSR1"):
            handlers[signal.SIGUSR1] = self._sigusr1
        if hasattr(signal, "SIGXFSZ"):
            handlers[signal.SIGXFSZ] = signal.SIG_IGN
        for signum, handler in handlers.items():
            try:
                self._previous_signals[signum] = signal.signal(signum, handler)
            except (ValueError, OSError):
                pass

    def remove(self, keep_excepthook: bool = False) -> None:
        """Give everything back. ``keep_excepthook``: the run ended by an exception that is on its
        way to the top (``with traintel.init()`` around a crash): the excepthook stays to print
        it redacted, and gives itself back when it has."""
        self._release(keep_excepthook)
        if threading.current_thread() is threading.main_thread():
            for signum, previous in self._previous_signals.items():
                try:
                    signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
                except (ValueError, OSError, TypeError):
                    pass
        self._previous_signals = {}

    def _release(self, keep_excepthook: bool = False) -> None:
        """Give back the excepthook and the exit hook."""
        self._removed = True
        if sys.excepthook == self._excepthook and not keep_excepthook:
            sys.excepthook = self._previous_excepthook
        atexit.unregister(self._on_exit)

    def _sigterm(self, signum: int, frame: FrameType | None) -> None:
        self._on_sigterm()
        previous = self._previous_signals.get(signum)
        if callable(previous):
            previous(signum, frame)
        raise SystemExit(128 + signum)

    def _sigusr1(self, signum: int, frame: FrameType | None) -> None:
        self._on_sigusr1()

    def _excepthook(self, exc_type: type[BaseException], exc: BaseException,
                    tb: TracebackType | None) -> None:
        """Record the exception, then print it as Python would, redacted: the default hook
        would print secrets from the message or the traceback's source lines. A hook someone
        else installed (IPython, an error reporter) is called as it was."""
        self._on_uncaught(exc)
        if self._removed and sys.excepthook == self._excepthook:
            sys.excepthook = self._previous_excepthook  # kept for this one exception only
        if self._previous_excepthook is not sys.__excepthook__:
            self._previous_excepthook(exc_type, exc, tb)
            return
        try:
            sys.stderr.write(self._redact("".join(traceback.format_exception(exc_type, exc, tb))))
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr closed: nothing can be printed
            pass

    def _after_fork_in_child(self) -> None:
        self._release()
        self._on_fork_child()
