"""A run's hooks into the process: signals, uncaught exceptions and interpreter exit.

**SIGTERM** is how schedulers preempt (SLURM, Kubernetes, spot instances) and how time limits
end jobs. It is recorded (``on_signal``: an event, ``run.stop_requested``, the run's final status
``preempted``) and then decided by whichever handler was installed first:

- a handler of the user's (installed before ``traintel.init``, or after it: the run notices a
  replaced handler within a second and wraps it, so the signal is still recorded) runs and
  decides: typically it sets a flag, the loop writes a checkpoint and exits;
- ``SIG_IGN`` ignores it, as the user asked;
- else, with ``sigterm="flag"``, only ``run.stop_requested`` is set and the loop decides;
- else (the default) ``SystemExit(143)`` is raised in the main thread, so that the ``with`` block
  or interpreter exit finishes the run (record, summary.json, export) and the process exits 143.

During the end of the run, SIGTERM and SIGINT wait (:meth:`ProcessHooks.deferring`): the summary
and every queued line are written first, then each deferred signal is delivered again to the
handler the run found (:meth:`ProcessHooks.redeliver`). SIGUSR1 toggles debug logging, SIGXFSZ is
ignored (a file-size limit must fail a write, not kill training), an uncaught exception finishes
the run as failed (its traceback printed redacted), and interpreter exit finishes it. Everything
is removed when the run ends; a forked child drops it, so that it never finishes the parent's
run.
"""

from __future__ import annotations

import atexit
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any, Literal

from traintel.core.forks import reset_in_child

SignalHandler = Callable[[int, "FrameType | None"], Any]
#: who decides what SIGTERM does (recorded with the signal)
Decider = Literal["user_handler", "ignored", "loop", "traintel"]
SigtermMode = Literal["exit", "flag"]


class ProcessHooks:
    def __init__(
        self,
        *,
        on_signal: Callable[[str, Decider], None],
        on_sigusr1: Callable[[], None],
        on_uncaught: Callable[[BaseException], None],
        on_exit: Callable[[], None],
        on_fork_child: Callable[[], None],
        redact: Callable[[str], str],
        signals: bool = True,
        sigterm: SigtermMode = "exit",
    ) -> None:
        self._on_signal = on_signal
        self._redact = redact
        self._removed = False
        self._on_sigusr1 = on_sigusr1
        self._on_uncaught = on_uncaught
        self._on_exit = on_exit
        self._on_fork_child = on_fork_child
        self._signals = signals
        self._sigterm_mode = sigterm
        self._previous_signals: dict[int, Any] = {}
        #: a SIGTERM handler installed after ours, which we wrapped (it decides)
        self._adopted: SignalHandler | None = None
        self._in_sigterm = False
        self._deferring = False
        #: the signal that asked the run to stop (``SIGTERM``), once one came
        self.stop_signal: str | None = None
        #: signals that arrived while the run was ending, delivered again afterwards
        self.deferred: list[int] = []
        self._previous_excepthook = sys.excepthook

    def install(self) -> None:
        self._previous_excepthook = sys.excepthook
        sys.excepthook = self._excepthook
        atexit.register(self._on_exit)
        reset_in_child(self._after_fork_in_child)
        if not self._signals or threading.current_thread() is not threading.main_thread():
            return
        handlers: dict[int, SignalHandler | int] = {signal.SIGTERM: self._sigterm}
        # SIGHUP (the terminal closed, an ssh session dropped) ends the run as SIGTERM does,
        # with its record and summary; under nohup (SIG_IGN) it stays ignored
        if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
            handlers[signal.SIGHUP] = self._sigterm
        if hasattr(signal, "SIGUSR1"):
            handlers[signal.SIGUSR1] = self._sigusr1
        if hasattr(signal, "SIGXFSZ"):
            handlers[signal.SIGXFSZ] = signal.SIG_IGN
        for signum, handler in handlers.items():
            try:
                self._previous_signals[signum] = signal.signal(signum, handler)
            except (ValueError, OSError):
                pass

    def adopt(self) -> None:
        """A Python SIGTERM handler installed after the run started replaced ours: wrap it, so
        that the signal is recorded and the user's handler still decides (called every second
        or so from the training loop's rare path)."""
        if (
            signal.SIGTERM not in self._previous_signals
            or threading.current_thread() is not threading.main_thread()
        ):
            return
        current = signal.getsignal(signal.SIGTERM)
        if current == self._sigterm or not callable(current):
            return
        self._adopted = current
        signal.signal(signal.SIGTERM, self._sigterm)

    @property
    def sigterm_decider(self) -> Decider:
        """Who decides what SIGTERM does now."""
        return self._decider(signal.SIGTERM)

    def end_status(self) -> Literal["finished", "preempted", "interrupted"]:
        """A run's status when nothing else says: ``preempted`` after SIGTERM, ``interrupted``
        after SIGHUP (the terminal closed), else ``finished``."""
        if self.stop_signal is None:
            return "finished"
        return "preempted" if self.stop_signal == "SIGTERM" else "interrupted"

    def _decider(self, signum: int) -> Decider:
        """Who decides what ``signum`` (SIGTERM, SIGHUP) does now."""
        previous = (
            self._adopted if signum == signal.SIGTERM else None
        ) or self._previous_signals.get(signum)
        if callable(previous):
            return "user_handler"
        if previous == signal.SIG_IGN:
            return "ignored"
        return "loop" if self._sigterm_mode == "flag" else "traintel"

    def remove(self, keep_excepthook: bool = False) -> None:
        """Give everything back. ``keep_excepthook``: the run ended by an exception that is on its
        way to the top (``with traintel.init()`` around a crash): the excepthook stays to print
        it redacted, and gives itself back when it has."""
        self._release(keep_excepthook)
        if threading.current_thread() is threading.main_thread():
            for signum, previous in self._previous_signals.items():
                if signum == signal.SIGTERM and self._adopted is not None:
                    previous = self._adopted  # the user's handler stays, as they installed it
                try:
                    signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
                except (ValueError, OSError, TypeError):
                    pass
        self._previous_signals = {}

    @contextmanager
    def deferring(self) -> Iterator[None]:
        """SIGTERM and SIGINT wait while the run ends (:meth:`redeliver` afterwards), so that a
        second signal or a Ctrl-C never cuts summary.json or the last lines of the record."""
        self._deferring = True
        saved: Any = None
        main = threading.current_thread() is threading.main_thread()
        if main:
            try:
                saved = signal.signal(signal.SIGINT, self._defer)
            except (ValueError, OSError):
                saved = None
        try:
            yield
        finally:
            self._deferring = False
            if saved is not None:
                signal.signal(signal.SIGINT, saved)

    def redeliver(self) -> None:
        """Deliver the signals that waited for the end of the run to the handlers now
        installed (after :meth:`remove`: the ones the run found; SIGTERM's default ends the
        process with 143, SIGINT's raises KeyboardInterrupt)."""
        deferred, self.deferred = self.deferred, []
        if threading.current_thread() is threading.main_thread():
            for signum in dict.fromkeys(deferred):
                signal.raise_signal(signum)

    def _release(self, keep_excepthook: bool = False) -> None:
        """Give back the excepthook and the exit hook."""
        self._removed = True
        if sys.excepthook == self._excepthook and not keep_excepthook:
            sys.excepthook = self._previous_excepthook
        atexit.unregister(self._on_exit)

    def _defer(self, signum: int, frame: FrameType | None) -> None:
        self.deferred.append(signum)

    def _sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self._deferring:
            self.deferred.append(signum)
            return
        installed_over = self._previous_signals.get(signum)
        if self._in_sigterm:  # the handler we wrapped calls the one it replaced: ours, as it was
            self._decide(signum, frame, installed_over)
            return
        self._in_sigterm = True
        try:
            self.stop_signal = signal.Signals(signum).name
            self._on_signal(self.stop_signal, self._decider(signum))
            adopted = self._adopted if signum == signal.SIGTERM else None
            self._decide(signum, frame, adopted or installed_over)
        finally:
            self._in_sigterm = False

    def _decide(self, signum: int, frame: FrameType | None, handler: Any) -> None:
        if callable(handler):
            handler(signum, frame)
        elif handler != signal.SIG_IGN and self._sigterm_mode == "exit":
            raise SystemExit(128 + signum)

    def _sigusr1(self, signum: int, frame: FrameType | None) -> None:
        self._on_sigusr1()

    def _excepthook(
        self, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> None:
        """Record the exception, then print it as Python would, redacted: the default hook
        would print secrets from the message or the traceback's source lines. A hook someone
        else installed (IPython, an error reporter) is called as it was."""
        try:  # recording must never stand between the exception and its traceback
            self._on_uncaught(exc)
        except Exception:
            pass
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
