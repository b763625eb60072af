"""What happens in a run besides steps: its start, structured events, evaluations with
best-so-far, errors (classified, with a traceback, hints and the CUDA allocator's figures for an
out-of-memory), milestones and its end (summary.json). Each is a record line through the event
pipeline (record, OTLP logs, ``/events``, console) and a count in the run state
(``traintel_events_total``, ``traintel_errors_total``); errors also mark the spans they escaped
from.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Literal, SupportsFloat

from .errors import NonFiniteLossError, classify, format_traceback
from .identity import RunIdentity
from .record.files import write_json
from .record.format import (ConfigLine, EndStatus, ErrorLine, EvalLine, EventLine, Level,
                            MilestoneLine, RunEndLine, RunStartLine, Severity)
from .record.pipeline import Pipeline
from .record.summary import RunAbout, RunSummary, build_summary, instrument_summaries
from .record.writer import RecordWriter
from .runconfig import RunConfig
from .samplers.base import SamplerEvent
from .spans import RunSpans
from .state import RunState, nonfinite_text, to_number
from .validate import check_name
from .version import __version__

Goal = Literal["min", "max"]

_events_log = logging.getLogger("traintel.events")
_errors_log = logging.getLogger("traintel.errors")
_run_log = logging.getLogger("traintel.run")
#: names that look like these are better when lower (the default goal of an eval metric)
_LOWER_IS_BETTER = ("loss", "error", "err", "perplexity", "ppl", "wer", "cer", "mse", "mae",
                    "rmse", "time", "latency")
#: errors kept in memory for the crash report (all are in the record)
MAX_KEPT_ERRORS = 1000


class EventRecorder:
    def __init__(self, state: RunState, pipeline: Pipeline, spans: RunSpans, *, run_id: str,
                 max_names: int, flush_soon: Callable[[], None]) -> None:
        self.state = state
        self.pipeline = pipeline
        self.spans = spans
        self.run_id = run_id
        self.max_names = max_names
        self.flush_soon = flush_soon
        #: the first errors of the run, as recorded (the crash report lists them)
        self.errors: list[ErrorLine] = []

    def from_samplers(self, events: list[SamplerEvent]) -> None:
        """What the samplers noticed (an NVIDIA Xid error), as run events."""
        for event in events:
            self.event(event.name, event.level, dict(event.fields))

    def event(self, name: str, level: Level = "info", fields: dict[str, object] | None = None
              ) -> None:
        check_name("run.event", name)
        levelno = logging.getLevelName(str(level).upper())
        if not isinstance(levelno, int):
            raise ValueError(f"run.event: level must be debug, info, warning, error or "
                             f"critical, got {level!r}")
        events = self.state.events
        if name not in events and len(events) >= self.max_names:
            raise ValueError(f"run.event: {name!r} would be event name number "
                             f"{len(events) + 1}; the limit is {self.max_names}. Put varying "
                             "parts in fields, not in the name")
        fields = dict(fields or {})
        step = fields.pop("step", self.state.step)
        line: EventLine = {"type": "event", "event": name, "fields": fields,
                           "step": step,  # type: ignore[typeddict-item]  # a caller's own step
                           "epoch": self.state.epoch}
        # composed when the pipeline reads it, after its Scrub processor redacted the fields
        self._emit(_events_log, levelno, _EventText(line), line, event=name)

    def log_eval(self, step: int | None, goals: Mapping[str, Goal] | None,
                 metrics: Mapping[str, SupportsFloat]) -> dict[str, bool]:
        if not metrics:
            raise ValueError("run.log_eval() needs at least one metric, e.g. val_loss=0.3")
        chosen = dict(goals or {})
        for name, goal in chosen.items():
            if goal not in ("min", "max"):
                raise ValueError(f"run.log_eval: goal for {name!r} must be 'min' or 'max', "
                                 f"got {goal!r}")
        state = self.state
        is_best: dict[str, bool] = {}
        written: dict[str, float | int | str] = {}
        for name, raw in metrics.items():
            check_name("run.log_eval", name)
            value = raw if type(raw) is float or type(raw) is int else to_number(name, raw)
            if not math.isfinite(value):
                written[name] = nonfinite_text(value)
                is_best[name] = False
                self.event("nonfinite_eval", "warning", {"metric": name, "value": written[name]})
                continue
            written[name] = value
            lower = chosen.get(name, "min" if any(w in name.lower() for w in _LOWER_IS_BETTER)
                               else "max") == "min"
            best = state.eval_best.get(name)
            is_best[name] = best is None or (value < best if lower else value > best)
            if is_best[name]:
                state.eval_best[name] = value
            state.eval_latest[name] = value
        line: EvalLine = {"type": "eval", "step": state.step if step is None else step,
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

    def error(self, exc: BaseException, context: Mapping[str, object] | None = None,
              operation: str | None = None, severity: Severity | None = None
              ) -> ErrorLine | None:
        if not isinstance(exc, BaseException):
            raise TypeError(f"run.error expects an exception, got {type(exc).__name__}")
        if getattr(exc, "_traintel_recorded", None) == self.run_id:
            return None  # already recorded (re-raised through another span or the with block)
        kind = classify(exc, operation)
        severity = severity or kind.severity
        details = dict(context or {})
        if kind.error_type == "oom":
            from .samplers.cuda import oom_details

            details.update(oom_details(exc) or {})
        state = self.state
        line: ErrorLine = {
            "type": "error", "level": "critical" if severity == "critical" else "error",
            "error_type": kind.error_type, "severity": severity, "exc_type": type(exc).__name__,
            "message": str(exc), "operation": operation, "traceback": format_traceback(exc),
            "context": details, "hints": list(kind.hints), "step": state.step,
            "epoch": state.epoch}
        key = (kind.error_type, severity)
        state.errors[key] = state.errors.get(key, 0) + 1
        self._emit(_errors_log, logging.CRITICAL if severity == "critical" else logging.ERROR,
                   f"{kind.error_type} ({severity}) in {operation or 'training'}: "
                   f"{type(exc).__name__}: {exc}", line)
        # after the pipeline: its Scrub processor has redacted the message and traceback in place
        self.spans.mark_error(exc, kind.error_type, line["message"], line["traceback"])
        if len(self.errors) < MAX_KEPT_ERRORS:
            self.errors.append(line)
        try:
            exc._traintel_recorded = self.run_id  # type: ignore[attr-defined]  # our marker
        except AttributeError:
            pass
        if kind.error_type != "interrupted":
            self.flush_soon()
        return line

    def check_finite(self, loss: SupportsFloat) -> float:
        value = to_number("loss", loss)
        if not math.isfinite(value):
            exc = NonFiniteLossError(f"loss is {nonfinite_text(value)} at step {self.state.step}")
            self.error(exc, context={"loss": nonfinite_text(value)})
            raise exc
        return float(value)

    def nonfinite(self, metric: str, text: str) -> None:
        """A NaN or infinite value passed to ``run.log``: a warning event, never an exception."""
        self.event("nonfinite_loss" if metric == "loss" else "nonfinite_value", "warning",
                   {"metric": metric, "value": text, "step": self.state.step + 1})

    def milestone(self, percent: int) -> None:
        state = self.state
        eta = state.eta_seconds()
        line: MilestoneLine = {"type": "milestone", "percent": percent, "step": state.step,
                               "elapsed_s": round(time.time() - state.start_ts, 3),
                               "eta_s": None if eta is None else round(eta, 3)}
        self._emit(_events_log, logging.INFO, f"milestone {percent}%", line, event="milestone")

    def run_start(self, identity: RunIdentity, config: RunConfig, total_epochs: int | None,
                  total_steps: int | None) -> None:
        """The record's first lines (who, where, what version; the configuration) and
        config.json beside it."""
        now = time.time()
        start: RunStartLine = {
            "ts": now, "type": "run_start", "level": "info", "project": identity.project,
            "name": identity.name, "host": identity.host, "pid": os.getpid(),
            "world_size": identity.world_size, "local_rank": identity.local_rank,
            "traintel_version": __version__, "total_epochs": total_epochs,
            "total_steps": total_steps}
        self.pipeline.write(start)
        line: ConfigLine = {"ts": now, "type": "config", "level": "info",
                            "config": config.values, "config_hash": config.hash,
                            "seed": config.seed}
        self.pipeline.write(line)
        write_json(identity.dir / "config.json", {"config": config.values,
                                                  "config_hash": config.hash,
                                                  "seed": config.seed}, quiet=True)
        _run_log.info("run %s (%s/%s) recording to %s", identity.id, identity.project,
                      identity.name, identity.dir)

    def run_end(self, status: EndStatus, writer: RecordWriter, about: RunAbout) -> RunSummary:
        """The record's last lines (each custom instrument summarised, then ``run_end``), the
        record closed, and summary.json beside it, from what the writer folded."""
        state = self.state
        writer.flush()  # observations still queued count in the summary
        now = time.time()
        instruments = instrument_summaries(writer.observations, state.counters, state.gauges)
        for name, figures in instruments:
            self.pipeline.write({"ts": now, "type": "instrument", "level": "info", "name": name,
                                 **figures})
        duration = now - state.start_ts
        line: RunEndLine = {"type": "run_end", "status": status, "duration_s": duration,
                            "steps": state.step}
        self._emit(_run_log, logging.INFO if status == "finished" else logging.WARNING,
                   f"run {status} after {state.step} steps in {duration:.1f}s; record in "
                   f"{writer.directory}", line)
        writer.close()
        summary = build_summary(about, state, writer.figures, writer.lines, instruments, now)
        write_json(writer.directory / "summary.json", summary)
        return summary

    def _emit(self, logger: logging.Logger, level: int, text: object,
              line: Mapping[str, object], event: str | None = None) -> None:
        if event is not None:
            self.state.events[event] = self.state.events.get(event, 0) + 1
        self.pipeline.submit(logger, level, text, line)


class _EventText:
    """An event's text for people, ``name key=value ...``, composed when it is read: by then the
    pipeline's Scrub processor has redacted the fields, so that a value under a secret-looking
    key never reaches the text."""

    __slots__ = ("line",)

    def __init__(self, line: EventLine) -> None:
        self.line = line

    def __str__(self) -> str:
        detail = " ".join(f"{k}={v}" for k, v in self.line["fields"].items())
        return f"{self.line['event']} {detail}".strip()
