"""Optuna: one run per trial, grouped by study, pruned trials ``pruned``, the objective ranked.

    import optuna, traintel
    from traintel.integrations.optuna import trial_run

    def objective(trial):
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        with trial_run(trial, project="mnist") as run:        # group=study, name=trial-N
            for epoch in run.epochs(10):
                value = train_and_validate(lr)
                run.report(value, epoch)                       # trial.report + prune check
            return run.objective(value)                        # the trial's value, in summary

    optuna.create_study(pruner=optuna.pruners.MedianPruner()).optimize(objective, n_trials=30)

``trial_run`` is ``traintel.init`` with the trial's identity: ``group`` the study's name (all of
a study's trials compared with ``traintel logs compare --group STUDY``), ``name`` ``trial-N``,
the trial's parameters and number in the config, the study's direction as the goal of the
``objective`` eval metric. ``report`` passes each intermediate value to Optuna and records it as
an evaluation; when the pruner says so it raises ``optuna.TrialPruned``, which ends the run
``pruned`` (``traintel.run.sweeps``), not ``failed``. ``objective`` records the value the objective
returns, so that summary.json's ``eval.objective.last`` is the trial's value. Any other
``traintel.init`` option passes through; Optuna's own pruning callbacks (Lightning's, the
``transformers`` Trainer's) raise the same exception and end the run the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from traintel.record.format import Goal
    from traintel.run.facade import Run

#: the eval metric the trials' objective is recorded as (and ranked by)
OBJECTIVE = "objective"


class TrialRun:
    """A run for one Optuna trial (``trial_run``); every attribute of the run is reachable
    through it, and ``with`` ends the run as ``with run:`` does."""

    def __init__(self, run: Run, trial: Any, goal: Goal) -> None:
        self.run = run
        self.trial = trial
        self.goal: Goal = goal

    def __getattr__(self, name: str) -> Any:
        return getattr(self.run, name)

    def __enter__(self) -> TrialRun:
        return self

    def __exit__(self, *exc_info: Any) -> bool:
        return self.run.__exit__(*exc_info)

    def report(self, value: float, step: int) -> None:
        """The intermediate ``value`` at ``step``: to Optuna (``trial.report``) and to the record
        (the ``objective`` evaluation); raises ``optuna.TrialPruned`` when the pruner says so."""
        import optuna

        self.trial.report(value, step)
        self.run.log_eval(step, {OBJECTIVE: self.goal}, objective=value)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (objective {value:g})")

    def objective(self, value: float) -> float:
        """Record the trial's final ``value`` (what the objective returns) and return it."""
        self.run.log_eval(None, {OBJECTIVE: self.goal}, objective=value)
        self.run.event("trial_objective", value=float(value), trial=self.trial.number)
        return value


def trial_run(
    trial: Any,
    project: str | None = None,
    *,
    config: Mapping[str, Any] | None = None,
    **options: Any,
) -> TrialRun:
    """Start the run of Optuna ``trial`` (see the module's docstring); ``options`` go to
    ``traintel.init`` (``group`` and ``name`` default to the study's and ``trial-N``)."""
    from traintel.run.facade import Run
    from traintel.run.settings import settings_from

    study = trial.study
    try:
        direction = str(getattr(study.direction, "name", study.direction))
    except RuntimeError:  # a multi-objective study (one value per trial is recorded here)
        direction = "MINIMIZE"
    goal: Goal = "max" if direction.upper().endswith("MAXIMIZE") else "min"
    options.setdefault("group", study.study_name)
    options.setdefault("name", f"trial-{trial.number}")
    merged = {**dict(config or {}), **trial.params, "trial_number": trial.number}
    run = Run(settings_from({"project": project, "config": merged, **options}))
    return TrialRun(run, trial, goal)
