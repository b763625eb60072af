"""A call used wrongly inside a run is said once and the run goes on (issue 28, the small ones):
a timer or span exited without being entered, ``run.error(context=[...])``,
``run.log(commit="no")``, a span attribute whose ``__str__`` raises. Training comes first, so
none of them raises; each is one warning naming the call, the argument and the fix, once per
run and key (a loop repeats its mistake every step; the next run of a sweep says it again, in its
own record), for at most :data:`MAX_SAID` keys (a key made up per step must not grow a set)."""

from __future__ import annotations

import logging

log = logging.getLogger("traintel")
_said: set[str] = set()
#: distinct keys said per run; beyond, misuses are not said again
MAX_SAID = 100


def warn_once(key: str, message: str) -> None:
    """Log ``message`` the first time ``key`` is seen in this run."""
    if key not in _said and len(_said) < MAX_SAID:
        _said.add(key)
        log.warning("traintel: %s", message)


def forget() -> None:
    """A new run starts: its misuses are said again, so that its record holds them."""
    _said.clear()


def printable(value: object) -> str:
    """``str(value)``, or what it is when its ``__str__`` raises."""
    try:
        return str(value)
    except Exception as exc:  # a user's object: anything may come out of it
        return f"<{type(value).__name__} whose __str__ raised {type(exc).__name__}>"
