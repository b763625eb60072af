"""Hugging Face ``transformers.Trainer`` integration (docs/huggingface.md).

    import traintel                                     # makes report_to="traintel" known
    args = TrainingArguments(..., report_to="traintel")
    # or: Trainer(..., callbacks=[TraintelCallback(project="bert")])

One run per training job: the callback joins the active run (``traintel.init`` before
``trainer.train()``) or starts one at ``on_train_begin`` with the training arguments and the
model config as the run's config, ``state.max_steps`` as the planned total and the Trainer's
global step as where its steps start. The run stays open after training, so that
``trainer.evaluate()`` and ``trainer.predict()`` land in it at the step they were taken at; it
ends at the end of the process, at the next ``trainer.train()``, or at ``callback.finish()``.
``resume_from_checkpoint`` continues the same run: its id is kept in each checkpoint's
``trainer_state.json`` (the Trainer's ``ExportableState`` mechanism for callbacks).

Mapping: every optimizer step is one step line with ``samples`` (per-device batch size times
gradient accumulation, this rank's share) and ``tokens`` (when ``include_num_input_tokens_seen``
is on: the Trainer counts over all ranks, so each rank records its 1/world_size share); the
logging steps (``logging_steps``, 500 by default) add ``loss`` (the Trainer's mean over the steps
since the last logging step), ``lr`` and ``grad_norm``; ``on_evaluate`` and ``on_predict`` go to
``run.log_eval`` (throughput and runtime keys left out); ``on_save`` is a ``checkpoint`` event
with the path and the time the save took; the Trainer's closing ``train_runtime``/``train_loss``
report is a ``trainer_summary`` event. Evaluations and checkpoints are recorded on the main
process only.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from traintel.core.extras import require

require("traintel.integrations.huggingface", "integrations", "transformers")

# after the check that names the extra
from transformers import TrainerCallback, trainer_callback  # noqa: E402

from traintel.integrations.base import Integration, split  # noqa: E402

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments
    from typing_extensions import Unpack

    from traintel.run.settings import InitOptions

#: transformers' base for callbacks whose state goes into checkpoints (4.41 and later)
ExportableState: type = getattr(trainer_callback, "ExportableState", object)
#: keys only the Trainer's closing report has (it is recorded as one event)
_SUMMARY_KEYS = ("train_loss", "total_flos")


class TraintelCallback(TrainerCallback, ExportableState, Integration):  # type: ignore[misc]  # the framework is Any to mypy: pyproject.toml does not follow it
    """Records a Trainer's training job with traintel. Keyword arguments go to
    ``traintel.init`` when the callback starts the run (``project``, ``name``, ``dir``, ...)."""

    source = "transformers"

    def __init__(
        self,
        project: str | None = None,
        name: str | None = None,
        **init_options: Unpack[InitOptions],
    ) -> None:
        Integration.__init__(self, project, name, **init_options)
        #: the run a checkpoint's trainer_state.json named (set by the Trainer when it restores
        #: callback states, ``restore_callback_states_from_checkpoint=True``)
        self.run_id: str | None = None
        self._samples_per_step = 0
        self._tokens_seen = 0
        self._step_started: float | None = None
        self._last_callback = time.perf_counter()

    def state(self) -> dict[str, Any]:
        """What the Trainer writes into each checkpoint's ``trainer_state.json``: the run id,
        so that ``resume_from_checkpoint`` continues the run (``ExportableState``)."""
        run = self.run
        return {
            "args": {
                k: v for k, v in self.init_options.items() if isinstance(v, (str, int, float, bool))
            },
            "attributes": {"run_id": run.id if run is not None else self.run_id},
        }

    # -- lifecycle ------------------------------------------------------------------------
    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        self._trained = False  # until on_train_end: evaluations are of the model as it trains
        resumed = _checkpoint_run_id(state, type(self).__name__) if state.global_step else None
        resumed = resumed or (self.run_id if state.global_step else None)
        options: dict[str, Any] = {"run_id": resumed, "resume": True} if resumed else {}
        self._open(args, state, model, new_job=True, **options)
        batch = state.train_batch_size or args.per_device_train_batch_size
        self._samples_per_step = batch * args.gradient_accumulation_steps
        self._tokens_seen = state.num_input_tokens_seen

    def _open(
        self,
        args: TrainingArguments,
        state: TrainerState,
        model: Any,
        new_job: bool = False,
        **options: Any,
    ) -> None:
        config: dict[str, Any] = {"training_args": args.to_dict()}
        model_config = getattr(model, "config", None)
        if model_config is not None and hasattr(model_config, "to_dict"):
            config["model_config"] = model_config.to_dict()
        if (
            self.init_options.get("name") is None
            and args.run_name
            and args.run_name != args.output_dir
        ):
            options["name"] = args.run_name
        if self.init_options.get("project") is None and getattr(args, "project", None):
            from traintel.core import env

            if not env.TRAINTEL_PROJECT.get():
                options["project"] = args.project  # TrainingArguments(project=...), 5.x
        self.open_run(
            config,
            total_steps=state.max_steps or None,
            framework_bar=not args.disable_tqdm,
            initial_step=state.global_step,
            new_job=new_job,
            **options,
        )

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.flush()  # the run stays open: evaluate() and predict() come next
        self._trained = True
        run = self.run
        if run is not None and state.epoch is not None:
            # the epoch as HF reports it (2.25 for a run stopped a quarter into its third
            # epoch, as in its train() metrics and log_history), where `epochs` counts the
            # epochs that ended
            run.summary["epoch"] = state.epoch
        if (
            run is not None
            and state.is_world_process_zero
            and control.should_training_stop
            and state.max_steps
            and state.global_step < state.max_steps
        ):
            # a callback stopped the training before its planned end (EarlyStoppingCallback):
            # said, with what it watched and where the best was, and kept in summary.json
            stopper = (state.stateful_callbacks or {}).get("EarlyStoppingCallback") or {}
            if isinstance(stopper, list):  # several of them: the first one's (as HF restores)
                stopper = stopper[0] if stopper and isinstance(stopper[0], dict) else {}
            patience = (stopper.get("args") or {}).get("early_stopping_patience")
            stopped = "early_stopping" if stopper else "training_stopped"
            run.summary["stopped_by"] = stopped
            run.event(
                stopped,
                level="warning",
                step=state.global_step,
                planned_steps=state.max_steps,
                metric=_eval_key(args.metric_for_best_model),
                best_metric=state.best_metric,
                best_step=_best_step(state),
                patience=patience,
            )

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        run = self.run
        if run is not None:
            run.begin_epoch(math.floor((state.epoch or 0) + 1e-6))

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        run = self.run
        if run is not None:
            self.flush()
            # HF ends the epoch a callback stopped inside too (EarlyStoppingCallback): that
            # one is cut, not ended (its epoch is fractional: 2.25)
            epoch = state.epoch or 0.0
            run.end_epoch(cut=abs(epoch - round(epoch)) > 1e-6)

    # -- steps ----------------------------------------------------------------------------
    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._step_started is None:  # the first micro-batch of this optimizer step
            self._step_started = time.perf_counter()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.run is None:
            return
        step_s = None if self._step_started is None else time.perf_counter() - self._step_started
        self._step_started = None
        values: dict[str, Any] = {"samples": self._samples_per_step}
        seen = state.num_input_tokens_seen
        if seen > self._tokens_seen:
            values["tokens"] = (seen - self._tokens_seen) // max(1, args.world_size)
            self._tokens_seen = seen
        # no on_log follows this step unless the Trainer logs it: then write it now
        self.step(state.global_step, values, step_s, flush=not control.should_log)
        self._last_callback = time.perf_counter()

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        run = self.run
        if run is None or not logs:
            return
        if any(key in logs for key in _SUMMARY_KEYS):
            self.flush()
            if state.is_world_process_zero:
                run.event(
                    "trainer_summary",
                    level="info",
                    **{k: v for k, v in logs.items() if isinstance(v, (int, float))},
                )
            return
        report = split({k: v for k, v in logs.items() if not k.startswith("eval_")})
        self.step(state.global_step, report.steps, flush=True)  # evals arrive in on_evaluate
        self._last_callback = time.perf_counter()

    # -- evaluation, prediction and checkpoints --------------------------------------------
    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        self._evaluated(args, state, model, metrics)

    def on_predict(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        self._evaluated(args, state, model, metrics)

    def _evaluated(
        self,
        args: TrainingArguments,
        state: TrainerState,
        model: Any,
        metrics: Mapping[str, Any] | None,
    ) -> None:
        """``evaluate()``/``predict()`` metrics at the step they were taken at: in the training
        job's run, or a run of their own when no training came first."""
        if self.run is None:
            self._open(args, state, model)
        report = split(metrics or {})
        best = _checkpoint_step(state.best_model_checkpoint)
        if (
            getattr(self, "_trained", False)
            and args.load_best_model_at_end
            and best is not None
            and self.run is not None
            and state.is_world_process_zero
        ):
            # after train(): the Trainer reloaded the best checkpoint, so these figures are of
            # the model of step `best`, not of the last step
            self.run.event(
                "best_model_evaluated",
                step=state.global_step,
                model_step=best,
                checkpoint=state.best_model_checkpoint,
            )
        self.evaluate(
            state.global_step,
            {**report.steps, **report.evals},
            main_process=state.is_world_process_zero,
        )
        self._last_callback = time.perf_counter()

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        run = self.run
        if run is None:
            return
        self.flush()
        # the Trainer saves right before this call and right after the previous one
        took = time.perf_counter() - self._last_callback
        if state.is_world_process_zero:
            run.event(
                "checkpoint",
                step=state.global_step,
                duration_s=round(took, 3),
                path=os.path.join(args.output_dir, f"checkpoint-{state.global_step}"),
            )
        self._last_callback = time.perf_counter()


def _best_step(state: TrainerState) -> int | None:
    """The step of the best evaluation as the Trainer keeps it (``best_global_step``, where the
    Trainer has it), also where no checkpoint of it exists to reload (saved every 500 steps,
    evaluated every 10); else the step of the best checkpoint."""
    step = getattr(state, "best_global_step", None)
    if type(step) is int and step > 0:
        return step
    return _checkpoint_step(state.best_model_checkpoint)


def _eval_key(metric: str | None) -> str | None:
    """The key the Trainer and EarlyStoppingCallback read ``metric_for_best_model`` as
    (``"loss"`` is ``eval_loss``): the name the eval lines have."""
    if not metric or metric.startswith("eval_"):
        return metric
    return f"eval_{metric}"


def _checkpoint_step(path: str | None) -> int | None:
    """The step of a Trainer checkpoint directory (``.../checkpoint-35``), else None."""
    name = os.path.basename(os.path.normpath(path)) if path else ""
    number = name.rpartition("-")[2]
    return int(number) if name.startswith("checkpoint-") and number.isdigit() else None


def _checkpoint_run_id(state: TrainerState, name: str) -> str | None:
    """The run id a resumed checkpoint's ``trainer_state.json`` kept for this callback."""
    saved = (getattr(state, "stateful_callbacks", None) or {}).get(name)
    if isinstance(saved, list):  # several callbacks of one class: the first one's
        saved = saved[0] if saved else None
    attributes = saved.get("attributes") if isinstance(saved, dict) else None
    run_id = attributes.get("run_id") if isinstance(attributes, dict) else None
    return run_id if isinstance(run_id, str) else None


def register(registry: ModuleType | None = None) -> None:
    """Add ``"traintel"`` to transformers' ``report_to`` names (``registry``: transformers'
    ``integration_utils`` module). ``import traintel`` does this already, when transformers'
    integrations are imported (``traintel.integrations.registration``)."""
    if registry is None:
        from transformers.integrations import integration_utils

        registry = integration_utils
    registry.INTEGRATION_TO_CALLBACK["traintel"] = TraintelCallback
