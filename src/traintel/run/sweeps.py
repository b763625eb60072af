"""Trials that a hyperparameter search ends early: ``pruned`` and ``stopped``, not ``failed``.

Optuna's pruners end a trial by ``raise optuna.TrialPruned()`` inside the objective, through the
user's ``with run:`` block; Ray Tune's schedulers (ASHA, PBT, a stopper) end a function
trainable by ``sys.exit(0)`` from inside ``train.report`` / ``tune.report`` (Ray's session). Both
are a search doing its job: recorded as an event, counted apart from failures in the summary,
``traintel status --all`` and the ``traintel_run_status`` state set (so that ``RunFailed`` does
not fire), with no error line and no crash report. Recognised by the exception's class and the
frame it came from, so that neither Optuna nor Ray is imported.
"""

from __future__ import annotations

import re
from typing import Literal

from traintel.record.format import EndStatus

EarlyEnd = Literal["pruned", "stopped"]

#: the files of Ray's session whose sys.exit(0) is a scheduler stopping the trial
_RAY_SESSION = re.compile(r"[/\\]ray[/\\](train|air|tune)[/\\]")


def early_end(exc: BaseException) -> EarlyEnd | None:
    """``pruned`` for Optuna's ``TrialPruned`` (and any subclass), ``stopped`` for Ray Tune's
    stop, else None (the exception ends the run as it did before)."""
    for cls in type(exc).__mro__:
        if cls.__name__ == "TrialPruned" and cls.__module__.split(".")[0] == "optuna":
            return "pruned"
    if isinstance(exc, SystemExit) and exc.code in (0, None):
        frame = exc.__traceback__
        raised_in = None
        while frame is not None:
            raised_in, frame = frame.tb_frame.f_code.co_filename, frame.tb_next
        if raised_in is not None and _RAY_SESSION.search(raised_in):
            return "stopped"
    return None


def end_status(exc: BaseException, stop_requested: bool) -> EndStatus | None:
    """How an exception that escaped the run ends it: ``pruned`` or ``stopped`` (a search ended
    the trial), None for an exit with code 0 or one after SIGTERM (``finish`` decides: finished
    or preempted), ``interrupted`` for Ctrl-C and other exit codes, else ``failed``."""
    early = early_end(exc)
    if early is not None:
        return early
    if isinstance(exc, SystemExit) and (exc.code in (0, None) or stop_requested):
        return None
    return "interrupted" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "failed"
