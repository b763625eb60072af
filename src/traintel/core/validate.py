"""Validation at the door: the rules every public input of a run is checked against, in one place.

Each rule raises with the reason and the accepted form, naming the API and the value, so that a
user sees what to change. Names are checked once per distinct name (callers cache what passed),
never per step; step numbers are checked on the rare path only (``type(step) is int`` passes
first); numbers cost the hot path one type check (``type(value) is float``, and for an int one
range comparison) before anything here is called.

- **Names** (``run.log`` and ``run.log_eval`` keys, events, spans, instruments, loggers): one
  grammar, :data:`NAME_RULE`. ``/`` and ``.`` group names (``train/loss``, ``eval.top1``) and are
  kept as they are in the record, in every export and in every label.
- **Label values** (project, run name): free text of the same length, without control
  characters; **run ids** name a directory, so they are never a path.
- **Step numbers**: a point on the user's step axis, a non-negative integer; NumPy integers and
  0-d integer tensors are integers too.
- **Numbers** must fit what every export path carries (float64, int64): see :func:`to_number`.
- **How many names** a run creates, across every API that takes one: :class:`NameBudget`.
- **Enumerations** (a severity, a level, a goal): :func:`check_choice`.
- **Text** every sink can encode (:func:`clean_text`), and values recorded as JSON
  (:func:`json_safe`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import operator
import re
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from traintel.core.state import nonfinite_text

#: the range of the integers every export path can carry (OTLP ``as_int``, JSON readers)
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
#: names (metrics, events, spans, instruments, loggers) and label values (project, run name)
MAX_NAME_LENGTH = 100
#: nesting kept in a recorded value (a config, event fields); deeper parts become text
MAX_DEPTH = 32

#: the grammar of every name a user gives traintel
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.:/@-]{0,99}")
NAME_RULE = (
    "1-100 characters of letters, digits, '_', '.', '/', ':', '@' or '-', starting with "
    "a letter or '_'"
)
_OUTSIDE = re.compile(r"[^A-Za-z0-9_.:/@-]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_C = TypeVar("_C")


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages about huge inputs."""
    try:
        text = repr(value)
    except Exception:  # a user object whose __repr__ fails, an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# -- names ------------------------------------------------------------------------------------
class BadName(ValueError):
    """A name outside :data:`NAME_RULE` (``traintel_refused_total{reason="name"}``)."""


class BadNameType(TypeError):
    """A name that is not a string (``traintel_refused_total{reason="name"}``)."""


class NameBudgetFull(ValueError):
    """A new name beyond the run's ``max_metric_names`` (``reason="name_budget"``)."""


def check_name(what: str, name: object) -> str:
    """``name`` if it follows :data:`NAME_RULE`; else a ValueError with the reason and, where one
    exists, the nearest valid name."""
    if not isinstance(name, str):
        raise BadNameType(
            f"{what}: names are strings ({NAME_RULE}); got {type(name).__name__} {shown(name)}"
        )
    if NAME_PATTERN.fullmatch(name):
        return name
    if not name:
        reason = "it is empty"
    elif len(name) > MAX_NAME_LENGTH:
        reason = f"it is {len(name)} characters long"
    elif _OUTSIDE.search(name):
        reason = f"{_OUTSIDE.search(name).group()!r} is not allowed"  # type: ignore[union-attr]
    else:
        reason = f"it starts with {name[0]!r}"
    suggestion = suggest_name(name)
    fix = f"; e.g. {suggestion!r}" if suggestion else ""
    # a 5,000-character name is not repeated whole: its start says which one it is
    named = repr(name) if len(name) <= 4 * MAX_NAME_LENGTH else shown(name, 2 * MAX_NAME_LENGTH)
    raise BadName(f"{what}: name {named} is refused: {reason}. A name is {NAME_RULE}{fix}")


def suggest_name(name: str) -> str | None:
    """The nearest valid name (characters outside the grammar become '_'), or None."""
    fixed = _OUTSIDE.sub("_", name.strip())[:100]
    if fixed and not (fixed[0].isascii() and (fixed[0].isalpha() or fixed[0] == "_")):
        fixed = f"_{fixed}"[:100]
    return fixed if fixed and NAME_PATTERN.fullmatch(fixed) else None


def check_step(what: str, step: object, noun: str = "step") -> int:
    """A step number (or another count: an epoch) as a Python int: ints, NumPy integers and 0-d
    integer tensors (anything with ``__index__``); not bools, floats, negative numbers or
    numbers beyond int64 (what every export path carries)."""
    if isinstance(step, bool):
        raise TypeError(f"{what}: {noun} must be a non-negative integer, got {step!r}")
    try:
        number = operator.index(step)  # type: ignore[arg-type]  # TypeError is the answer
    except (TypeError, ValueError, RuntimeError):  # a float tensor says RuntimeError
        raise TypeError(
            f"{what}: {noun} must be a non-negative integer (int, NumPy integer or "
            f"0-d integer tensor), got {type(step).__name__} {shown(step)}"
            + (f"; pass int({noun}) if it is a whole number" if isinstance(step, float) else "")
        ) from None
    if not 0 <= number <= INT64_MAX:
        raise ValueError(
            f"{what}: {noun} must be a non-negative integer (at most 2**63 - 1), "
            f"got {shown(number)}"
        )
    return number


#: a tag: a label value (``traintel_run_info{tags="a,b"}``), so no comma
TAG_PATTERN = re.compile(r"[^,\x00-\x1f\x7f]{1,64}")
TAG_RULE = "1-64 characters without commas or control characters"


def check_tags(what: str, tags: object) -> list[str]:
    """Tags as a list of distinct strings, in the order given."""
    if tags is None:
        return []
    if isinstance(tags, str) or not hasattr(tags, "__iter__"):
        raise TypeError(
            f"{what}: tags is a list of strings, e.g. tags=['baseline', 'lr-sweep']; "
            f"got {type(tags).__name__} {tags!r}"
        )
    out: list[str] = []
    for tag in tags:
        if not isinstance(tag, str) or not TAG_PATTERN.fullmatch(tag) or not tag.strip():
            raise ValueError(f"{what}: tag {tag!r} is refused; a tag is {TAG_RULE}")
        if tag not in out:
            out.append(tag)
    return out


# -- text -----------------------------------------------------------------------------------
def clean_text(text: str) -> str:
    """Text that every sink can encode as UTF-8.

    Python decodes file names, argv and environment variables that are not valid UTF-8 into
    lone surrogates (``\\udcff``): orjson, OTLP's protobuf and the Prometheus exposition all
    refuse them, and one such string used to make a whole batch unwritable. They are escaped
    once, where text enters, as ``\\udcff`` (a backslash and the code point, readable and
    unambiguous).
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def check_label(what: str, value: object) -> str:
    """A free-text label value (project, run name): non-empty, at most MAX_NAME_LENGTH
    characters, no control characters; unencodable text escaped."""
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"{what} must be a non-empty string, got {shown(value)}")
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(
            f"{what} is {len(value)} characters; keep it to {MAX_NAME_LENGTH} (it "
            "becomes a label on every series)"
        )
    if _CONTROL.search(value):
        raise ValueError(
            f"{what} {shown(value)} contains control characters (newline, tab, "
            "NUL...); they break label values and log lines: remove them"
        )
    return clean_text(value)


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_run_id(what: str, run_id: object) -> str:
    """A run id is a name, never a path: it becomes the record's directory under ``dir``, so
    ``/``, ``..`` or an absolute path would write outside it."""
    if not isinstance(run_id, str) or not run_id:
        raise TypeError(f"{what} must be a non-empty string, got {shown(run_id)}")
    if len(run_id) > MAX_NAME_LENGTH or not _RUN_ID.fullmatch(run_id):
        raise ValueError(
            f"{what} {shown(run_id)} is not a valid run id: use 1-{MAX_NAME_LENGTH}"
            " letters, digits, '_', '.' or '-', starting with a letter or digit "
            "(it names the record's directory, so it cannot be a path)"
        )
    return run_id


# -- numbers --------------------------------------------------------------------------------
def to_number(what: str, key: str, value: Any) -> float | int:
    """A Python number that every export path can carry, from any number a user may pass
    (int, float, bool, NumPy scalar, 0-d tensor), or a clear error naming the key.

    Integers beyond int64 become floats (OTLP would wrap ``2**63`` to a negative number and JSON
    readers refuse them); beyond float64 they are refused. Only called for values that are not
    already a ``float`` or an int64 ``int``: the common case pays nothing.
    """
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return _fit_int(what, key, value)
    if isinstance(value, numbers.Real):
        try:
            return float(value)
        except (OverflowError, ValueError) as exc:
            raise ValueError(
                f"{what}: {key!r} = {shown(value)} is beyond float64's range ({exc})"
            ) from None
    item = getattr(value, "item", None)
    if item is not None and callable(item):
        try:
            numel = getattr(value, "numel", None)
            size = numel() if callable(numel) else getattr(value, "size", 1)
            if size != 1:
                shape = tuple(getattr(value, "shape", ()))
                raise ValueError(
                    f"{what}: {key!r} is a tensor/array of shape {shape}; log a "
                    f"scalar (e.g. {key}=value.mean().item())"
                )
            result = item()
        except ValueError:
            raise
        except Exception as exc:  # a meta-device tensor, a freed buffer...
            raise TypeError(
                f"{what}: {key!r} could not be read as a number "
                f"({type(exc).__name__}: {str(exc)[:200]}); pass a number or a "
                "0-d tensor on a real device"
            ) from None
        if isinstance(result, (int, float)):
            return to_number(what, key, result) if type(result) is not float else result
    raise TypeError(
        f"{what}: {key!r} must be a number (int, float, NumPy scalar or 0-d "
        f"tensor), got {type(value).__name__}; log text with run.event() instead"
    )


def _fit_int(what: str, key: str, value: int) -> int | float:
    if INT64_MIN <= value <= INT64_MAX:
        return value
    try:
        return float(value)
    except OverflowError:
        raise ValueError(
            f"{what}: {key!r} is an integer of {value.bit_length()} bits, beyond "
            "float64's range; log a float (or its logarithm)"
        ) from None


def finite_number(what: str, key: str, value: Any) -> float:
    """A finite float from any number ``to_number`` takes (instruments: a counter, a gauge, a
    histogram observation)."""
    number = value if type(value) is float else to_number(what, key, value)
    if not math.isfinite(number):
        raise ValueError(f"{what} {key!r}: value must be finite, got {number!r}")
    return float(number)


def check_choice(what: str, value: _C, choices: Iterable[_C]) -> _C:
    """One value of an enumeration (a severity, a level, a goal), or an error listing them."""
    allowed = tuple(choices)
    if value not in allowed:
        raise ValueError(
            f"{what} must be one of {', '.join(map(repr, allowed))}; got {shown(value)}"
        )
    return value


# -- values recorded as JSON ----------------------------------------------------------------
def json_safe(value: Any, depth: int = MAX_DEPTH) -> Any:
    """``value`` as JSON values every reader accepts: text escaped, integers beyond int64 as
    their digits (text), non-finite floats as "nan"/"inf" text, dataclasses and parsed arguments
    as dicts, nesting cut at ``depth`` and circular references named instead of followed, other
    objects as their text.

    Used for configs and for any line the fast encoder refuses, so that one odd value costs that
    value, never its line or its batch.
    """
    return _safe(value, depth, set())


def _safe(value: Any, depth: int, seen: set[int]) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, int):
        if INT64_MIN <= value <= INT64_MAX:
            return value
        return (
            str(value) if value.bit_length() < 4000 else f"<integer of {value.bit_length()} bits>"
        )
    if isinstance(value, float):
        return value if math.isfinite(value) else nonfinite_text(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, (Mapping, list, tuple, set, frozenset)):
        if id(value) in seen:
            return "<circular reference>"
        if depth <= 0:
            return f"<{type(value).__name__} nested deeper than {MAX_DEPTH} levels>"
        seen.add(id(value))
        try:
            if isinstance(value, Mapping):
                return {clean_text(str(k)): _safe(v, depth - 1, seen) for k, v in value.items()}
            return [_safe(v, depth - 1, seen) for v in value]
        finally:
            seen.discard(id(value))
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return _safe(item(), depth, seen)
        except Exception:  # a tensor with many elements, a meta tensor: its text
            pass
    try:
        return clean_text(str(value))
    except Exception:
        return f"<{type(value).__name__}>"


# -- cardinality ----------------------------------------------------------------------------
class NameBudget:
    """How many distinct names a run may create, across every API that takes one: run.log keys,
    evaluation metrics, events, spans (operations), custom instruments and loggers. Each name is
    a series (or a label value) on every export path, so one budget bounds them all; a name
    already admitted costs nothing again."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._names: dict[str, set[str]] = {}

    def admit(
        self,
        what: str,
        kind: str,
        name: str,
        hint: str = "Put varying parts in fields, not in names",
    ) -> str:
        """``name`` of ``kind``, admitted (checked against the name rules when new), or refused
        with ``hint`` (what to do instead)."""
        names = self._names.get(kind)
        if names is None:
            names = self._names[kind] = set()
        if name in names:
            return name
        check_name(what, name)
        if self.used >= self.limit:
            counts = ", ".join(f"{k} {len(v)}" for k, v in sorted(self._names.items()) if v)
            raise NameBudgetFull(
                f"{what}: {name!r} would be name number {self.used + 1} of this run; the "
                f"limit is {self.limit} names in all ({counts}), because each is a series on "
                f"every export path. {hint}, or raise traintel.init(max_metric_names=...) if "
                "you really need more"
            )
        names.add(name)
        self.used += 1
        return name
