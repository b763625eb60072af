"""Refusals: what a run does with telemetry it cannot take.

**Inside a training run no call of traintel raises because of telemetry.** A value that is not
a number, a name beyond the rules or beyond the run's name budget (the 257th per-layer norm of a
framework callback, at hour ten), a negative sample count, an event field that cannot be printed:
each is refused, the rest of the call is recorded, and the training goes on. A refusal is

- said once per key (``run.log: 'layer256/grad_norm' would be name number 257 ...``, naming the
  key and the fix) on traintel's logger, so in the record and on the console; past
  :data:`MAX_WARNED` distinct keys one line says that the rest are counted only (a loop making
  up a new key per step must not print a line per step, nor keep every key in memory);
- counted by reason in the run state: summary.json's ``refused``, ``/status`` and the
  ``traintel_refused_total{reason}`` counter.

``traintel.init(strict=True)`` (and runs inside ``traintel.testing.capture()``) raise the same
error instead, so that users' own tests fail on what production runs only warn about. Arguments
of ``traintel.init`` itself still raise: they are checked before training starts.
"""

from __future__ import annotations

import logging
from typing import Literal, NoReturn

from traintel.core.state import RunState
from traintel.core.validate import BadName, BadNameType, NameBudget, NameBudgetFull

log = logging.getLogger("traintel.run")

#: why something was refused: the ``reason`` label of ``traintel_refused_total`` (a closed set)
Reason = Literal["name", "name_budget", "type", "value", "count", "field", "call"]
REASONS: tuple[Reason, ...] = ("name", "name_budget", "type", "value", "count", "field", "call")
#: distinct (API, key) pairs warned about one by one; beyond, refusals are counted only
MAX_WARNED = 100
STRICT_HINT = "traintel.init(strict=True) raises instead"


def reason_of(error: BaseException) -> Reason:
    """The reason label of a validation error."""
    if isinstance(error, NameBudgetFull):
        return "name_budget"
    if isinstance(error, (BadName, BadNameType)):
        return "name"
    return "type" if isinstance(error, TypeError) else "value"


class Refusals:
    """A run's refusals: counted in ``state.refused``, warned once per key, or raised when
    ``strict``."""

    def __init__(self, state: RunState | None = None, strict: bool = False) -> None:
        self.state = state
        self.strict = strict
        self._warned: set[tuple[str, str]] = set()
        self._said_more = False

    def refuse(
        self,
        what: str,
        key: object,
        error: Exception,
        reason: Reason | None = None,
        then: str = "refused",
    ) -> None:
        """``error`` (which names ``key`` and the fix) refused: raised when strict, else
        counted and said once for ``(what, key)``. ``then``: what happened instead."""
        if self.strict:
            raise error
        reason = reason or reason_of(error)
        if self.state is not None:
            counts = self.state.refused
            counts[reason] = counts.get(reason, 0) + 1
        try:
            mark = (what, key if isinstance(key, str) else repr(key)[:200])
        except Exception:  # a key whose repr fails: one mark for all of its type
            mark = (what, f"<{type(key).__name__}>")
        if mark in self._warned:
            return
        if len(self._warned) >= MAX_WARNED:
            if not self._said_more:
                self._said_more = True
                log.warning(
                    "traintel: more than %d different inputs were refused; further "
                    "refusals are counted (summary.json 'refused', "
                    "traintel_refused_total), not said",
                    MAX_WARNED,
                )
            return
        self._warned.add(mark)
        try:
            text = str(error)
        except Exception:
            text = f"{what}: {type(error).__name__}"
        log.warning("%s. (%s; the run goes on; %s)", text.rstrip("."), then, STRICT_HINT)

    def admit(self, budget: NameBudget, what: str, kind: str, name: str, instead: str) -> str:
        """``name`` admitted by the run's name ``budget``, or (refused) ``instead``."""
        try:
            return budget.admit(what, kind, name)
        except (TypeError, ValueError) as error:
            self.refuse(what, name, error, then=f"{instead!r} is used instead")
            return instead


def raise_it(
    what: str, key: object, error: Exception, reason: Reason | None = None, then: str = ""
) -> NoReturn:
    """A refusal outside a run (an instrument made by hand in a test): the error, raised."""
    raise error
