"""Framework integrations: ``traintel.integrations.huggingface`` (Trainer callback) and
``traintel.integrations.lightning`` (Logger and Callback). Import the one you use; this package
imports neither framework.

What they share: attaching to the active run or starting one, and turning a framework's several
reports about one training step into one record line.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .. import env
from ..validate import NAME_PATTERN, suggest_name

if TYPE_CHECKING:
    from ..run import Run

log = logging.getLogger("traintel.integrations")

#: the framework's names for traintel's known per-step keys
KNOWN = {"loss": "loss", "train_loss": "loss", "learning_rate": "lr", "lr": "lr",
         "grad_norm": "grad_norm"}


def start_run(source: str, config: dict[str, Any], total_steps: int | None,
              init_options: dict[str, Any], framework_bar: bool = False) -> tuple[Run, bool]:
    """The active run, or a new one; and whether we started it (then we also finish it).

    A run's config is fixed when it starts, so an existing run gets the framework's
    configuration as a ``framework_config`` event instead. When the framework draws its own
    progress bar (``framework_bar``), a run started here shows none, unless the user asked for
    one: two live bars on one terminal overwrite each other.
    """
    import traintel

    run = traintel.current_run()
    if run is not None:
        run.event("framework_config", source=source, config=config)
        if total_steps and run.state.total_steps is None:
            run.set_total_steps(total_steps)
        return run, False
    options = {k: v for k, v in init_options.items() if v is not None}
    options.setdefault("total_steps", total_steps or None)
    quiet_bar = framework_bar and "progress" not in options and \
        not env.TRAINTEL_PROGRESS.get()
    if quiet_bar:
        options["progress"] = "off"
    run = traintel.init(config=config, **options)
    if quiet_bar:
        log.info("%s shows its own progress bar, so traintel's is off (progress='lines' or "
                 "TRAINTEL_PROGRESS=lines adds traintel's progress lines)", source)
    return run, True


def metric_name(name: str) -> str:
    """A framework metric name as a ``run.log`` key: as it is when traintel's name grammar
    takes it (``train/acc``), else the nearest name it takes (``val acc`` -> ``val_acc``)."""
    if NAME_PATTERN.fullmatch(name):
        return name
    return suggest_name(name) or "_"


class StepBuffer:
    """One record line per training step, although a framework reports a step's values in
    several calls (Trainer: ``on_step_end`` then ``on_log``). Values for a step already written
    (a per-epoch aggregate) become a ``values`` line (``run.log_values``), not a second step."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.step: int | None = None
        self.values: dict[str, Any] = {}
        self.step_s: float | None = None
        self.written = -1

    def add(self, step: int, values: dict[str, Any], step_s: float | None = None) -> None:
        if step != self.step:
            self.flush()
            if step <= self.written:
                if values:
                    self.run.log_values(values, step=step)
                return
            self.step = step
        self.values.update(values)
        if step_s is not None:
            self.step_s = step_s

    def flush(self) -> None:
        if self.step is not None and self.values:
            self.run.log(step=self.step, step_s=self.step_s, **self.values)
            self.written = self.step
        self.step = None
        self.values = {}
        self.step_s = None
