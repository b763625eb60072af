"""PyTorch Lightning integration: a ``Logger`` and a ``Callback``; use one of them.

    Trainer(logger=TraintelLogger(project="mnist"), log_every_n_steps=1)   # Lightning's logger slot
    Trainer(callbacks=[TraintelCallback(project="mnist")])                 # keeps your own logger

``TraintelLogger`` sees what Lightning hands to loggers: the hyperparameters and the values the
module logs with ``self.log``, every ``log_every_n_steps`` (set it to 1 for a line per step).
``TraintelCallback`` sees the loop itself: a line for every optimizer step with ``loss`` (the
``training_step`` output), ``lr`` and ``samples`` (the batch size), however often Lightning
logs; the module's other ``self.log`` values stay with your logger.

Both map the same way otherwise. Names starting with ``val``, ``valid``, ``eval`` or ``test``
are evaluation metrics (``run.log_eval``); ``train_loss``/``train/loss`` is ``loss`` and
``lr``/``learning_rate`` is ``lr``; other names become run.log keys as they are (``train/acc``).
A saved checkpoint is a ``checkpoint`` event. Evaluations and checkpoints are
recorded on global rank 0 only; steps on every rank.

The run's config is fixed when it starts, so both start it lazily: the logger when Lightning
passes the hyperparameters (or at the first metrics if there are none), the callback when
training starts, with ``pl_module.hparams``. If a run is already active (``traintel.init``
before ``trainer.fit``), they record into it and the hyperparameters become a
``framework_config`` event. They finish only runs they started.
"""

from __future__ import annotations

import argparse
import re
import time
from typing import TYPE_CHECKING, Any

from ..extras import require

require("traintel.integrations.lightning", "integrations", "lightning")

# after the check that names the extra
from lightning.pytorch import Callback  # noqa: E402
from lightning.pytorch.loggers import Logger  # noqa: E402
from lightning.pytorch.utilities.data import extract_batch_size  # noqa: E402

from ..record.format import EndStatus
from . import KNOWN, StepBuffer, metric_name, start_run

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer
    from typing_extensions import Unpack

    from ..run import Run
    from ..settings import InitOptions

_EVAL = re.compile(r"^(val|valid|validation|eval|test)([_/.-]|$)", re.IGNORECASE)
#: Lightning's ``finalize`` statuses -> traintel's
_STATUS: dict[str, EndStatus] = {"success": "finished", "finished": "finished", "failed": "failed"}


def split_metrics(metrics: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """(step values, eval values) from Lightning metric names and tensor or number values."""
    steps: dict[str, float] = {}
    evals: dict[str, float] = {}
    for name, value in metrics.items():
        if name == "epoch":
            continue
        value = float(value)
        if _EVAL.match(name):
            evals[name] = value
        else:
            base = re.sub(r"_step$", "", name)  # Lightning's suffix for per-step-and-epoch values
            plain = re.sub(r"^train[_/]", "", base)
            steps[KNOWN.get(base) or KNOWN.get(plain) or metric_name(base)] = value
    return steps, evals


class TraintelLogger(Logger):
    """Lightning's logger slot. Keyword arguments go to ``traintel.init`` when it starts the run."""

    def __init__(self, project: str | None = None, name: str | None = None,
                 **init_options: Unpack[InitOptions]) -> None:
        super().__init__()
        self.init_options: dict[str, Any] = {"project": project, "name": name, **init_options}
        self._created = False
        #: the run being recorded and its step lines; None before it starts and after the end
        self._steps: StepBuffer | None = None
        self._epoch: int | None = None
        self._version: str | None = None

    @property
    def run(self) -> Run | None:
        """The run being recorded (None before the first report and after ``finalize``)."""
        return self._steps.run if self._steps is not None else None

    @property
    def name(self) -> str:
        return "traintel"

    @property
    def version(self) -> str:
        """Names the checkpoint directory (``<root>/traintel/<version>/checkpoints``). Lightning
        asks before it passes the hyperparameters that start the run, so until a run exists this
        is the time the logger was first asked."""
        if self._steps is not None:
            return self._steps.run.id
        if self._version is None:
            self._version = time.strftime("%Y%m%d-%H%M%S")
        return self._version

    def _ensure_steps(self, config: dict[str, Any]) -> StepBuffer:
        if self._steps is None:
            # a Logger cannot see the Trainer's enable_progress_bar: Lightning's default is on
            run, self._created = start_run("lightning", config, None, self.init_options,
                                           framework_bar=True)
            self._steps = StepBuffer(run)
        return self._steps

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        params = vars(params) if isinstance(params, argparse.Namespace) else dict(params)
        if self._steps is None:
            self._ensure_steps(params)
        else:
            self._steps.run.event("framework_config", source="lightning", config=params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        steps = self._ensure_steps({})
        run = steps.run
        epoch = metrics.get("epoch")
        if epoch is not None and int(epoch) != self._epoch:
            steps.flush()
            if self._epoch is not None:
                run.end_epoch()
            self._epoch = int(epoch)
            run.begin_epoch(self._epoch)
        values, evals = split_metrics(metrics)
        # Lightning passes the optimizer steps done before this one; traintel counts completed ones
        done = run.state.step + 1 if step is None else step + 1
        if evals:
            steps.flush()
            if run.rank == 0:
                run.log_eval(step=done, goals=None, **evals)
        if values:
            steps.add(done, values)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if self._steps is not None:
            self._steps.flush()
            self._steps.run.event("checkpoint", path=_saved_path(checkpoint_callback))

    def finalize(self, status: str) -> None:
        steps = self._steps
        if steps is None:
            return
        steps.flush()
        if self._created:
            steps.run.finish(_STATUS.get(status, "finished"))
        elif self._epoch is not None:
            steps.run.end_epoch()
        self._steps = None


class TraintelCallback(Callback):
    """Every optimizer step, epochs, evaluations and checkpoints, from the training loop.
    Keyword arguments go to ``traintel.init`` when it starts the run."""

    def __init__(self, project: str | None = None, name: str | None = None,
                 **init_options: Unpack[InitOptions]) -> None:
        self.init_options: dict[str, Any] = {"project": project, "name": name, **init_options}
        self.run: Run | None = None
        self._created = False
        self._samples = 0
        self._last_step = 0
        self._step_started: float | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if any(isinstance(logger, TraintelLogger) for logger in trainer.loggers):
            raise ValueError("traintel: use TraintelLogger or TraintelCallback, not both (each "
                             "would record the same steps)")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        total = trainer.estimated_stepping_batches
        config = {"hparams": dict(pl_module.hparams),
                  "trainer": {"max_epochs": trainer.max_epochs, "max_steps": trainer.max_steps,
                              "accumulate_grad_batches": trainer.accumulate_grad_batches,
                              "precision": str(trainer.precision),
                              "world_size": trainer.world_size}}
        self.run, self._created = start_run(
            "lightning", config, int(total) if total != float("inf") else None, self.init_options,
            framework_bar=trainer.progress_bar_callback is not None)
        self._last_step = trainer.global_step

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.run is not None:
            self.run.begin_epoch(trainer.current_epoch)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.run is not None:
            self.run.end_epoch()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._step_started is None:  # the first micro-batch of this optimizer step
            self._step_started = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self.run is None:
            return
        self._samples += extract_batch_size(batch)
        if trainer.global_step == self._last_step:
            return  # gradient accumulation: the optimizer has not stepped yet
        self._last_step = trainer.global_step
        step_s = None if self._step_started is None else time.perf_counter() - self._step_started
        self._step_started = None
        values: dict[str, Any] = {"samples": self._samples}
        self._samples = 0
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            values["loss"] = loss
        if trainer.optimizers and trainer.optimizers[0].param_groups:
            values["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        self.run.log(step=trainer.global_step, step_s=step_s, **values)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.run is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        _, evals = split_metrics(trainer.callback_metrics)
        if evals:
            self.run.log_eval(step=trainer.global_step, goals=None, **evals)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if self.run is not None and trainer.is_global_zero:
            self.run.event("checkpoint", step=trainer.global_step)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule,
                     exception: BaseException) -> None:
        if self.run is None:
            return
        self.run.error(exception)
        if self._created:
            self.run.finish("interrupted" if isinstance(exception, KeyboardInterrupt)
                            else "failed")
        self.run = None

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.run is not None and self._created:
            self.run.finish()
        self.run = None


def _saved_path(checkpoint_callback: Any) -> str | None:
    """The file ModelCheckpoint just wrote (it keeps it in a private attribute; read it softly so
    a Lightning change cannot break a save)."""
    return getattr(checkpoint_callback, "_last_checkpoint_saved", None) or \
        getattr(checkpoint_callback, "best_model_path", None)
