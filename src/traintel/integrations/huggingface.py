"""Hugging Face ``transformers.Trainer`` integration.

    from traintel.integrations.huggingface import TraintelCallback
    trainer = Trainer(model, args, ..., callbacks=[TraintelCallback(project="bert")])

The callback joins the active run (``traintel.init`` before ``trainer.train()``) or starts one
at ``on_train_begin`` with the training arguments and the model config as the run's config and
``state.max_steps`` as the planned total, and finishes the runs it started.

Mapping: every optimizer step is one step line with ``samples`` (per-device batch size times
gradient accumulation, this rank's share) and ``tokens`` (when ``include_num_input_tokens_seen``
is on: the Trainer counts over all ranks, so each rank records its 1/world_size share); the
logging steps add ``loss``, ``lr`` and ``grad_norm``; ``on_evaluate`` goes to ``run.log_eval``
(throughput and runtime keys left out); ``on_save`` is a ``checkpoint`` event with the path and
the time the save took; the Trainer's closing ``train_runtime``/``train_*_per_second`` report is
a ``trainer_summary`` event. Evaluations and checkpoints are recorded on the main process only.

``report_to="traintel"``: transformers has no public registry for third-party integrations;
its ``report_to`` names are keys of a module-level dict. ``register()`` adds ``"traintel"`` to
that dict, which works with transformers 4.x-5.x but is not an API transformers promises;
``callbacks=[TraintelCallback()]`` is the supported way.
"""

from __future__ import annotations

import math
import os
import time
from typing import TYPE_CHECKING, Any

from ..extras import require

require("traintel.integrations.huggingface", "integrations", "transformers")

from transformers import TrainerCallback  # noqa: E402  (after the check that names the extra)

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments
    from typing_extensions import Unpack

    from ..run import Run
    from ..settings import InitOptions

from . import KNOWN, StepBuffer, metric_name, start_run

#: keys about the loop rather than the model (traintel measures throughput itself)
_LOOP_SUFFIXES = ("_runtime", "_per_second", "_model_preparation_time")
_LOOP_KEYS = ("epoch", "num_input_tokens_seen")
#: keys only the Trainer's closing report has (it is recorded as one event)
_SUMMARY_KEYS = ("train_loss", "total_flos")


class TraintelCallback(TrainerCallback):
    """Records a Trainer run with traintel. Keyword arguments go to ``traintel.init`` when the
    callback starts the run (``project``, ``name``, ``dir``, ...)."""

    def __init__(self, project: str | None = None, name: str | None = None,
                 **init_options: Unpack[InitOptions]) -> None:
        self.init_options: dict[str, Any] = {"project": project, "name": name, **init_options}
        self._created = False
        #: the run being recorded and its step lines; None outside training
        self._steps: StepBuffer | None = None
        self._samples_per_step = 0
        self._tokens_seen = 0
        self._step_started: float | None = None
        self._last_callback = time.perf_counter()

    @property
    def run(self) -> Run | None:
        """The run being recorded (None outside training)."""
        return self._steps.run if self._steps is not None else None

    # -- lifecycle ------------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, model: Any = None, **kwargs: Any) -> None:
        config: dict[str, Any] = {"training_args": args.to_dict()}
        model_config = getattr(model, "config", None)
        if model_config is not None and hasattr(model_config, "to_dict"):
            config["model_config"] = model_config.to_dict()
        options = dict(self.init_options)
        if options.get("name") is None and args.run_name and args.run_name != args.output_dir:
            options["name"] = args.run_name
        run, self._created = start_run("transformers", config, state.max_steps or None,
                                       options, framework_bar=not args.disable_tqdm)
        self._steps = StepBuffer(run)
        batch = state.train_batch_size or args.per_device_train_batch_size
        self._samples_per_step = batch * args.gradient_accumulation_steps
        self._tokens_seen = state.num_input_tokens_seen

    def on_train_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: Any) -> None:
        steps = self._steps
        if steps is None:
            return
        steps.flush()
        if self._created:
            steps.run.finish()
        self._steps = None

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: Any) -> None:
        if self._steps is not None:
            self._steps.run.begin_epoch(math.floor((state.epoch or 0) + 1e-6))

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: Any) -> None:
        if self._steps is not None:
            self._steps.run.end_epoch()

    # -- steps ----------------------------------------------------------------------------
    def on_step_begin(self, args: TrainingArguments, state: TrainerState,
                      control: TrainerControl, **kwargs: Any) -> None:
        if self._step_started is None:  # the first micro-batch of this optimizer step
            self._step_started = time.perf_counter()

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: Any) -> None:
        steps = self._steps
        if steps is None:
            return
        step_s = None if self._step_started is None else time.perf_counter() - self._step_started
        self._step_started = None
        values: dict[str, Any] = {"samples": self._samples_per_step}
        seen = state.num_input_tokens_seen
        if seen > self._tokens_seen:
            values["tokens"] = (seen - self._tokens_seen) // max(1, args.world_size)
            self._tokens_seen = seen
        steps.add(state.global_step, values, step_s)
        if not control.should_log:  # no on_log follows for this step: write it now
            steps.flush()
        self._last_callback = time.perf_counter()

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        steps = self._steps
        if steps is None or not logs:
            return
        if any(key in logs for key in _SUMMARY_KEYS):
            if state.is_world_process_zero:
                steps.flush()
                steps.run.event("trainer_summary", level="info", **_numbers(logs))
            return
        values = {}
        for key, value in _numbers(logs).items():
            if key.startswith("eval_") or key in _LOOP_KEYS or key.endswith(_LOOP_SUFFIXES):
                continue  # evals arrive in on_evaluate
            values[KNOWN.get(key) or metric_name(key)] = value
        if values:
            steps.add(state.global_step, values)
        steps.flush()
        self._last_callback = time.perf_counter()

    # -- evaluation and checkpoints -------------------------------------------------------
    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    metrics: dict[str, float] | None = None, **kwargs: Any) -> None:
        steps = self._steps
        if steps is None:
            return
        steps.flush()
        evals = {key: value for key, value in _numbers(metrics or {}).items()
                 if key not in _LOOP_KEYS and not key.endswith(_LOOP_SUFFIXES)}
        if evals and state.is_world_process_zero:
            steps.run.log_eval(step=state.global_step, goals=None, **evals)
        self._last_callback = time.perf_counter()

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        steps = self._steps
        if steps is None:
            return
        steps.flush()
        # the Trainer saves right before this call and right after the previous one
        took = time.perf_counter() - self._last_callback
        if state.is_world_process_zero:
            steps.run.event("checkpoint", step=state.global_step, duration_s=round(took, 3),
                            path=os.path.join(args.output_dir,
                                              f"checkpoint-{state.global_step}"))
        self._last_callback = time.perf_counter()


def register() -> None:
    """Let ``TrainingArguments(report_to="traintel")`` add ``TraintelCallback`` (see the module
    docstring: this edits a transformers-internal dict)."""
    from transformers.integrations import integration_utils

    integration_utils.INTEGRATION_TO_CALLBACK["traintel"] = TraintelCallback


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
