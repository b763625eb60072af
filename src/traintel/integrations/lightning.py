"""PyTorch Lightning integration: a ``Logger`` and a ``Callback``; use one of them
(docs/lightning.md).

    Trainer(logger=TraintelLogger(project="mnist"))             # Lightning's logger slot
    Trainer(callbacks=[TraintelCallback(project="mnist")])      # keeps your own logger

Both record one run per training job, with what Lightning's loop knows: a line per optimizer
step with ``samples`` (the micro-batches' sizes added up), ``lr`` (the first optimizer's first
parameter group, as the step used it: read before Lightning steps the schedulers) and its
time from the first micro-batch to the optimizer step; epochs; the
exception of a failed run, classified, with a crash report; checkpoints; evaluations. The run
stays open after ``fit`` so that ``validate``, ``test`` and ``predict`` land in it at the global
step; it ends at the end of the process, at ``.finish()``, or (the callback) at the next
``fit``.

``TraintelLogger`` records what the module logs with ``self.log`` (every ``log_every_n_steps``,
50 by default): ``train_loss``/``train/loss`` as ``loss``, per-epoch aggregates (``*_epoch``) as
epoch-level values, validation and test metrics as evaluations. It sees the loop through a
callback it adds to the Trainer when Lightning shows it the module (``log_graph``); its
``version`` is the run id, so the checkpoint directory is ``<root>/traintel/<run-id>/``. As
Lightning's own loggers keep one version, a logger is one run: a second ``fit`` with it (from a
checkpoint, ``ckpt_path=``) goes on in the same run; a new job takes a new logger.
``TraintelCallback`` records the loss the module computed (``training_step``'s return value,
unscaled by ``accumulate_grad_batches``, averaged over the micro-batches of the step) every step,
however often Lightning logs, and validation and test metrics from ``trainer.callback_metrics``;
the module's other ``self.log`` values stay with your logger.

Names are mapped as in every integration (``traintel.integrations.base.split``). Evaluations and
checkpoints are recorded on global rank 0 only; steps on every rank.
"""

from __future__ import annotations

import argparse
import sys
import time
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from traintel.core.extras import require

require("traintel.integrations.lightning", "integrations", "lightning")

# after the check that names the extra
from lightning.pytorch import Callback  # noqa: E402
from lightning.pytorch.loggers import Logger  # noqa: E402
from lightning.pytorch.utilities.data import extract_batch_size  # noqa: E402

from traintel.integrations.base import Integration, split  # noqa: E402
from traintel.run.distributed import agree_run_id, launcher_run_id, new_run_id  # noqa: E402

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer
    from typing_extensions import Unpack

    from traintel.run.settings import InitOptions


def _config(trainer: Trainer, hparams: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "hparams": dict(hparams),
        "trainer": {
            "max_epochs": trainer.max_epochs,
            "max_steps": trainer.max_steps,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "precision": str(trainer.precision),
            "world_size": trainer.world_size,
            "log_every_n_steps": trainer.log_every_n_steps,
        },
    }


def _planned_steps(trainer: Trainer) -> int | None:
    total = trainer.estimated_stepping_batches
    return int(total) if total != float("inf") else None


class _LoopRecorder(Callback):  # type: ignore[misc]  # the framework is Any to mypy: pyproject.toml does not follow it
    """What Lightning's loop knows, for an integration: steps with samples, lr and step time,
    epochs, failures, checkpoints, and (``losses=True``) the loss ``training_step`` returned
    and the validation and test metrics. Both the callback and the logger use it."""

    def __init__(self, owner: Integration, losses: bool) -> None:
        self.owner = owner
        self.losses = losses
        self._samples = 0
        self._micro_losses: list[float] = []
        self._last_step: int | None = None
        self._step_started: float | None = None
        #: the learning rate this optimizer step uses (read before the schedulers step)
        self._lr: float | None = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        run = self.owner.run
        if run is not None:
            run.begin_epoch(trainer.current_epoch)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        run = self.owner.run
        if run is not None:
            self.owner.flush()
            run.end_epoch()

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._last_step is None:
            self._last_step = trainer.global_step
        if self._step_started is None:  # the first micro-batch of this optimizer step
            self._step_started = time.perf_counter()
            if trainer.optimizers and trainer.optimizers[0].param_groups:
                self._lr = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.owner.run is None:
            return
        self._samples += extract_batch_size(batch)
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if self.losses and loss is not None:
            # automatic optimization divides training_step's loss by accumulate_grad_batches
            scale = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
            self._micro_losses.append(float(loss) * scale)
        if trainer.global_step == self._last_step:
            return  # gradient accumulation: the optimizer has not stepped yet
        self._last_step = trainer.global_step
        step_s = None if self._step_started is None else time.perf_counter() - self._step_started
        self._step_started = None
        values: dict[str, Any] = {"samples": self._samples}
        self._samples = 0
        if self._micro_losses:
            values["loss"] = sum(self._micro_losses) / len(self._micro_losses)
            self._micro_losses = []
        if self._lr is not None:
            values["lr"] = self._lr
        self.owner.step(trainer.global_step, values, step_s)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.losses and not trainer.sanity_checking:
            self._evaluated(trainer)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.losses:
            self._evaluated(trainer)

    def _evaluated(self, trainer: Trainer) -> None:
        report = split(trainer.callback_metrics)
        self.owner.evaluate(trainer.global_step, report.evals, main_process=trainer.is_global_zero)

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        run = self.owner.run
        if run is not None and trainer.is_global_zero and not isinstance(self.owner, Logger):
            # a TraintelLogger records the save in after_save_checkpoint, with its path: one
            # checkpoint event per save
            self.owner.flush()
            run.event("checkpoint", step=trainer.global_step)

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self.owner.failed(exception)


class TraintelLogger(Logger, Integration):  # type: ignore[misc]  # the framework is Any to mypy: pyproject.toml does not follow it
    """Lightning's logger slot. Keyword arguments go to ``traintel.init`` when it starts the
    run (``project``, ``name``, ``dir``, ...)."""

    source = "lightning"

    def __init__(
        self,
        project: str | None = None,
        name: str | None = None,
        **init_options: Unpack[InitOptions],
    ) -> None:
        Logger.__init__(self)
        Integration.__init__(self, project, name, **init_options)
        self._hparams: dict[str, Any] = {}
        #: the run id chosen before the run starts (Lightning asks ``version`` first)
        self._chosen_id: str | None = None
        self._trainer: weakref.ref[Trainer] | None = None

    @property
    def name(self) -> str:
        return "traintel"

    @property
    def version(self) -> str:
        """The run id, which names the checkpoint directory
        (``<root>/traintel/<run-id>/checkpoints``). Lightning asks before the run starts, so
        the id is chosen then: the user's ``run_id=``, the launcher's, or a new one (in a
        multi-rank job without a launcher id, rank 0's wins when the run starts; Lightning
        saves checkpoints from rank 0)."""
        run = self.run
        if run is not None:
            return run.id
        if self._chosen_id is None:
            self._chosen_id = self.init_options.get("run_id") or launcher_run_id() or new_run_id()
        return self._chosen_id

    def _start(self, trainer: Trainer | None) -> None:
        """Start (or join) the run, once Lightning has shown the Trainer (or first reports)."""
        if trainer is None:
            self.open_run({"hparams": self._hparams})
            return
        fitting = trainer.state.fn == "fit"
        run_id = self.init_options.get("run_id") or agree_run_id(self.version, trainer.world_size)
        self.open_run(
            _config(trainer, self._hparams),
            total_steps=_planned_steps(trainer) if fitting else None,
            framework_bar=trainer.progress_bar_callback is not None,
            initial_step=trainer.global_step,
            run_id=run_id,
        )
        if not any(isinstance(c, _LoopRecorder) and c.owner is self for c in trainer.callbacks):
            trainer.callbacks.append(_LoopRecorder(self, losses=False))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        params = vars(params) if isinstance(params, argparse.Namespace) else dict(params)
        run = self.run
        if run is None:
            self._hparams = params  # the run starts when Lightning shows the Trainer next
        else:
            run.event("framework_config", source=self.source, config=params)

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        """Lightning calls this with the module right after the hyperparameters, on every rank
        and for every stage (fit, validate, test, predict): the Trainer is then known."""
        try:
            trainer = model.trainer
        except (AttributeError, RuntimeError):  # a module not attached to a Trainer
            trainer = None
        if trainer is not None:
            self._trainer = weakref.ref(trainer)
            self._start(trainer)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        trainer = self._trainer() if self._trainer is not None else None
        if self.run is None:
            self._start(trainer)
        run = self.run
        if run is None:
            return
        # the global step after the optimizer step; Lightning passes the steps before it during
        # fit and after it in validate/test, so its own number is off by one in one of them
        at = (
            trainer.global_step
            if trainer is not None
            else (run.state.step + 1 if step is None else step + 1)
        )
        report = split(metrics)
        if report.evals:
            self.evaluate(at, report.evals, main_process=run.rank == 0)
        if report.steps:
            self.step(at, report.steps)
        if report.epoch:
            self.values(at, report.epoch)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        run = self.run
        if run is not None:
            self.flush()
            run.event("checkpoint", path=_saved_path(checkpoint_callback))

    def finalize(self, status: str) -> None:
        """Lightning's end of a stage: the run stays open for the next stage (``validate``
        after ``fit``); ``failed`` records the exception being handled (Lightning calls this
        from its ``except`` block, before the exception reaches anyone else)."""
        if status == "failed":
            exc = sys.exc_info()[1]
            if exc is not None:
                self.failed(exc)
            else:
                self.finish("failed")
            return
        self.flush()


class TraintelCallback(_LoopRecorder, Integration):
    """Every optimizer step with the loss ``training_step`` returned, epochs, evaluations,
    checkpoints and failures, from the training loop. Keyword arguments go to
    ``traintel.init`` when it starts the run."""

    source = "lightning"

    def __init__(
        self,
        project: str | None = None,
        name: str | None = None,
        **init_options: Unpack[InitOptions],
    ) -> None:
        _LoopRecorder.__init__(self, self, losses=True)
        Integration.__init__(self, project, name, **init_options)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if any(isinstance(logger, TraintelLogger) for logger in trainer.loggers):
            raise ValueError(
                "traintel: use TraintelLogger or TraintelCallback, not both (each "
                "would record the same steps)"
            )

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._open(trainer, pl_module, fitting=True)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.run is None and not trainer.sanity_checking:
            self._open(trainer, pl_module, fitting=False)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.run is None:
            self._open(trainer, pl_module, fitting=False)

    def _open(self, trainer: Trainer, pl_module: LightningModule, fitting: bool) -> None:
        self.open_run(
            _config(trainer, pl_module.hparams),
            total_steps=_planned_steps(trainer) if fitting else None,
            framework_bar=trainer.progress_bar_callback is not None,
            initial_step=trainer.global_step,
            new_job=fitting,
        )
        self._last_step = trainer.global_step


def _saved_path(checkpoint_callback: Any) -> str | None:
    """The file ModelCheckpoint just wrote (it keeps it in a private attribute; read it softly so
    a Lightning change cannot break a save)."""
    return getattr(checkpoint_callback, "_last_checkpoint_saved", None) or getattr(
        checkpoint_callback, "best_model_path", None
    )


__all__ = ["TraintelCallback", "TraintelLogger"]
