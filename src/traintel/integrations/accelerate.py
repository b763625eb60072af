"""Hugging Face Accelerate integration: a tracker for ``Accelerator(log_with=...)``
(docs/accelerate.md).

    from traintel.integrations.accelerate import TraintelTracker
    accelerator = Accelerator(log_with=TraintelTracker(project="clm"))
    accelerator.init_trackers("clm", config=vars(args))      # the run starts here
    ...
    accelerator.log({"train_loss": loss, "epoch": epoch}, step=completed_steps)
    accelerator.end_training()                                # the run ends here

Accelerate takes a tracker by name only for the trackers it ships (``LoggerType``); any other
is passed as an instance of its ``GeneralTracker`` (``log_with=TraintelTracker()``, alone or in a
list with the names of others). Accelerate hands ``init_trackers``' project name to the trackers
it builds itself, not to instances, so the project is ``TraintelTracker(project=...)``
(or ``TRAINTEL_PROJECT``).

Ranks as Accelerate has them: a tracker works on the main process only
(``main_process_only``, as every Accelerate tracker), and ``accelerator.log`` is called there
only, so the run is the main process's; its run id is taken without talking to the other ranks
(the launcher's, else a new one). Each ``accelerator.log(values, step=n)`` is a step line at step
``n`` (values for a step already written become a ``values`` line; a value that is a dict of
numbers, ``{"glue": {"accuracy": ...}}``, is one value per inner name, ``glue/accuracy``), its
evaluation metrics an
``eval`` line at the same step, sorted by name as every integration does
(``traintel.integrations.base.split``); Accelerate has no call of its own for evaluations, so a
call that names its training values ``train_*`` holds evaluations in its other names: in the
``*_no_trainer.py`` examples' end-of-epoch call ``eval_loss`` and ``perplexity`` are evaluations
and ``train_loss`` the loss, in Accelerate's ``tracking.py`` ``accuracy`` and ``f1``. The run starts at
``init_trackers`` with step 0 behind it, so a first ``accelerator.log`` at step 48 stands for 48
steps; a script that resumes from a checkpoint passes ``TraintelTracker(run_id=..., resume=True)``
or ``initial_step=``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from traintel.core.extras import require

require("traintel.integrations.accelerate", "integrations", "accelerate")

# after the check that names the extra
from accelerate.tracking import GeneralTracker, on_main_process  # noqa: E402

from traintel.core.state import find_loss  # noqa: E402
from traintel.integrations.base import (  # noqa: E402
    LOOP_KEYS,
    Integration,
    record_name,
    split,
)
from traintel.run.distributed import launcher_run_id, new_run_id  # noqa: E402

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from traintel.run.facade import Run
    from traintel.run.settings import InitOptions


class TraintelTracker(GeneralTracker, Integration):  # type: ignore[misc]  # the framework is Any to mypy: pyproject.toml does not follow it
    """An Accelerate tracker that records into a traintel run. Keyword arguments go to
    ``traintel.init`` (``project``, ``name``, ``dir``, ``run_id``, ...)."""

    name = "traintel"
    requires_logging_directory = False
    main_process_only = True
    source = "accelerate"

    def __init__(
        self,
        project: str | None = None,
        name: str | None = None,
        **init_options: Unpack[InitOptions],
    ) -> None:
        GeneralTracker.__init__(self)
        Integration.__init__(self, project, name, **init_options)
        self._config: dict[str, Any] = {}
        #: the epoch the loop's reports named last (``accelerator.log({"epoch": e, ...})``)
        self._epoch: int | None = None
        #: whether the epoch-end call's loss is the loop's step loss (its only one), decided at
        #: the first such call: None until then
        self._epoch_loss_is_step: bool | None = None

    @property
    def tracker(self) -> Run | None:
        """The traintel run (Accelerate's ``get_tracker("traintel", unwrap=True)``)."""
        return self.run

    @on_main_process  # type: ignore[untyped-decorator]  # Accelerate's decorator is untyped to mypy
    def start(self) -> None:
        """Accelerate's ``init_trackers``: the run starts with the configuration, which comes
        next (``store_init_configuration``), or at the first ``log`` without one."""

    @on_main_process  # type: ignore[untyped-decorator]  # Accelerate's decorator is untyped to mypy
    def store_init_configuration(self, values: dict[str, Any]) -> None:
        if self.run is None:
            self._open(values)
        else:
            self.run.config.update(dict(values))

    @on_main_process  # type: ignore[untyped-decorator]  # Accelerate's decorator is untyped to mypy
    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        run = self.run or self._open({})
        values = flatten(values)
        at = step if step is not None else run.state.step + 1
        epoch = values.get("epoch")
        report = split(values, train_marks_evals=True)
        new_epoch = (
            int(epoch)
            if isinstance(epoch, (int, float))
            and not isinstance(epoch, bool)
            and epoch >= 0
            and int(epoch) == epoch
            and int(epoch) != self._epoch
            else None
        )
        if new_epoch is not None:
            # the loop's epoch (issue 29: epochs were 0). Logged every step, a new number
            # begins that epoch and ends the one before; logged once an epoch, with its
            # evaluation at its end (the run_*_no_trainer examples, tracking.py), it is the
            # number of the epoch that ends here, which began where the last one ended: begun
            # so, it ends after this call's lines (its steps and time, not the next epoch's)
            self._epoch = new_epoch
            run.begin_epoch(new_epoch, since_last_end=bool(report.evals))
        if report.evals and "loss" in report.steps:
            # an end-of-epoch call (run_glue_no_trainer's): its train_loss is the epoch's mean.
            # Where the loop logs its step losses too, that mean is an epoch-level value of its
            # own name (Lightning's ``train_loss_epoch``), never a point of the step loss curve
            # (issue 29: loss.final and metrics.loss differed); where it is the loop's only
            # loss (Accelerate's tracking.py), it stays the step's loss.
            if self._epoch_loss_is_step is None:
                self._epoch_loss_is_step = find_loss(run.state.latest) is None
            if not self._epoch_loss_is_step:
                name = next(k for k in values if k not in LOOP_KEYS and record_name(k) == "loss")
                report.epoch[f"{name.removesuffix('_step')}_epoch"] = report.steps.pop("loss")
        if report.steps:
            self.step(at, report.steps, flush=True)
        if report.evals:
            self.evaluate(at, report.evals)
        if report.epoch:
            self.values(at, report.epoch)
        if new_epoch is not None and report.evals:
            run.end_epoch()

    def _open(self, config: Mapping[str, Any]) -> Run:
        # only the main process records: its run id is taken without a collective, which the
        # other ranks would never join
        run_id = self.init_options.get("run_id") or launcher_run_id() or new_run_id()
        return self.open_run(config, initial_step=0, run_id=run_id)

    @on_main_process  # type: ignore[untyped-decorator]  # Accelerate's decorator is untyped to mypy
    def finish(self, status: Any = None) -> None:
        """Accelerate's ``end_training``: a run the tracker started ends."""
        Integration.finish(self, status)


def flatten(values: Mapping[str, Any]) -> dict[str, Any]:
    """A value that is a dict of names to numbers (Accelerate's ``log`` takes them: TensorBoard's
    tracker writes them with ``add_scalars``) as one value per inner name, ``outer/inner``:
    run_glue_no_trainer.py logs its metric so, ``{"glue": {"accuracy": 0.8}}``, which was left
    out as a non-number (issue 29: its evaluations were missing from the record)."""
    if not any(isinstance(value, Mapping) for value in values.values()):
        return dict(values)
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            for inner, number in flatten(value).items():
                flat[f"{key}/{inner}"] = number
        else:
            flat[key] = value
    return flat
