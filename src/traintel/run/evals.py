"""Evaluations and best-so-far by meaning.

A metric's direction comes from ``goals=`` (``traintel.init`` or ``run.log_eval``), else from the
whole tokens of its name: ``val_loss``, ``answer_f1``, ``eval/top1-acc``, ``valPerplexity``,
``rouge1``. A name whose tokens say nothing (or say both) gets no best claim, and one log line
asks for ``goals=`` instead of a guess: a wrong "best" saves the wrong checkpoint. The direction
used is written with every evaluation (``mode``) and into summary.json.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from typing import SupportsFloat

from traintel.core.state import RunState, nonfinite_text
from traintel.core.validate import check_choice, check_name, check_step, shown, to_number
from traintel.record.format import EvalLine, Goal
from traintel.run.events import EventRecorder

log = logging.getLogger("traintel.events")

#: name tokens of metrics that are better when lower
LOWER_IS_BETTER = frozenset(
    {
        "loss",
        "error",
        "err",
        "wer",
        "cer",
        "ppl",
        "perplexity",
        "nll",
        "bpc",
        "kl",
        "fid",
        "mae",
        "mse",
        "rmse",
    }
)
#: name tokens of metrics that are better when higher
HIGHER_IS_BETTER = frozenset(
    {"acc", "accuracy", "f1", "auc", "bleu", "rouge", "map", "precision", "recall"}
)
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_SEPARATORS = re.compile(r"[^a-z0-9]+")


def goal_from_name(name: str) -> Goal | None:
    """``min`` or ``max`` from the whole tokens of a metric name (a token with trailing digits
    counts as the token: ``rouge1``, ``bleu4``, ``map50``); None when they say nothing, or both."""
    tokens = {t for t in _SEPARATORS.split(_CAMEL.sub(r"\1_\2", name).lower()) if t}
    tokens |= {t.rstrip("0123456789") for t in tokens}
    lower, higher = bool(tokens & LOWER_IS_BETTER), bool(tokens & HIGHER_IS_BETTER)
    if lower == higher:
        return None
    return "min" if lower else "max"


def check_goals(what: str, goals: object) -> dict[str, Goal]:
    """``{"metric": "min" | "max"}``, or a clear error."""
    if goals is None:
        return {}
    if not isinstance(goals, Mapping):
        raise TypeError(
            f"{what}: goals must be a dict like {{'bleu': 'max'}}, got "
            f"{type(goals).__name__} {shown(goals)}"
        )
    for name, goal in goals.items():
        check_name(what, name)
        check_choice(f"{what}: the goal of {shown(name)}", goal, ("min", "max"))
    return dict(goals)


class Evaluations:
    """``run.log_eval``: eval lines with the best so far of every metric whose direction is
    known."""

    def __init__(
        self, state: RunState, events: EventRecorder, goals: Mapping[str, Goal] | None = None
    ) -> None:
        self.state = state
        self.events = events
        state.goals.update(check_goals("traintel.init", goals))

    def log(
        self,
        step: int | None,
        goals: Mapping[str, Goal] | None,
        metrics: Mapping[str, SupportsFloat],
    ) -> dict[str, bool]:
        """Record eval metrics at ``step`` (default: the current step); ``{name: is_best}``."""
        self.events.check_live("run.log_eval")
        refuse = self.events.refusals.refuse
        if not metrics:
            refuse(
                "run.log_eval",
                "()",
                ValueError("run.log_eval() needs at least one metric, e.g. val_loss=0.3"),
                "call",
                "the call is dropped",
            )
            return {}
        state = self.state
        try:
            state.goals.update(check_goals("run.log_eval", goals))
        except (TypeError, ValueError) as error:
            refuse("run.log_eval", "goals", error, then="goals= is ignored")
        try:
            at = state.step if step is None else check_step("run.log_eval", step)
        except (TypeError, ValueError) as error:
            refuse("run.log_eval", "step", error, then="the call is dropped")
            return {}
        numbers: dict[str, float | int] = {}
        for name, raw in metrics.items():
            try:
                self.events.budget.admit(
                    "run.log_eval", "evals", name, "Log per-item values with run.histogram()"
                )
                numbers[name] = raw if type(raw) is float else to_number("run.log_eval", name, raw)
            except (TypeError, ValueError) as error:
                refuse("run.log_eval", name, error, then=f"{shown(name)} is left out")
        if not numbers:
            return {}
        is_best: dict[str, bool] = {}
        written: dict[str, float | int | str] = {}
        modes: dict[str, Goal | None] = {}
        for name, value in numbers.items():
            goal = modes[name] = self._goal(name)
            state.eval_latest[name] = value
            is_best[name] = False
            if not math.isfinite(value):
                written[name] = nonfinite_text(value)
                self.events.own_event(
                    "nonfinite_eval",
                    logging.WARNING,
                    {"metric": name, "value": written[name], "step": at},
                )
                continue
            written[name] = value
            if goal is None:
                continue
            best = state.eval_best.get(name)
            if best is None or (value < best if goal == "min" else value > best):
                is_best[name] = True
                state.eval_best[name] = value
                state.eval_best_step[name] = at
        line: EvalLine = {
            "type": "eval",
            "step": at,
            "epoch": state.epoch,
            "metrics": written,
            "is_best": is_best,
            "best": {k: state.eval_best.get(k) for k in written},
            "best_step": {k: state.eval_best_step.get(k) for k in written},
            "mode": modes,
        }
        text = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in written.items()
        )
        bests = [k for k, b in is_best.items() if b]
        self.events.emit(
            log,
            logging.INFO,
            f"eval at step {at}: {text}" + (f" (best: {', '.join(bests)})" if bests else ""),
            line,
            event="eval",
        )
        if bests:
            state.events["best_eval"] = state.events.get("best_eval", 0) + 1
        return is_best

    def _goal(self, name: str) -> Goal | None:
        goals = self.state.goals
        if name not in goals:
            goal = goals[name] = goal_from_name(name)
            if goal is None:
                log.warning(
                    "run.log_eval: %r says nothing about which way is better, so no "
                    "best is tracked for it; pass goals={%r: 'max'} (or 'min') to "
                    "traintel.init or run.log_eval",
                    name,
                    name,
                )
        return goals[name]
