"""The run: a façade that wires the parts and owns the lifecycle (start, ``with``, finish).

Each part has its module in ``traintel.run.facade`` and gets what it needs, not the run (steps, tracing,
events, evals, instruments, hooks, resume), as do the record, export, samplers and outlets."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Literal, SupportsFloat

from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

from traintel.core.forks import ignore_in_child
from traintel.core.refusals import Refusals
from traintel.core.state import RunState
from traintel.core.validate import NameBudget, check_choice
from traintel.export import RunExport
from traintel.export.otlp import Sinks
from traintel.record.format import END_STATUSES, EndStatus, ErrorLine, Goal, Level, Severity
from traintel.record.job import write_job_summary
from traintel.record.pipeline import Pipeline
from traintel.record.summary import StepFigures
from traintel.record.writer import RecordWriter
from traintel.run import live
from traintel.run.config import ConfigView, RunConfig
from traintel.run.evals import Evaluations
from traintel.run.events import EventRecorder
from traintel.run.hooks import ProcessHooks
from traintel.run.identity import LiveStatus, RunIdentity
from traintel.run.instruments import Counter, Gauge, HistogramMaker, Instruments, Timer
from traintel.run.logger import ROOT, LoggerTree, console_handler
from traintel.run.outlets import Outlets
from traintel.run.progress import ProgressDisplay
from traintel.run.resume import Continuation, open_record
from traintel.run.settings import Settings
from traintel.run.steps import StepMethods, StepRecorder
from traintel.run.sweeps import end_status
from traintel.run.tracing import RunSpans, Span
from traintel.run.userlogs import for_run as user_logs
from traintel.run.usersummary import RunSummaryValues
from traintel.samplers import start_sampling

if TYPE_CHECKING:
    import torch

    from traintel.export.server import StatusServer
    from traintel.run.watch import Watch

#: set by traintel.testing: telemetry captured in memory, not exported; runs raise what they
#: would refuse (``strict=True``)
sinks_override: Sinks | None = None
strict_override = False


class Run(StepMethods):
    """One training run. Create it with ``traintel.init()``."""

    def __init__(self, settings: Settings) -> None:
        live.make_room(settings.reinit)
        self.settings = settings
        identity = self.identity = RunIdentity.from_settings(settings)
        self.id, self.project, self.name = identity.id, identity.project, identity.name
        self.rank, self.local_rank, self.world_size = (
            identity.rank,
            identity.local_rank,
            identity.world_size,
        )
        self.host, self.dir, self.labels = identity.host, identity.dir, identity.labels
        self._continuation = open_record(identity, settings.resume)  # the record's lock
        try:
            self._start(settings, identity, self._continuation)
        except BaseException:
            self._continuation.release()
            raise
        live.started(self)

    def _start(self, settings: Settings, identity: RunIdentity, continuation: Continuation) -> None:
        identity = self.identity = continuation.carried(identity)
        config = RunConfig.from_input(settings.config, settings.seed)
        self.config = ConfigView(
            config, lambda new, changed: self._events.config(new, "update", changed, self.dir)
        )
        self.seed = config.seed
        self.redactor = config.redactor  # the one redaction of all this run writes or exports
        self.state = state = RunState()
        self.refusals = refusals = Refusals(state, settings.strict or strict_override)
        state.total_steps = settings.total_steps
        continuation.restore(state, initial_step=settings.initial_step)
        before = continuation.before
        #: steps begin after initial_step (on resume: an older checkpoint) or the record's last
        initial_step = n if (n := settings.initial_step) is not None or not before else state.step
        if initial_step is not None:
            state.step = initial_step
        writer = self._writer = RecordWriter(
            self.dir,
            state,
            identity.record_fields,
            flush_interval=settings.flush_interval,
            max_bytes=settings.max_record_bytes,
            shutdown_s=settings.shutdown_timeout,
            figures=before.figures if before else StepFigures(initial_step=initial_step),
        )
        state.loss_key = writer.figures.loss_key = settings.loss or writer.figures.loss_key
        export = self.export = RunExport.start(
            state, self.labels, identity.info, settings.export_mode, writer.note, sinks_override
        )
        continuation.carry(export.histograms)  # the step-duration histogram goes on too
        writer.listeners.append(export.histograms.observe)
        self.registry, self.otlp = export.registry, export.otlp
        self.tracer = self.otlp.tracer if self.otlp else trace.NoOpTracer()
        self.progress = ProgressDisplay(
            state,
            mode=settings.progress if self.rank == 0 else "off",
            title=f"{self.project}/{self.name}",
            total_epochs=settings.total_epochs,
            interval=settings.progress_interval,
        )
        writer.start()
        self.names = NameBudget(settings.max_metric_names)  # of every API that takes a name
        self.spans = spans = RunSpans(
            self.tracer,
            {**self.labels, "run_name": self.name},
            writer.queue,
            self.names,
            self.redactor,
            refusals,
        )
        console = console_handler(self.progress.console) if settings.console_logs else None
        self.pipeline = Pipeline.for_run(
            writer.queue, self.redactor, identity.record_fields, spans.active, self.otlp, console
        )
        self._logging = LoggerTree(
            self.pipeline,
            settings.log_level,
            console,
            user_logs(settings, self.pipeline, state, self.error),
        )
        self._logging.install()
        self._events = EventRecorder(
            state,
            self.pipeline,
            spans,
            run_id=self.id,
            budget=self.names,
            flush_soon=writer.flush_soon,
            refusals=refusals,
        )
        self._evals = Evaluations(state, self._events, settings.goals)
        self.errors: list[ErrorLine] = self._events.errors
        self._steps = StepRecorder(
            state,
            writer.queue,
            spans=spans,
            events=self._events,
            pipeline=self.pipeline,
            progress=self.progress,
            make_room=writer.make_room,
            total_epochs=settings.total_epochs,
            planned_steps=settings.total_steps,
            step_span_every=settings.step_span_every,
            budget=self.names,
            refusals=refusals,
            halt_on_nonfinite=settings.halt_on_nonfinite,
            resumed_at=initial_step,
            on_supersede=partial(continuation.rewind, state),
            milestones_done=before.milestones if before else (),
        )
        self.log = self._steps.log  # type: ignore[method-assign]  # hot path: one call less
        made = Instruments(state, writer.queue, self.names, export.histograms.define, refusals)
        self.counter, self.gauge = made.counter, made.gauge
        self.histogram, self.timer = made.histogram, made.timer
        self.summary = RunSummaryValues(state.summary)
        self.define_metric = self.summary.define  # W&B's define_metric(name, summary="max")
        self._finished = False
        self._lock = threading.Lock()
        self._events.run_start(
            identity,
            config,
            continuation,
            settings.total_epochs,
            export.telemetry(settings.log_level),
            initial_step,
            settings.loss,
        )
        self.outlets = Outlets.start(self, identity, settings, state.start_ts)  # HTTP, Grafana
        self.server: StatusServer | None = self.outlets.server
        self.samplers = (
            start_sampling(
                state.readings,
                str(self.dir),
                settings.sample_interval,
                local_rank=self.local_rank,
                all_gpus=settings.all_gpus,
                on_events=self._events.from_samplers,
            )
            if settings.sample_interval
            else None
        )
        self._hooks = ProcessHooks(
            on_signal=self._events.signal,
            on_sigusr1=lambda: self.set_debug(not self.debug, source="SIGUSR1"),
            on_uncaught=self._end_by,
            on_exit=self.finish,
            on_fork_child=self._forked,
            redact=self.redactor.text,
            signals=settings.handle_signals,
            sigterm=settings.sigterm,
        )
        self._hooks.install()
        self._steps.periodic.append(lambda now: self._hooks.adopt())
        self.progress.start()

    @property
    def config_hash(self) -> str:
        """``sha256:`` of the configuration as recorded now (it follows ``run.config.update``)."""
        return self.config.current.hash

    @property
    def stop_requested(self) -> bool:
        """Whether SIGTERM (preemption, a time limit) or SIGHUP asked the run to stop."""
        return self._hooks.stop_signal is not None

    # -- evaluation, spans, events, errors --------------------------------------------------------
    def log_eval(
        self,
        step: int | None = None,
        goals: Mapping[str, Goal] | None = None,
        **metrics: SupportsFloat,
    ) -> dict[str, bool]:
        """Record eval metrics; ``{name: is_best}`` by ``goals`` or by name (``evals``)."""
        return self._evals.log(step, goals, metrics)

    def span(self, name: str, **attributes: AttributeValue) -> Span:
        """A span around a block or function, timed; an exception inside is recorded."""
        return self.spans.span(name, attributes, lambda exc, op: self.error(exc, operation=op))

    #: the same thing, named for code that reads better as an operation
    operation = span

    def event(self, name: str, level: Level = "info", **fields: object) -> None:
        """A structured event: ``run.event("early_stopping", patience=5)``."""
        self._events.event(name, level, fields)

    def error(
        self,
        exc: BaseException,
        context: Mapping[str, object] | None = None,
        operation: str | None = None,
        severity: Severity | None = None,
    ) -> ErrorLine | None:
        """Record an exception as a classified error (the caller decides whether to re-raise)."""
        return self._events.error(exc, context, operation, severity)

    def check_finite(self, loss: SupportsFloat) -> float:
        """Raise ``NonFiniteLossError`` (recorded) if ``loss`` is NaN/Inf; return it as float."""
        return self._events.check_finite(loss, self._steps.under_way())

    # -- custom instruments (bound at start: ``run.counter("skipped")``), the model, loggers -----
    counter: Callable[[str], Counter]
    gauge: Callable[[str], Gauge]
    histogram: HistogramMaker  # (name, buckets=None)
    timer: Callable[[str], Timer]

    def watch(self, model: torch.nn.Module, grad_norm: bool = True) -> Watch:
        """The model's parameter counts and its gradient norm each step (``traintel.run.watch``)."""
        from traintel.run.watch import watch

        return watch(self, model, grad_norm=grad_norm)

    def logger(self, component: str) -> logging.Logger:
        """A logger (``traintel.data``) whose records reach the record, console and Loki."""
        name = self.refusals.admit(self.names, "run.logger", "loggers", component, "other")
        return logging.getLogger(f"{ROOT}.{name}")

    # -- status and debugging ---------------------------------------------------------------------
    def status_dict(self) -> LiveStatus:
        """What /status serves and `traintel status` prints (redacted, as every exit is)."""
        return self.identity.status(
            self.state, self.total_epochs, self.redactor, self.stop_requested
        )

    def set_debug(self, enabled: bool, source: str = "api") -> None:
        """Switch traintel's log verbosity to DEBUG (or back) while the run goes on."""
        self._logging.set_debug(enabled)
        self.event("debug_mode", enabled=enabled, source=source)

    @property
    def debug(self) -> bool:
        """Whether debug logging is on (``traintel debug on``, ``/debug`` or ``set_debug``)."""
        return self._logging.debug

    def flush(self) -> None:
        """Write everything queued to the record now (also folds it into the figures)."""
        self._writer.flush()

    @property
    def finished(self) -> bool:
        """Whether the run has ended (``finish()``, the ``with`` block, or interpreter exit)."""
        return self._finished

    # -- lifecycle --------------------------------------------------------------------------------
    def finish(self, status: EndStatus | None = None) -> None:
        """End the run: summary.json, the record to its last line, the last export (within
        shutdown_timeout). SIGTERM and SIGINT wait until it is done (``hooks``). The status is
        ``preempted`` after SIGTERM, ``interrupted`` after SIGHUP, else ``finished``."""
        check_choice("run.finish: status", status, (None, *END_STATUSES))
        with self._lock:
            if self._finished:
                return
            self._finished = True
        with self._hooks.deferring():
            try:
                self._finish(status or self._hooks.end_status())
            finally:  # even when the end went wrong: the record and the process are free
                self._continuation.release()
                live.ended(self)
        self._hooks.redeliver()

    def _finish(self, status: EndStatus) -> None:
        state = self.state
        state.status = status
        self.log = self._steps.seal(self.id)  # type: ignore[method-assign]  # a pending step kept
        self.progress.stop()
        if self.samplers is not None:
            self.samplers.stop()
        self._steps.end_epoch(cut=status != "finished")  # an epoch the run ended inside
        # the steps this segment took, as its run_end line says (not the last step's number)
        self.spans.finish(status, state.steps_taken - self._continuation.steps_before)
        config = self.config.current
        summary = self._events.run_end(
            status,
            self._writer,
            self.identity.about(config.hash),
            self._continuation,
            lambda: self.summary.for_json(self.dir),
        )
        self.summary.final = summary
        if self.world_size > 1:  # the job's figures over every rank that has ended so far
            write_job_summary(self.dir.parent)
        if status == "failed":
            from traintel.reports.diagnostics import snapshot, write_crash_report

            write_crash_report(
                self.dir,
                snapshot(self.status_dict(), summary, config.values, state, self.errors),
                self.redactor,
            )
        if self.otlp is not None:  # cut short when a signal waits: it asked to end now
            self.otlp.shutdown(0.2 if self._hooks.deferred else self.settings.shutdown_timeout)
            self._events.after_export(summary, state, self.dir)
        self.outlets.stop()
        self._logging.restore()
        self._hooks.remove(keep_excepthook=status in ("failed", "interrupted"))

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        self._end_by(exc) if exc is not None else self.finish()
        return False

    def _end_by(self, exc: BaseException) -> None:
        """An exception ended the run: pruned or stopped (a search ended the trial), preempted
        (an exit after SIGTERM), interrupted (Ctrl-C, an exit code), else failed."""
        if self._finished:
            return
        status = end_status(exc, self.stop_requested)  # traintel.run.sweeps
        self._events.ended_by(exc, status)
        self.finish(status)

    def _forked(self) -> None:
        """In a forked child: the parent's run, never finished nor recorded into here (forks)."""
        self._finished = True
        live.ended(self)
        ignore_in_child(self, self.id)
