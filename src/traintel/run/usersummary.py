"""``run.summary``: the figures a user keeps for a run, as ``wandb.run.summary`` keeps them.

During the run it is a mapping users write into (``run.summary["best_val_acc"] = 0.93``);
``run.define_metric("val_acc", summary="max")`` asks for the best (``min``/``max``) or ``last``
value of a logged metric, worked out from the record at the end. Both land in summary.json's
``summary`` object. After ``finish`` the mapping also reads the run's computed summary
(``run.summary["steps"]``, ``run.summary["loss"]``), the user's own keys first.

Values are kept as JSON has them: numbers, text, booleans, None, and lists or dicts of them;
another value (a tensor, a NumPy scalar) is turned into a number where it is one, else refused
with a warning naming the key (training comes first: nothing here raises into the loop).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from traintel.core.misuse import warn_once
from traintel.core.state import nonfinite_text
from traintel.record.summary import DefinedGoal

log = logging.getLogger("traintel.summary")

#: what ``run.define_metric`` keeps of a metric (one declaration: the record's fold takes it)
SummaryGoal = DefinedGoal
GOALS: tuple[SummaryGoal, ...] = ("min", "max", "last")


class RunSummaryValues(MutableMapping[str, Any]):
    """The user's summary of one run (see the module docstring)."""

    def __init__(self, numbers: dict[str, float] | None = None) -> None:
        self._values: dict[str, Any] = {}
        #: the numbers among the values, where the exporters read them (``RunState.summary``)
        self._numbers: dict[str, float] = {} if numbers is None else numbers
        self.goals: dict[str, SummaryGoal] = {}
        #: the run's computed summary (summary.json) once it has ended
        self.final: Mapping[str, Any] | None = None

    def __getitem__(self, key: str) -> Any:
        if key in self._values:
            return self._values[key]
        if self.final is not None and key in self.final:
            return self.final[key]
        raise KeyError(key)

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str) or not key:
            log.warning("run.summary: keys are names (text), got %r; not kept", key)
            return
        kept = _json_value(value)
        if kept is _REFUSED:
            log.warning(
                "run.summary[%r]: %s is no number, text or list of them; not kept "
                "(pass float(x) or str(x))",
                key,
                type(value).__name__,
            )
            return
        self._values[key] = kept
        if type(kept) is float or type(kept) is int:
            self._numbers[key] = float(kept)
        else:
            self._numbers.pop(key, None)

    def __delitem__(self, key: str) -> None:
        del self._values[key]
        self._numbers.pop(key, None)

    def __iter__(self) -> Iterator[str]:
        yield from self._values
        if self.final is not None:
            yield from (k for k in self.final if k not in self._values)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"RunSummaryValues({dict(self)!r})"

    def define(
        self, name: str, summary: SummaryGoal | None = None, *, step_metric: str | None = None
    ) -> None:
        """``run.define_metric``: summary.json's ``summary`` keeps the ``min``, ``max`` or
        ``last`` value of ``name`` (from step, values and eval lines); ``last`` when no goal is
        given, unless the call only names a ``step_metric``.

        ``step_metric=`` (W&B's other axis for a metric) is accepted so that a ported call does
        not stop the run, and ignored with one warning: a run has one step axis, the loop's own
        counter, passed as ``run.log(..., step=it)``; values on an epoch axis go to
        ``run.log_values`` (docs/coming-from-wandb.md)."""
        if step_metric is not None:
            warn_once(
                f"define_metric.step_metric.{step_metric}",
                f"run.define_metric({name!r}, step_metric={step_metric!r}) is ignored: a run "
                "has one step axis; pass the loop's counter as run.log(..., step=it), and "
                "epoch-level values with run.log_values(...) (docs/coming-from-wandb.md)",
            )
            if summary is None:
                return
        if summary is None:
            summary = "last"
        if summary not in GOALS:
            log.warning(
                "run.define_metric(%r): summary must be one of %s, got %r; not kept",
                name,
                ", ".join(GOALS),
                summary,
            )
            return
        self.goals[name] = summary

    def for_json(self, record_dir: Path) -> dict[str, Any]:
        """summary.json's ``summary``: the user's keys and, for each defined metric,
        ``{goal: value}`` from every value the record holds of it (steps, values, evals)."""
        out = dict(self._values)
        if self.goals:
            out.update(_defined(record_dir, self.goals))
        return out


_REFUSED = object()


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else nonfinite_text(value)
    if isinstance(value, (list, tuple)):
        items = [_json_value(v) for v in value]
        return _REFUSED if any(i is _REFUSED for i in items) else items
    if isinstance(value, Mapping):
        pairs = {str(k): _json_value(v) for k, v in value.items()}
        return _REFUSED if any(v is _REFUSED for v in pairs.values()) else pairs
    try:  # a NumPy scalar or a 0-d tensor
        number = float(value)
    except (TypeError, ValueError, RuntimeError):
        return _REFUSED
    return _json_value(number)


def _defined(record_dir: Path, goals: Mapping[str, SummaryGoal]) -> dict[str, Any]:
    """Each defined metric's best or last value, folded from the record as summary.json's
    figures are (``RecordFold``): the values of steps a resumed run superseded (it went back
    to an older checkpoint) do not count."""
    from traintel.record.reader import Records
    from traintel.record.summary import RecordFold

    fold = RecordFold(percentiles=False, defined=goals)
    for line in Records(record_dir):
        fold.add(line)
    assert fold.defined is not None
    return dict(fold.defined.result())
