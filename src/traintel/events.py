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
from pathlib import Path
from typing import Literal, SupportsFloat

from .errors import NonFiniteLossError, classify, format_traceback
from .identity import RunIdentity
from .record.files import write_json
from .record.format import (LEVELS, SEVERITIES, ConfigLine, EndStatus, ErrorLine, EvalLine,
                            EventLine, Level, MilestoneLine, RunEndLine, RunStartLine, Severity)
from .record.pipeline import Pipeline
from .record.summary import (RunAbout, RunSummary, build_summary, export_figures,
                             instrument_summaries)
from .record.writer import RecordWriter
from .runconfig import RunConfig
from .samplers.base import SamplerEvent
from .spans import RunSpans
from .state import RunState, nonfinite_text
from .validate import (MAX_NAME_LENGTH, NameBudget, check_choice, check_step, clean_text, shown,
                       to_number)
from .version import __version__

Goal = Literal["min", "max"]

_events_log = logging.getLogger("traintel.events")
_errors_log = logging.getLogger("traintel.errors")
_run_log = logging.getLogger("traintel.run")
#: names that look like these are better when lower (the default goal of an eval metric)
_LOWER_IS_BETTER = ("loss", "error", "err", "perplexity", "ppl", "wer", "cer", "mse", "mae",
                    "rmse", "time", "latency")
_LEVELNO: dict[Level, int] = {"debug": logging.DEBUG, "info": logging.INFO,
                             "warning": logging.WARNING, "error": logging.ERROR,
                             "critical": logging.CRITICAL}
#: errors kept in memory for the crash report (all are in the record)
MAX_KEPT_ERRORS = 1000


class EventRecorder:
    def __init__(self, state: RunState, pipeline: Pipeline, spans: RunSpans, *, run_id: str,
                 budget: NameBudget, flush_soon: Callable[[], None]) -> None:
        self.state = state
        self.pipeline = pipeline
        self.spans = spans
        self.run_id = run_id
        self.budget = budget
        self.flush_soon = flush_soon
        #: the first errors of the run, as recorded (the crash report lists them)
        self.errors: list[ErrorLine] = []

    def from_samplers(self, events: list[SamplerEvent]) -> None:
        """What the samplers noticed (an NVIDIA Xid error), as run events."""
        for event in events:  # traintel's own names: not in the user's name budget
            self._event(event.name, _LEVELNO[event.level], dict(event.fields))

    def event(self, name: str, level: Level = "info", fields: dict[str, object] | None = None
              ) -> None:
        self._check_live("run.event")
        levelno = _LEVELNO[check_choice("run.event: level", level, LEVELS)]
        self.budget.admit("run.event", "events", name, "Put varying parts in fields, not in the "
                          "name")
        self._event(name, levelno, fields)

    def _event(self, name: str, levelno: int, fields: dict[str, object] | None) -> None:
        """An event of the user's or of traintel's own (those names are not in the budget)."""
        fields = dict(fields or {})
        step = check_step("run.event", fields.pop("step", self.state.step))
        line: EventLine = {"type": "event", "event": name, "fields": fields, "step": step,
                           "epoch": self.state.epoch}
        # composed when the pipeline reads it, after its Redact processor redacted the fields
        self._emit(_events_log, levelno, _EventText(line), line, event=name)

    def log_eval(self, step: int | None, goals: Mapping[str, Goal] | None,
                 metrics: Mapping[str, SupportsFloat]) -> dict[str, bool]:
        self._check_live("run.log_eval")
        if not metrics:
            raise ValueError("run.log_eval() needs at least one metric, e.g. val_loss=0.3")
        if goals is not None and not isinstance(goals, Mapping):
            raise TypeError(f"run.log_eval: goals must be a mapping of metric name to 'min' or "
                            f"'max', e.g. goals={{'acc': 'max'}}; got {shown(goals)}")
        chosen = dict(goals or {})
        for name, goal in chosen.items():
            check_choice(f"run.log_eval: the goal for {shown(name)}", goal, ("min", "max"))
        if step is not None:
            step = check_step("run.log_eval", step)
        for name in metrics:
            self.budget.admit("run.log_eval", "evals", name, "Log per-item values with "
                              "run.histogram()")
        state = self.state
        is_best: dict[str, bool] = {}
        written: dict[str, float | int | str] = {}
        for name, raw in metrics.items():
            value = raw if type(raw) is float else to_number("run.log_eval", name, raw)
            if not math.isfinite(value):
                written[name] = nonfinite_text(value)
                is_best[name] = False
                self._event("nonfinite_eval", logging.WARNING,
                            {"metric": name, "value": written[name]})
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
        if severity is not None:
            check_choice("run.error: severity", severity, SEVERITIES)
        if operation is not None:
            operation = clean_text(str(operation))[:MAX_NAME_LENGTH]
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
        # after the pipeline: its Redact processor has redacted the message and traceback in place
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
        value = to_number("run.check_finite", "loss", loss)
        if not math.isfinite(value):
            exc = NonFiniteLossError(f"loss is {nonfinite_text(value)} at step {self.state.step}")
            self.error(exc, context={"loss": nonfinite_text(value)})
            raise exc
        return float(value)

    def nonfinite(self, metric: str, text: str) -> None:
        """A NaN or infinite value passed to ``run.log``: a warning event, never an exception."""
        self._event("nonfinite_loss" if metric == "loss" else "nonfinite_value", logging.WARNING,
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

    def _check_live(self, what: str) -> None:
        """Refuse a call on an ended run (in a forked child the run is the parent's and still
        "running" there: calls go nowhere, quietly, as data-loader workers expect)."""
        if self.state.status != "running":
            raise RuntimeError(ended(what, self.run_id))

    @staticmethod
    def after_export(summary: RunSummary | None, state: RunState, directory: Path) -> None:
        """summary.json again when the run's last export (after it was written) failed."""
        if summary is not None and summary["export"] != export_figures(state):
            summary["export"] = export_figures(state)
            write_json(directory / "summary.json", summary, quiet=True)

    def _emit(self, logger: logging.Logger, level: int, text: object,
              line: Mapping[str, object], event: str | None = None) -> None:
        if event is not None:
            self.state.events[event] = self.state.events.get(event, 0) + 1
        self.pipeline.submit(logger, level, text, line)


def ended(what: str, run_id: str) -> str:
    """Why ``what`` was refused: its run has finished."""
    return (f"{what}: run {run_id} has finished (run.finish() or the end of its with block); "
            "nothing more can be recorded in it. Start a new run with traintel.init()")


class _EventText:
    """An event's text for people, ``name key=value ...``, composed when it is read: by then the
    pipeline's Redact processor has redacted the fields, so that a value under a secret-looking
    key never reaches the text."""

    __slots__ = ("line",)

    def __init__(self, line: EventLine) -> None:
        self.line = line

    def __str__(self) -> str:
        detail = " ".join(f"{k}={v}" for k, v in self.line["fields"].items())
        return f"{self.line['event']} {detail}".strip()
