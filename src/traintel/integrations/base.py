"""What every framework integration is, whatever the framework: Lightning's loggers package is
the model (one small base, each framework's class on top, one contract test over all of them in
``tests/integrations/test_all.py``).

An integration turns a framework's reports into one run:

- **one run per training job.** It joins the run the user started (``traintel.init`` before the
  framework's training call: the user finishes it) or starts one at the framework's first report
  (then it finishes it). A run it started stays open through evaluation, testing and prediction
  after training, so that they land in the same run at the right step; it ends at the end of the
  process (traintel's exit hook), when the framework starts the next training job, or at
  :meth:`Integration.finish`;
- **one step line per optimizer step,** although a framework reports a step's values in several
  calls (:class:`StepBuffer`), numbered by the framework's global step; where training starts is
  said as ``initial_step`` so that a sparse first line counts every step it stands for;
- **names mapped one way** (:func:`split`): evaluation metrics by prefix, the loop's own keys
  left out, per-epoch aggregates as epoch-level values, training names as ``run.log`` keys;
- **failures kept with their exception,** classified, in the record and the crash report;
- evaluations on the main process only (every rank computes the same), steps on every rank.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, cast

from traintel.core import env
from traintel.core.catalog import LOGGED_NAME_FOR_KEY
from traintel.core.validate import NAME_PATTERN, suggest_name
from traintel.run.live import newest
from traintel.run.sweeps import early_end

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from traintel.record.format import EndStatus
    from traintel.run.facade import Run
    from traintel.run.settings import InitOptions


log = logging.getLogger("traintel.integrations")

#: the frameworks' names for traintel's known per-step keys (after a ``train`` prefix is dropped)
KNOWN = LOGGED_NAME_FOR_KEY
#: keys about the loop rather than the model: traintel counts steps and epochs itself
LOOP_KEYS = frozenset({"epoch", "step", "global_step", "iter", "num_input_tokens_seen"})
#: suffixes of loop figures (throughput, runtimes): traintel measures them itself
LOOP_SUFFIXES = ("_runtime", "_per_second", "_model_preparation_time")
_EVAL = re.compile(r"^(val|valid|validation|eval|test)([_/.\-]|$)", re.IGNORECASE)
_TRAIN = re.compile(r"^train([_/.\-])", re.IGNORECASE)


class Split(NamedTuple):
    """A framework's report, sorted the one way every integration sorts it."""

    #: values of the training step (``run.log``)
    steps: dict[str, float]
    #: evaluation metrics (``run.log_eval``)
    evals: dict[str, float]
    #: per-epoch aggregates (Lightning's ``*_epoch``): epoch-level values (``run.log_values``)
    epoch: dict[str, float]


def record_name(name: str) -> str:
    """A framework's metric name as the record's: ``loss``/``train_loss``/``train/loss`` are
    ``loss``, ``learning_rate``/``lr`` are ``lr``; other names as they are when traintel's name
    grammar takes them (``train/mae``, ``val/mae``, ``eval.top1``), else the nearest name it
    takes (``val acc`` -> ``val_acc``). One mapping for every integration."""
    plain = _TRAIN.sub("", name)
    known = KNOWN.get(name) or KNOWN.get(plain)
    if known:
        return known
    return name if NAME_PATTERN.fullmatch(name) else suggest_name(name) or "_"


def split(report: Mapping[str, Any], train_marks_evals: bool = False) -> Split:
    """Sort a report: loop keys (``epoch``, ``step``, runtimes, rates) and non-numbers are left
    out; names ending ``_epoch`` are epoch aggregates; names starting ``val``, ``valid``,
    ``eval`` or ``test`` are evaluation metrics, and so is every other name of a report that
    carries them unless it starts with ``train`` or is a known step key (``perplexity`` logged
    with ``eval_loss``); the rest are step values, with Lightning's ``_step`` suffix dropped.

    ``train_marks_evals``: a report that names its training values ``train_*`` holds
    evaluations in its other names (Accelerate's one ``accelerator.log`` per epoch with
    ``train_loss``, ``accuracy`` and ``f1``); for a framework without a call of its own for
    evaluations."""
    numbers = {
        key: float(value)
        for key, value in report.items()
        if key not in LOOP_KEYS and not key.endswith(LOOP_SUFFIXES) and _is_number(value)
    }
    evaluating = any(
        _EVAL.match(key) or (train_marks_evals and _TRAIN.match(key)) for key in numbers
    )
    out = Split({}, {}, {})
    for key, value in numbers.items():
        if key.endswith("_epoch") and not _EVAL.match(key):
            out.epoch[record_name(key)] = value
        elif _EVAL.match(key) or (
            evaluating and not _TRAIN.match(key) and record_name(key) not in KNOWN.values()
        ):
            out.evals[record_name(key)] = value
        else:
            out.steps[record_name(key.removesuffix("_step"))] = value
    return out


def _is_number(value: object) -> bool:
    """A number, a NumPy scalar or a 0-d tensor; not a bool, a string or a list."""
    if isinstance(value, bool) or isinstance(value, (str, bytes)):
        return False
    try:
        float(value)  # type: ignore[arg-type]  # anything float() takes
    except (TypeError, ValueError):
        return False
    return True


class StepBuffer:
    """One record line per training step, although a framework reports a step's values in
    several calls (Trainer: ``on_step_end`` then ``on_log``; Lightning: the loop's callback then
    the logger). Values for a step already written (a per-epoch aggregate) become a ``values``
    line (``run.log_values``), not a second step."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.step: int | None = None
        self.values: dict[str, Any] = {}
        self.step_s: float | None = None
        self.written = -1

    def add(self, step: int, values: Mapping[str, Any], step_s: float | None = None) -> None:
        if step != self.step:
            self.flush()
            if step <= self.written:
                if values:
                    self.run.log_values(dict(values), step=step)
                return
            self.step = step
        self.values.update(values)
        if step_s is not None:
            self.step_s = step_s

    def flush(self) -> None:
        if self.step is not None and self.values:
            self.run.log(self.values, step=self.step, step_s=self.step_s)
            self.written = self.step
        self.step = None
        self.values = {}
        self.step_s = None


class Integration:
    """The framework-free part of an integration. Keyword arguments go to ``traintel.init``
    when it starts the run (``project``, ``name``, ``dir``, ...). A subclass calls
    :meth:`open_run` when the framework starts a job or reports before one, :meth:`step`,
    :meth:`values` and :meth:`evaluate` as it reports, :meth:`failed` when it fails, and
    :meth:`finish` when it ends."""

    #: the framework, as the ``framework_config`` event and log lines name it
    source: ClassVar[str]
    #: runs an integration started: left open after training for evaluation, they end when
    #: any integration starts the next training job
    opened: ClassVar[weakref.WeakSet[Run]] = weakref.WeakSet()

    def __init__(
        self,
        project: str | None = None,
        name: str | None = None,
        **init_options: Unpack[InitOptions],
    ) -> None:
        self.init_options: dict[str, Any] = {"project": project, "name": name, **init_options}
        #: whether this integration started its run (then it also finishes it)
        self.created = False
        self._buffer: StepBuffer | None = None

    @property
    def run(self) -> Run | None:
        """The run being recorded (None before the framework's first report and after the
        run was finished)."""
        buffer = self._buffer
        if buffer is not None and buffer.run.finished:
            self._buffer = buffer = None
        return buffer.run if buffer is not None else None

    def open_run(
        self,
        config: Mapping[str, Any],
        *,
        total_steps: int | None = None,
        framework_bar: bool = False,
        initial_step: int | None = None,
        new_job: bool = False,
        **options: Any,
    ) -> Run:
        """The run to record into: the one already open, unless ``new_job`` (the framework
        starts training again) and it is a run this integration started and that has taken
        steps: then that one is finished and a new one begins. A run the user started is
        joined and its configuration gets the framework's as a ``framework_config`` event.
        ``options`` override the init options (a resumed run's ``run_id`` and ``resume``).
        When the framework draws its own progress bar (``framework_bar``), a run started here
        shows none, unless the user asked for one: two live bars on one terminal overwrite each
        other."""
        run = self.run
        wanted = options.get("run_id")
        if (
            run is not None
            and new_job
            and self.created
            and wanted != run.id
            and (run.state.steps_taken or wanted is not None)
        ):
            self.finish()  # the framework trains again: the last job's run ends
            run = None
        if run is None:
            live = cast("Run | None", newest())  # every live run is a Run
            if live is not None and live in Integration.opened:
                # another integration's job (another Trainer) left its run open for evaluation
                if new_job and wanted != live.id:
                    live.finish()
                else:
                    run, self.created = live, True
        if run is None:
            run = self._join_or_start(config, total_steps, framework_bar, initial_step, options)
        elif total_steps and run.state.total_steps is None:
            run.set_total_steps(total_steps)
        if self._buffer is None or self._buffer.run is not run:
            self._buffer = StepBuffer(run)
        return run

    def _join_or_start(
        self,
        config: Mapping[str, Any],
        total_steps: int | None,
        framework_bar: bool,
        initial_step: int | None,
        options: Mapping[str, Any],
    ) -> Run:
        from traintel.run.facade import Run
        from traintel.run.settings import settings_from

        run = cast("Run | None", newest())
        if run is not None:  # the user's: joined, and left for the user to finish
            run.event("framework_config", source=self.source, config=dict(config))
            if total_steps and run.state.total_steps is None:
                run.set_total_steps(total_steps)
            self.created = False
            return run
        chosen = {k: v for k, v in {**self.init_options, **options}.items() if v is not None}
        chosen.setdefault("total_steps", total_steps or None)
        chosen.setdefault("initial_step", initial_step)
        quiet_bar = framework_bar and "progress" not in chosen and not env.TRAINTEL_PROGRESS.get()
        if quiet_bar:
            chosen["progress"] = "off"
        run = Run(settings_from({**chosen, "config": dict(config)}))
        self.created = True
        Integration.opened.add(run)
        if quiet_bar:
            log.info(
                "%s shows its own progress bar, so traintel's is off (progress='lines' or "
                "TRAINTEL_PROGRESS=lines adds traintel's progress lines)",
                self.source,
            )
        return run

    def step(
        self, step: int, values: Mapping[str, Any], step_s: float | None = None, flush: bool = False
    ) -> None:
        """Values of training step ``step``, merged with the step's other reports into one
        line (written at the next step, an evaluation or the end; now with ``flush``)."""
        buffer = self._buffer
        if buffer is not None and not buffer.run.finished:
            buffer.add(step, values, step_s)
            if flush:
                buffer.flush()

    def values(self, step: int, values: Mapping[str, Any]) -> None:
        """Epoch-level values at ``step``: neither counted nor timed as a step."""
        run = self.run
        if run is not None and values:
            self.flush()
            run.log_values(dict(values), step=step)

    def evaluate(self, step: int, metrics: Mapping[str, Any], main_process: bool = True) -> None:
        """Evaluation metrics taken at ``step``, with best-so-far by name or ``goals=``;
        recorded by the main process only."""
        run = self.run
        if run is None:
            return
        self.flush()
        if metrics and main_process:
            run.log_eval(step=step, goals=None, **metrics)

    def failed(self, exc: BaseException) -> None:
        """The framework failed with ``exc``: recorded (classified, with its traceback); a run
        this integration started ends ``failed`` (``interrupted`` for Ctrl-C and exits) with a
        crash report."""
        run = self.run
        if run is None:
            return
        self.flush()
        early = early_end(exc)  # a pruned or stopped trial: no failure (traintel.run.sweeps)
        if early is not None:
            if self.created:
                run.event(f"trial_{early}", reason=str(exc)[:500] or type(exc).__name__)
                run.finish(early)
            self._buffer = None
            return
        run.error(exc)
        if self.created:
            run.finish(
                "interrupted" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "failed"
            )
        self._buffer = None

    def flush(self) -> None:
        """Write the step being assembled, if any."""
        if self._buffer is not None and not self._buffer.run.finished:
            self._buffer.flush()

    def finish(self, status: EndStatus | None = None) -> None:
        """End the recording: the pending step written; a run this integration started is
        finished (``status``: default ``finished``, ``preempted`` after SIGTERM), a run the user
        started is left to the user."""
        run = self.run
        if run is None:
            return
        self.flush()
        if self.created:
            run.finish(status)
        self._buffer = None
