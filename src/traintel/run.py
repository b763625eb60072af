"""The run: lifecycle, progress, per-step recording, spans, events and errors.

``Run.log`` and ``Run.track`` are the hot path. They store numbers in ``RunState`` and append one
tuple per step to the record queue; everything else (JSON, aggregates, export, rendering) happens
on background threads or at collection time.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import hashlib
import itertools
import logging
import math
import os
import secrets
import signal
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ContextDecorator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Status, StatusCode

from .version import __version__
from .errors import NonFiniteLossError, RunInterrupted, classify, format_traceback
from .export.otlp import OtlpExport, Sinks, resource_for
from .export.prometheus import RunCollector, registry_for
from .export.readings import Histograms
from .instruments import Counter, Gauge, Histogram, Timer, check_name
from .logging_bridge import ROOT, console_handler, quiet_export_errors
from .progress import MILESTONES, REFRESH_S, ProgressDisplay, describe
from .record.files import encode, write_json
from .record.format import EndStatus
from .record.pipeline import (Console, Identity, OtlpLogs, Pipeline, Scrub, Sink, TraceIds,
                              stamp)
from .record.queue import Call, Line, Observe, Step
from .record.summary import build_summary, instrument_summaries
from .record.writer import RecordWriter
from .redact import Scrubber, secret_values
from .distributed import agree_run_id
from .settings import Settings, hostname
from .state import COUNTED_KEYS, KNOWN_KEYS, RunState, nonfinite_text, to_number

if TYPE_CHECKING:
    from .samplers import SamplerThread
    from .samplers.base import Reading
    from .server import StatusServer

log = logging.getLogger("traintel.run")
_I = TypeVar("_I", Counter, Gauge, Histogram, Timer)
_events_log = logging.getLogger("traintel.events")
_errors_log = logging.getLogger("traintel.errors")

_current: Run | None = None
_live_runs: weakref.WeakSet[Run] = weakref.WeakSet()
#: set by traintel.testing to capture telemetry in memory instead of exporting it
_sinks_override: Sinks | None = None
#: queued record items above which the writer is woken at once
QUEUE_HIGH_WATER = 50_000
_LOWER_IS_BETTER = ("loss", "error", "err", "perplexity", "ppl", "wer", "cer", "mse", "mae",
                    "rmse", "time", "latency")


def current_run() -> Run | None:
    """The active run in this process, if any (integrations attach to it)."""
    return _current


class Run:
    """One training run. Create it with ``traintel.init()``."""

    def __init__(self, settings: Settings) -> None:
        global _current
        self.settings = settings
        self.id = settings.run_id or agree_run_id(_new_run_id(), settings.world_size or 1)
        self.project = settings.project
        self.name = settings.name or self.id
        self.rank = settings.rank or 0
        self.local_rank = settings.local_rank
        self.world_size = settings.world_size or 1
        self.host = hostname()
        self.total_epochs = settings.total_epochs
        base_dir = Path(settings.dir) / self.id
        self.dir = base_dir / f"rank-{self.rank}" if self.world_size > 1 else base_dir
        self.state = state = RunState()
        state.total_steps = settings.total_steps
        self.labels = {"project": self.project, "run": self.id, "rank": str(self.rank)}
        run_info = {"run_name": self.name, "host": self.host, "world_size": str(self.world_size)}

        config = _normalise_config(settings.config)
        self._scrubber = Scrubber(secret_values(config))
        self.config = self._scrubber.deep(config)
        self.seed = settings.seed if settings.seed is not None else _seed_from(self.config)

        self.identity = {"run": self.id, "rank": self.rank}
        self._writer = RecordWriter(self.dir, state, self.identity,
                                    flush_interval=settings.flush_interval,
                                    max_bytes=settings.max_record_bytes)
        self._queue_append = self._writer.queue.append
        self.histograms = Histograms()
        self._writer.listeners.append(self.histograms.observe)
        self.prometheus = RunCollector(state, self.labels, run_info, self.histograms)
        self.registry = registry_for(self.prometheus)

        sinks = _sinks_override or (Sinks.otlp() if settings.otlp_enabled else None)
        self.otlp: OtlpExport | None = None
        if sinks is not None:
            quiet_export_errors()
            self.otlp = OtlpExport(state, self.labels, run_info,
                                   resource_for(self.labels, self.name, self.host), sinks,
                                   self.histograms)
        self.tracer = self.otlp.tracer if self.otlp else trace.NoOpTracer()

        # -- mutable per-step state (hot path) --
        self._pending: dict[str, Any] | None = None
        self._in_track = False
        self._seen_keys: set[str] = set(KNOWN_KEYS) | set(COUNTED_KEYS)
        self._next_check = 0
        self._next_refresh = 0.0
        self._milestones = list(MILESTONES)
        self._instruments: dict[str, Any] = {}
        self.errors: list[dict[str, Any]] = []
        self._finished = False
        self._failed = False
        self._lock = threading.RLock()

        show_progress = settings.progress != "off" and self.rank == 0
        self.progress = ProgressDisplay(state, mode=settings.progress if show_progress else "off",
                                        title=f"{self.project}/{self.name}",
                                        total_epochs=self.total_epochs,
                                        interval=settings.progress_interval)
        self._writer.start()
        self._setup_logging()
        self._run_span = self.tracer.start_span(
            "training_run", attributes={**self.labels, "run_name": self.name})
        self._run_context = trace.set_span_in_context(self._run_span)
        self._epoch_span: trace.Span | None = None
        self._epoch_context: Context | None = None
        self._epoch_started = 0.0
        self._epoch_first_step = 0

        self._write_start()
        self.server = self._start_server()
        self.samplers = self._start_samplers()
        self._install_handlers()
        self._reschedule()
        self.progress.start()
        _live_runs.add(self)
        _current = self

    # ------------------------------------------------------------------------------------
    # the hot path
    # ------------------------------------------------------------------------------------
    def log(self, step: int | None = None, step_s: float | None = None, **values: Any) -> None:
        """Record metrics for the current step: ``run.log(loss=l, lr=lr, samples=32)``.

        Inside ``run.track`` the values belong to the step being timed; outside it, each call
        is one step, timed by ``step_s`` when the caller measured it (framework callbacks).
        Non-finite values are counted and flagged, never raised.
        """
        if not values:
            raise ValueError("run.log() needs at least one metric, e.g. run.log(loss=0.5)")
        nonfinite = False
        seen = self._seen_keys
        for key, value in values.items():
            cls = type(value)
            if cls is not float and cls is not int:
                value = values[key] = to_number(key, value)
            if value - value != 0:
                nonfinite = True
            if key not in seen:
                self._new_key(key)
        state = self.state
        if nonfinite:
            self._flag_nonfinite(values)
        else:
            state.latest.update(values)
        samples = values.get("samples")
        if samples is not None and samples.__class__ is not str:  # str: flagged non-finite
            state.samples += samples
        tokens = values.get("tokens")
        if tokens is not None and tokens.__class__ is not str:
            state.tokens += tokens
        if self._in_track and step is None:
            pending = self._pending
            if pending is None:
                self._pending = values
            else:
                pending.update(values)
        else:
            if step_s is not None:
                step_s = _duration(step_s)
                state.compute_total += step_s
            self._end_step(step_s, None, values, step)

    def track(self, iterable: Iterable[Any], total: int | None = None) -> Iterator[Any]:
        """Iterate over batches, timing data wait vs compute and counting one step per batch."""
        if total is None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        if total is not None and self.total_epochs and self.settings.total_steps is None:
            self.set_total_steps(self.total_epochs * total)
        return self._track(iter(iterable))

    def _track(self, iterator: Iterator[Any]) -> Iterator[Any]:
        perf = time.perf_counter
        state = self.state
        self._in_track = True
        started = perf()
        try:
            while True:
                try:
                    batch = next(iterator)
                except StopIteration:
                    return
                except Exception as exc:
                    self.error(exc, operation="data_loading")
                    raise
                fetched = perf()
                yield batch
                done = perf()
                wait = fetched - started
                state.data_wait_total += wait
                state.compute_total += done - fetched
                metrics = self._pending
                self._pending = None
                self._end_step(done - started, wait, metrics or {}, None)
                started = done
        finally:
            self._in_track = False
            if self._pending is not None:  # the loop was left after run.log: keep that step
                metrics, self._pending = self._pending, None
                self._end_step(None, None, metrics, None)

    def _end_step(self, step_s: float | None, data_wait_s: float | None,
                  metrics: dict[str, Any], step: int | None) -> None:
        state = self.state
        if step is None:
            step = state.step + 1
        elif not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise TypeError(f"run.log: step must be a non-negative int, got {step!r}")
        state.step = step
        now = time.time()
        state.last_step_ts = now
        self._queue_append(_new(Step, (now, step, state.epoch, step_s, data_wait_s, metrics)))
        if step >= self._next_check or now >= self._next_refresh:
            self._periodic(step, now, step_s)

    # ------------------------------------------------------------------------------------
    # rare per-step work, scheduled by _next_check / _next_refresh
    # ------------------------------------------------------------------------------------
    def _periodic(self, step: int, now: float, step_s: float | None) -> None:
        every = self.settings.step_span_every
        if every and step % every == 0 and step_s is not None:
            # span creation costs ~0.1-0.3 ms: done on the writer thread, with the step's times
            self._queue_append(Call(self._step_span, (
                now - step_s, now, step, self.state.epoch,
                self._epoch_context or self._run_context)))
        if len(self._writer.queue) > QUEUE_HIGH_WATER:
            self._writer.flush_soon()  # a loop outpacing the writer: don't wait for the timer
        total = self.state.total_steps
        while total and self._milestones and step >= math.ceil(total * self._milestones[0] / 100):
            self._milestone(self._milestones.pop(0))
        if now >= self._next_refresh:
            self._next_refresh = now + REFRESH_S
            self.progress.refresh()
        self._reschedule()

    def _step_span(self, start: float, end: float, step: int, epoch: int, parent: Any) -> None:
        span = self.tracer.start_span("train_step", context=parent, start_time=int(start * 1e9),
                                      attributes={"step": step, "epoch": epoch})
        span.end(end_time=int(end * 1e9))

    def _reschedule(self) -> None:
        step = self.state.step
        candidates = []
        every = self.settings.step_span_every
        if every:
            candidates.append((step // every + 1) * every)
        total = self.state.total_steps
        if total and self._milestones:
            candidates.append(math.ceil(total * self._milestones[0] / 100))
        self._next_check = min(candidates) if candidates else sys.maxsize

    def _milestone(self, percent: int) -> None:
        state = self.state
        elapsed = time.time() - state.start_ts
        eta = state.eta_seconds()
        self.progress.line(f"{percent}% reached: {describe(state, self.total_epochs)}")
        self._emit(_events_log, logging.INFO, f"milestone {percent}%",
                   {"type": "milestone", "percent": percent, "step": state.step,
                    "elapsed_s": round(elapsed, 3), "eta_s": None if eta is None else round(eta, 3)},
                   event="milestone")

    def set_total_steps(self, total: int) -> None:
        """The planned number of steps (progress, ETA, milestones), once it is known."""
        if not isinstance(total, int) or isinstance(total, bool) or total <= 0:
            raise ValueError(f"run.set_total_steps: total must be a positive int, got {total!r}")
        self.state.total_steps = total
        self._reschedule()

    def _new_key(self, key: str) -> None:
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"run.log: metric name {key!r} must be a valid identifier")
        if len(self.state.user_keys) >= self.settings.max_metric_names:
            raise ValueError(
                f"run.log: {key!r} would be metric name number {len(self.state.user_keys) + 1}; "
                f"the limit is {self.settings.max_metric_names} (each name is a series on every "
                "export path). Log per-item values with run.histogram(), or raise "
                "traintel.init(max_metric_names=...) if you really need more")
        self.state.user_keys.add(key)
        self._seen_keys.add(key)

    def _flag_nonfinite(self, values: dict[str, Any]) -> None:
        """NaN/Inf values: counted, written as text, kept out of averages, never raised."""
        for key, value in list(values.items()):
            if value - value != 0:
                values[key] = nonfinite_text(value)
                if key == "loss":
                    self.state.nonfinite_losses += 1
                self.event("nonfinite_loss" if key == "loss" else "nonfinite_value",
                           level="warning", metric=key, value=values[key],
                           step=self.state.step + 1)
            else:
                self.state.latest[key] = value

    # ------------------------------------------------------------------------------------
    # epochs, evaluation, spans
    # ------------------------------------------------------------------------------------
    def epochs(self, n: int | None = None, start: int = 0) -> Iterator[int]:
        """Iterate over epochs (``n`` or ``total_epochs``; forever if neither is known)."""
        if n is not None:
            if not isinstance(n, int) or n <= 0:
                raise ValueError(f"run.epochs: n must be a positive int, got {n!r}")
            self.total_epochs = self.progress.total_epochs = n
        total = self.total_epochs
        for epoch in (range(start, total) if total else itertools.count(start)):
            self.begin_epoch(epoch)
            try:
                yield epoch
            finally:
                self.end_epoch()

    def begin_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (for frameworks that report epochs by callback)."""
        self.state.epoch = epoch
        self._epoch_span = self.tracer.start_span("epoch", context=self._run_context,
                                                  attributes={"epoch": epoch})
        self._epoch_context = trace.set_span_in_context(self._epoch_span)
        self._epoch_started = time.perf_counter()
        self._epoch_first_step = self.state.step

    def end_epoch(self) -> None:
        """End the current epoch: its span and its record line."""
        if self._epoch_span is None:
            return
        state = self.state
        self._epoch_span.set_attribute("steps", state.step - self._epoch_first_step)
        self._epoch_span.end()
        self._epoch_span = self._epoch_context = None
        self.pipeline.write({"ts": time.time(), "type": "epoch", "level": "info",
                           "epoch": state.epoch, "step": state.step,
                           "steps": state.step - self._epoch_first_step,
                           "duration_s": time.perf_counter() - self._epoch_started})

    def log_eval(self, step: int | None = None, goals: Mapping[str, str] | None = None,
                 **metrics: Any) -> dict[str, bool]:
        """Record evaluation metrics; returns ``{name: is_best}``.

        "Best" is the minimum for names that look like losses or errors and the maximum
        otherwise; override per metric with ``goals={"bleu": "max"}``.
        """
        if not metrics:
            raise ValueError("run.log_eval() needs at least one metric, e.g. val_loss=0.3")
        goals = dict(goals or {})
        for name, goal in goals.items():
            if goal not in ("min", "max"):
                raise ValueError(f"run.log_eval: goal for {name!r} must be 'min' or 'max', "
                                 f"got {goal!r}")
        state = self.state
        is_best: dict[str, bool] = {}
        written: dict[str, Any] = {}
        for name, value in metrics.items():
            check_name("run.log_eval", name)
            value = to_number(name, value) if type(value) not in (int, float) else value
            if not math.isfinite(value):
                written[name] = nonfinite_text(value)
                is_best[name] = False
                self.event("nonfinite_eval", level="warning", metric=name, value=written[name])
                continue
            written[name] = value
            lower = goals.get(name, "min" if any(w in name.lower() for w in _LOWER_IS_BETTER)
                              else "max") == "min"
            best = state.eval_best.get(name)
            is_best[name] = best is None or (value < best if lower else value > best)
            if is_best[name]:
                state.eval_best[name] = value
            state.eval_latest[name] = value
        line = {"type": "eval", "step": state.step if step is None else step,
                "epoch": state.epoch, "metrics": written, "is_best": is_best,
                "best": {k: state.eval_best.get(k) for k in written}}
        text = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in written.items())
        bests = [k for k, b in is_best.items() if b]
        self._emit(_events_log, logging.INFO,
                   f"eval at step {line['step']}: {text}" + (f" (best: {', '.join(bests)})"
                                                             if bests else ""), line, event="eval")
        if bests:
            state.events["best_eval"] = state.events.get("best_eval", 0) + 1
        return is_best

    def span(self, name: str, **attributes: Any) -> _Span:
        """A span around a block or function: ``with run.span("checkpoint"):`` or as a
        decorator. It times the block (``traintel_operation_duration_seconds``), and an
        exception inside is recorded as a classified error with this operation, then re-raised.
        """
        check_name("run.span", name)
        return _Span(self, name, attributes)

    #: the same thing, named for code that reads better as an operation
    operation = span

    # ------------------------------------------------------------------------------------
    # events, errors, custom instruments
    # ------------------------------------------------------------------------------------
    def event(self, name: str, level: str = "info", **fields: Any) -> None:
        """A structured event: ``run.event("early_stopping", patience=5)``."""
        check_name("run.event", name)
        levelno = logging.getLevelName(str(level).upper())
        if not isinstance(levelno, int):
            raise ValueError(f"run.event: level must be debug, info, warning, error or "
                             f"critical, got {level!r}")
        if name not in self.state.events and len(self.state.events) >= \
                self.settings.max_metric_names:
            raise ValueError(f"run.event: {name!r} would be event name number "
                             f"{len(self.state.events) + 1}; the limit is "
                             f"{self.settings.max_metric_names}. Put varying parts in fields, "
                             "not in the name")
        step = fields.pop("step", self.state.step)
        line = {"type": "event", "event": name, "fields": fields, "step": step,
                "epoch": self.state.epoch}
        # composed when the pipeline reads it, after its Scrub processor redacted the fields
        self._emit(_events_log, levelno, _EventText(line), line, event=name)

    def _emit(self, logger: logging.Logger, level: int, message: object, line: dict[str, Any],
              event: str | None = None) -> None:
        """One record line that also travels as a log record (console, OTLP/Loki)."""
        if event is not None:
            self.state.events[event] = self.state.events.get(event, 0) + 1
        self.pipeline.submit(logger, level, message, line)

    def error(self, exc: BaseException, context: Mapping[str, Any] | None = None,
              operation: str | None = None, severity: str | None = None) -> dict[str, Any]:
        """Record an exception as a classified error (the caller decides whether to re-raise)."""
        if not isinstance(exc, BaseException):
            raise TypeError(f"run.error expects an exception, got {type(exc).__name__}")
        if getattr(exc, "_traintel_recorded", None) == self.id:
            return {}
        kind = classify(exc, operation)
        severity = severity or kind.severity
        details = dict(context or {})
        if kind.error_type == "oom":
            from .samplers.cuda import oom_details

            details.update(oom_details(exc) or {})
        line = {"type": "error", "level": "critical" if severity == "critical" else "error",
                "error_type": kind.error_type, "severity": severity,
                "exc_type": type(exc).__name__, "message": str(exc),
                "operation": operation, "traceback": format_traceback(exc),
                "context": details, "hints": list(kind.hints),
                "step": self.state.step, "epoch": self.state.epoch}
        key = (kind.error_type, severity)
        self.state.errors[key] = self.state.errors.get(key, 0) + 1
        span = trace.get_current_span()
        self._emit(_errors_log, logging.CRITICAL if severity == "critical" else logging.ERROR,
                   f"{kind.error_type} ({severity}) in {operation or 'training'}: "
                   f"{type(exc).__name__}: {exc}", line)
        # after the pipeline: its processors scrubbed the message and traceback in place
        for target in {id(s): s for s in (span, self._epoch_span, self._run_span)
                       if s is not None and s.is_recording()}.values():
            target.record_exception(exc, attributes={  # ours replace the SDK's raw text
                "error_type": kind.error_type, "exception.message": line["message"],
                "exception.stacktrace": line["traceback"]})
            target.set_status(Status(StatusCode.ERROR, f"{kind.error_type}: {type(exc).__name__}"))
        if len(self.errors) < 1000:
            self.errors.append(line)
        try:
            exc._traintel_recorded = self.id  # type: ignore[attr-defined]
        except AttributeError:
            pass
        if kind.error_type != "interrupted":
            self._writer.flush_soon()
        return line

    def check_finite(self, loss: Any) -> float:
        """Raise ``NonFiniteLossError`` (recorded) if ``loss`` is NaN/Inf; return it as float."""
        value = to_number("loss", loss)
        if not math.isfinite(value):
            exc = NonFiniteLossError(f"loss is {nonfinite_text(value)} at step {self.state.step}")
            self.error(exc, context={"loss": nonfinite_text(value)})
            raise exc
        return value

    def _instrument(self, cls: type[_I], name: str) -> _I:
        check_name(f"run.{cls.__name__.lower()}", name)
        key = f"{cls.__name__}:{name}"
        existing = self._instruments.get(key)
        if existing is None:
            if len(self._instruments) >= self.settings.max_metric_names:
                raise ValueError(f"too many custom instruments (limit "
                                 f"{self.settings.max_metric_names}); reuse instruments instead "
                                 "of creating one per item")
            existing = self._instruments[key] = cls(self, name)
        assert isinstance(existing, cls)
        return existing

    def counter(self, name: str) -> Counter:
        return self._instrument(Counter, name)

    def gauge(self, name: str) -> Gauge:
        return self._instrument(Gauge, name)

    def histogram(self, name: str) -> Histogram:
        return self._instrument(Histogram, name)

    def timer(self, name: str) -> Timer:
        return self._instrument(Timer, name)

    def watch(self, model: Any, grad_norm: bool = True) -> Any:
        """Log the model's parameter counts and, with ``grad_norm``, the global gradient norm of
        every optimizer step (see ``traintel.watch``)."""
        from .watch import watch

        return watch(self, model, grad_norm=grad_norm)

    def logger(self, component: str) -> logging.Logger:
        """A component logger (``traintel.data``, ``traintel.model``) whose records reach the run
        record, the console and Loki, correlated with the current trace."""
        check_name("run.logger", component)
        return logging.getLogger(f"{ROOT}.{component}")

    # ------------------------------------------------------------------------------------
    # status
    # ------------------------------------------------------------------------------------
    def status_dict(self) -> dict[str, Any]:
        """What /status serves and `traintel status` prints."""
        state = self.state
        return {"run": self.id, "project": self.project, "name": self.name, "rank": self.rank,
                "status": state.status, "epoch": state.epoch, "total_epochs": self.total_epochs,
                "step": state.step, "total_steps": state.total_steps,
                "progress": state.progress(), "eta_s": state.eta_seconds(),
                "rates": dict(state.rates), "latest": dict(state.latest),
                "eval_best": dict(state.eval_best),
                "errors": {f"{t}/{s}": n for (t, s), n in state.errors.items()},
                "dir": str(self.dir), "started": state.start_ts}

    # ------------------------------------------------------------------------------------
    # lifecycle
    # ------------------------------------------------------------------------------------
    def finish(self, status: EndStatus | None = None) -> None:
        """End the run: flush the record, write summary.json, export the last telemetry within
        ``shutdown_timeout`` seconds. Safe to call more than once."""
        global _current
        if status not in (None, "finished", "failed", "interrupted"):
            raise ValueError(f"run.finish: status must be finished, failed or interrupted, "
                             f"got {status!r}")
        with self._lock:
            if self._finished:
                return
            self._finished = True
        state = self.state
        status = status or ("failed" if self._failed else "finished")
        state.status = status
        if self._pending is not None:  # a step logged but not yet closed by run.track
            metrics, self._pending = self._pending, None
            self._end_step(None, None, metrics, None)
        self.progress.stop()
        if self.samplers is not None:
            self.samplers.stop()
        self.end_epoch()
        if status != "finished":
            self._run_span.set_status(Status(StatusCode.ERROR, status))
        self._run_span.set_attribute("status", status)
        self._run_span.set_attribute("steps", state.step)
        self._run_span.end()
        now = time.time()
        self._writer.flush()  # histogram/timer observations still queued count in the summary
        instruments = instrument_summaries(self._writer.observations, state.counters,
                                           state.gauges)
        for name, figures in instruments:
            self.pipeline.write({"ts": now, "type": "instrument", "level": "info", "name": name,
                                 **figures})
        self._emit(log, logging.INFO if status == "finished" else logging.WARNING,
                   f"run {status} after {state.step} steps in "
                   f"{now - state.start_ts:.1f}s; record in {self.dir}",
                   {"type": "run_end", "status": status, "duration_s": now - state.start_ts,
                    "steps": state.step})
        self._writer.close()
        self.summary = build_summary(
            {"run": self.id, "project": self.project, "name": self.name, "rank": self.rank,
             "world_size": self.world_size, "config_hash": self.config_hash},
            state, self._writer.figures, self._writer.lines, instruments, now)
        write_json(self.dir / "summary.json", self.summary)
        if status == "failed":
            from .diagnostics import write_crash_report

            write_crash_report(self)
        if self.otlp is not None:
            self.otlp.shutdown(self.settings.shutdown_timeout)
        if self.server is not None:
            self.server.stop()
        self._teardown_logging()
        self._remove_handlers()
        _live_runs.discard(self)
        if _current is self:
            _current = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        if self._finished:  # e.g. the SIGTERM handler already finished the run
            return False
        if exc is None:
            self.finish()
        elif isinstance(exc, (KeyboardInterrupt, RunInterrupted)) or (
                isinstance(exc, SystemExit) and exc.code not in (0, None)):
            self.error(exc if isinstance(exc, BaseException) else RunInterrupted(str(exc)))
            self.finish("interrupted")
        elif isinstance(exc, SystemExit):
            self.finish()
        else:
            self.error(exc)
            self._failed = True
            self.finish("failed")
        return False

    # -- start-up pieces ------------------------------------------------------------------
    def _write_start(self) -> None:
        config_hash = "sha256:" + hashlib.sha256(encode(self.config, sort_keys=True)).hexdigest()
        self.config_hash = config_hash
        now = time.time()
        self.pipeline.write({"ts": now, "type": "run_start", "level": "info",
                           "project": self.project, "name": self.name, "host": self.host,
                           "pid": os.getpid(), "world_size": self.world_size,
                           "local_rank": self.local_rank, "traintel_version": __version__,
                           "total_epochs": self.total_epochs,
                           "total_steps": self.state.total_steps})
        self.pipeline.write({"ts": now, "type": "config", "level": "info", "config": self.config,
                           "config_hash": config_hash, "seed": self.seed})
        write_json(self.dir / "config.json", {"config": self.config, "config_hash": config_hash,
                                              "seed": self.seed}, quiet=True)
        log.info("run %s (%s/%s) recording to %s", self.id, self.project, self.name, self.dir)

    def _setup_logging(self) -> None:
        root = logging.getLogger(ROOT)
        self._saved_logging = (root.level, root.propagate, list(root.handlers))
        append = self._writer.queue.append
        sinks: list[Sink] = []
        if self.otlp is not None:
            sinks.append(OtlpLogs(self.otlp, self._active_span))
        self.console: Console | None = None
        if self.settings.console_logs:
            handler = console_handler(self.progress.console)
            handler.setLevel(logging.INFO)
            self.console = Console(handler)
            sinks.append(self.console)
        self.pipeline = Pipeline(
            [Scrub(self._scrubber), stamp, Identity(self.identity), TraceIds(self._active_span)],
            file=lambda line, record: append(Line(line)), sinks=sinks)
        root.handlers = [self.pipeline]
        root.setLevel(self.settings.log_level)
        root.propagate = False

    def _active_span(self) -> Any:
        """The span log records belong to when the caller has none: the epoch, else the run."""
        return self._epoch_span or self._run_span

    def _teardown_logging(self) -> None:
        root = logging.getLogger(ROOT)
        level, propagate, handlers = self._saved_logging
        root.handlers = handlers
        root.setLevel(level)
        root.propagate = propagate

    def set_debug(self, enabled: bool, source: str = "api") -> None:
        """Switch traintel's log verbosity to DEBUG (or back) while the run goes on."""
        level = logging.DEBUG if enabled else logging.getLevelName(self.settings.log_level)
        logging.getLogger(ROOT).setLevel(level)
        if self.console is not None:
            self.console.handler.setLevel(logging.DEBUG if enabled else logging.INFO)
        self.event("debug_mode", enabled=enabled, source=source)

    @property
    def debug(self) -> bool:
        return logging.getLogger(ROOT).level == logging.DEBUG

    def _start_server(self) -> StatusServer | None:
        if self.settings.http_port is None:
            return None
        from .server import StatusServer

        server = StatusServer(self, self.settings.http_host, self.settings.http_port)
        server.start()
        log.info("status endpoint on http://%s:%d (/metrics /healthz /status /events)",
                 server.host, server.port)
        return server

    def _start_samplers(self) -> SamplerThread | None:
        if not self.settings.sample_interval:
            return None
        from .samplers import SamplerThread, default_samplers

        readings = self.state.readings

        def store(batch: list[Reading]) -> None:
            for name, value, labels in batch:
                readings[(name, tuple(sorted(labels.items())))] = value

        thread = SamplerThread(default_samplers(str(self.dir), local_rank=self.local_rank,
                                                all_gpus=self.settings.all_gpus),
                               interval_s=self.settings.sample_interval, on_readings=store)
        thread.start()
        return thread

    def _install_handlers(self) -> None:
        """SIGTERM/SIGUSR1, uncaught exceptions and interpreter exit, chained to what was there."""
        self._previous_signals: dict[int, Any] = {}
        self._previous_excepthook = sys.excepthook
        sys.excepthook = self._excepthook
        atexit.register(self._atexit)
        if not self.settings.handle_signals or \
                threading.current_thread() is not threading.main_thread():
            return
        handlers: dict[int, signal._HANDLER] = {signal.SIGTERM: self._on_sigterm}
        if hasattr(signal, "SIGUSR1"):
            handlers[signal.SIGUSR1] = self._on_sigusr1
        if hasattr(signal, "SIGXFSZ"):  # a file-size limit must fail a write, not kill training
            handlers[signal.SIGXFSZ] = signal.SIG_IGN
        for signum, handler in handlers.items():
            try:
                self._previous_signals[signum] = signal.signal(signum, handler)
            except (ValueError, OSError):
                pass

    def _remove_handlers(self) -> None:
        if sys.excepthook == self._excepthook:
            sys.excepthook = self._previous_excepthook
        atexit.unregister(self._atexit)
        if threading.current_thread() is threading.main_thread():
            for signum, previous in self._previous_signals.items():
                try:
                    signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
                except (ValueError, OSError, TypeError):
                    pass
        self._previous_signals = {}

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        previous = self._previous_signals.get(signum)
        exc = RunInterrupted("SIGTERM received (preemption, time limit or kill)")
        self.error(exc, context={"signal": "SIGTERM"})
        self.finish("interrupted")
        if callable(previous):
            previous(signum, frame)
        raise SystemExit(128 + signum)

    def _on_sigusr1(self, signum: int, frame: Any) -> None:
        self.set_debug(not self.debug, source="SIGUSR1")

    def _excepthook(self, exc_type: type[BaseException], exc: BaseException,
                    tb: TracebackType | None) -> None:
        if not self._finished:
            if isinstance(exc, KeyboardInterrupt):
                self.error(exc)
                self.finish("interrupted")
            else:
                self.error(exc)
                self._failed = True
                self.finish("failed")
        self._previous_excepthook(exc_type, exc, tb)

    def _atexit(self) -> None:
        self.finish()


class _Span(ContextDecorator):
    def __init__(self, run: Run, name: str, attributes: dict[str, Any]) -> None:
        self.run = run
        self.name = name
        self.attributes = attributes
        self._stack: list[tuple[Any, Any, float]] = []

    def __enter__(self) -> Any:
        run = self.run
        parent = None if trace.get_current_span().is_recording() else (
            run._epoch_context or run._run_context)
        manager = run.tracer.start_as_current_span(
            self.name, context=parent, attributes=self.attributes, record_exception=False,
            set_status_on_exception=False)
        span = manager.__enter__()
        self._stack.append((manager, span, time.perf_counter()))
        return span

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        manager, span, started = self._stack.pop()
        elapsed = time.perf_counter() - started
        if exc is not None and isinstance(exc, Exception):
            self.run.error(exc, operation=self.name)
        self.run._queue_append(Observe("operation", self.name, elapsed))
        manager.__exit__(exc_type, exc, tb)
        return False


class _EventText:
    """An event's text for people, ``name key=value ...``, composed when it is read: by then the
    pipeline's Scrub processor has redacted the fields, so a value under a secret-looking key
    never reaches the text."""

    __slots__ = ("line",)

    def __init__(self, line: dict[str, Any]) -> None:
        self.line = line

    def __str__(self) -> str:
        detail = " ".join(f"{k}={v}" for k, v in self.line["fields"].items())
        return f"{self.line['event']} {detail}".strip()


#: builds a Step without the NamedTuple's Python-level __new__ (see traintel.record.queue)
_new = tuple.__new__


def _duration(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"run.log: step_s must be a non-negative number of seconds, got {value!r}")
    return float(value)


def _after_fork_in_child() -> None:
    """A forked child (a data-loader worker) inherits the parent's runs but not their threads:
    it must neither write the parent's record nor finish the parent's run at exit."""
    global _current
    for run in list(_live_runs):
        run._finished = True
        atexit.unregister(run._atexit)
        if sys.excepthook == run._excepthook:
            sys.excepthook = run._previous_excepthook
    _live_runs.clear()
    _current = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def _normalise_config(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return {str(k): _normalise_value(v) for k, v in config.items()}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return _normalise_config(dataclasses.asdict(config))
    if isinstance(config, argparse.Namespace):
        return _normalise_config(vars(config))
    raise TypeError(f"traintel.init: config must be a dict, a dataclass instance or an "
                    f"argparse.Namespace, got {type(config).__name__}")


def _normalise_value(value: Any) -> Any:
    if isinstance(value, Mapping) or (dataclasses.is_dataclass(value)
                                      and not isinstance(value, type)) \
            or isinstance(value, argparse.Namespace):
        return _normalise_config(value)
    if isinstance(value, (list, tuple)):
        return [_normalise_value(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return nonfinite_text(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _seed_from(config: Mapping[str, Any]) -> int | None:
    seed = config.get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None
