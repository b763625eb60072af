"""Validation at the door: the rules every public input of a run is checked against, in one place.

Each rule raises with the reason and the accepted form, naming the API and the value, so that a
user sees what to change. Names are checked once per distinct name (callers cache what passed),
never per step; step numbers are checked on the rare path only (``type(step) is int`` passes
first).

- **Names** (``run.log`` and ``run.log_eval`` keys, events, spans, instruments, loggers): one
  grammar, :data:`NAME_RULE`. ``/`` and ``.`` group names (``train/loss``, ``eval.top1``) and are
  kept as they are in the record, in every export and in every label.
- **Step numbers**: a point on the user's step axis, a non-negative integer; NumPy integers and
  0-d integer tensors are integers too.
"""

from __future__ import annotations

import operator
import re

#: the grammar of every name a user gives traintel
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.:/@-]{0,99}")
NAME_RULE = ("1-100 characters of letters, digits, '_', '.', '/', ':', '@' or '-', starting with "
             "a letter or '_'")
_OUTSIDE = re.compile(r"[^A-Za-z0-9_.:/@-]")


def check_name(what: str, name: object) -> str:
    """``name`` if it follows :data:`NAME_RULE`; else a ValueError with the reason and, where one
    exists, the nearest valid name."""
    if not isinstance(name, str):
        raise TypeError(f"{what}: names are strings ({NAME_RULE}); got {type(name).__name__} "
                        f"{name!r}")
    if NAME_PATTERN.fullmatch(name):
        return name
    if not name:
        reason = "it is empty"
    elif len(name) > 100:
        reason = f"it is {len(name)} characters long"
    elif _OUTSIDE.search(name):
        reason = f"{_OUTSIDE.search(name).group()!r} is not allowed"  # type: ignore[union-attr]
    else:
        reason = f"it starts with {name[0]!r}"
    suggestion = suggest_name(name)
    fix = f"; e.g. {suggestion!r}" if suggestion else ""
    raise ValueError(f"{what}: name {name!r} is refused: {reason}. A name is {NAME_RULE}{fix}")


def suggest_name(name: str) -> str | None:
    """The nearest valid name (characters outside the grammar become '_'), or None."""
    fixed = _OUTSIDE.sub("_", name.strip())[:100]
    if fixed and not (fixed[0].isascii() and (fixed[0].isalpha() or fixed[0] == "_")):
        fixed = f"_{fixed}"[:100]
    return fixed if fixed and NAME_PATTERN.fullmatch(fixed) else None


def check_step(what: str, step: object) -> int:
    """A step number as a Python int: ints, NumPy integers and 0-d integer tensors (anything
    with ``__index__``); not bools, floats or negative numbers."""
    if isinstance(step, bool):
        raise TypeError(f"{what}: step must be a non-negative integer, got {step!r}")
    try:
        number = operator.index(step)  # type: ignore[arg-type]  # TypeError is the answer
    except TypeError:
        raise TypeError(f"{what}: step must be a non-negative integer (int, NumPy integer or "
                        f"0-d integer tensor), got {type(step).__name__} {step!r}"
                        + ("; pass int(step) if it is a whole number"
                           if isinstance(step, float) else "")) from None
    if number < 0:
        raise ValueError(f"{what}: step must be a non-negative integer, got {number}")
    return number


#: a tag: a label value (``traintel_run_info{tags="a,b"}``), so no comma
TAG_PATTERN = re.compile(r"[^,\x00-\x1f\x7f]{1,64}")
TAG_RULE = "1-64 characters without commas or control characters"


def check_tags(what: str, tags: object) -> list[str]:
    """Tags as a list of distinct strings, in the order given."""
    if tags is None:
        return []
    if isinstance(tags, str) or not hasattr(tags, "__iter__"):
        raise TypeError(f"{what}: tags is a list of strings, e.g. tags=['baseline', 'lr-sweep']; "
                        f"got {type(tags).__name__} {tags!r}")
    out: list[str] = []
    for tag in tags:
        if not isinstance(tag, str) or not TAG_PATTERN.fullmatch(tag) or not tag.strip():
            raise ValueError(f"{what}: tag {tag!r} is refused; a tag is {TAG_RULE}")
        if tag not in out:
            out.append(tag)
    return out
