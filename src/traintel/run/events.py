"""What happens in a run besides steps: its start, structured events, evaluations with
best-so-far, errors (classified, with a traceback, hints and the CUDA allocator's figures for an
out-of-memory), milestones and its end (summary.json). Each is a record line through the event
pipeline (record, OTLP logs, ``/events``, console) and a count in the run state
(``traintel_events_total``, ``traintel_errors_total``); errors also mark the spans they escaped
from.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, SupportsFloat, cast

from traintel.core import misuse
from traintel.core.errors import (
    NonFiniteLossError,
    classify,
    exception_text,
    format_traceback,
    operation_of,
)
from traintel.core.misuse import printable, warn_once
from traintel.core.refusals import Refusals
from traintel.core.state import NonFinite, RunState, nonfinite_text
from traintel.core.validate import (
    MAX_NAME_LENGTH,
    NameBudget,
    NameBudgetFull,
    check_choice,
    check_step,
    clean_text,
    shown,
    to_number,
)
from traintel.record.files import read_json, write_json
from traintel.record.format import (
    LEVELS,
    SEVERITIES,
    ConfigLine,
    ConfigReason,
    EndStatus,
    ErrorLine,
    EventLine,
    InstrumentLine,
    Level,
    MilestoneLine,
    RunEndLine,
    RunStartLine,
    RunTelemetry,
    Severity,
)
from traintel.record.pipeline import Pipeline
from traintel.record.summary import (
    RunAbout,
    RunSummary,
    Segment,
    build_summary,
    export_figures,
    instrument_summaries,
)
from traintel.record.writer import RecordWriter
from traintel.run.config import RunConfig, changed_keys
from traintel.run.identity import RunIdentity
from traintel.run.tracing import RunSpans
from traintel.samplers.base import SamplerEvent
from traintel.version import __version__

if TYPE_CHECKING:
    from traintel.run.resume import Continuation

_events_log = logging.getLogger("traintel.events")
_errors_log = logging.getLogger("traintel.errors")
_run_log = logging.getLogger("traintel.run")
_LEVELNO: dict[Level, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
#: seconds between two reports of one metric's non-finite values after its first
NONFINITE_REPORT_S = 60.0
#: errors kept in memory for the crash report (all are in the record)
MAX_KEPT_ERRORS = 1000


class EventRecorder:
    def __init__(
        self,
        state: RunState,
        pipeline: Pipeline,
        spans: RunSpans,
        *,
        run_id: str,
        budget: NameBudget,
        flush_soon: Callable[[], None],
        refusals: Refusals | None = None,
    ) -> None:
        self.state = state
        self.refusals = refusals or Refusals(state, strict=True)
        misuse.forget()  # one recorder per run: the run's own record says its misuses
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
            self.own_event(event.name, _LEVELNO[event.level], dict(event.fields))

    def event(
        self, name: str, level: Level = "info", fields: dict[str, object] | None = None
    ) -> None:
        """``run.event``: a user's event, its name in the run's name budget."""
        self.check_live("run.event")
        refuse = self.refusals.refuse
        try:
            levelno = _LEVELNO[check_choice("run.event: level", level, LEVELS)]
        except ValueError as error:
            refuse("run.event", "level", error, then="the event is recorded at level 'info'")
            levelno = logging.INFO
        counted = True
        try:
            self.budget.admit(
                "run.event", "events", name, "Put varying parts in fields, not in the name"
            )
        except NameBudgetFull as error:  # recorded all the same: only its count is a series
            refuse(
                "run.event",
                name,
                error,
                then="the event is recorded, not counted by name in traintel_events_total",
            )
            counted = False
        except (TypeError, ValueError) as error:
            refuse("run.event", name, error, then="the event is dropped")
            return
        self.own_event(name, levelno, fields, counted=counted)

    def own_event(
        self,
        name: str,
        levelno: int,
        fields: dict[str, object] | None,
        text: str | None = None,
        counted: bool = True,
    ) -> None:
        """An event of the user's or of traintel's own (those names are not in the budget); its
        text for people is ``text``, else ``name key=value ...``. ``counted``: in
        ``traintel_events_total`` by name."""
        fields = dict(fields or {})
        step = fields.pop("step", self.state.step)
        if type(step) is not int or step < 0:
            try:
                step = check_step("run.event", step)
            except (TypeError, ValueError) as error:
                self.refusals.refuse(
                    "run.event", "step", error, then="the event is recorded at the current step"
                )
                step = self.state.step
        for key, value in fields.items():
            if type(value) not in _PLAIN:
                fields[key] = self._printable(name, key, value)
        line: EventLine = {
            "type": "event",
            "event": name,
            "fields": fields,
            "step": step,
            "epoch": self.state.epoch,
        }
        # composed when the pipeline reads it, after its Redact processor redacted the fields
        self.emit(
            _events_log, levelno, text or _EventText(line), line, event=name if counted else None
        )

    def _printable(self, event: str, key: str, value: object) -> object:
        """``value`` if it can be written as text; else a placeholder that names its type,
        refused and counted (an object whose ``__str__`` raises used to lose its whole event)."""
        try:
            str(value)
            return value
        except Exception as failed:
            placeholder = f"<{type(value).__name__}: str() raised {type(failed).__name__}>"
            self.refusals.refuse(
                "run.event",
                key,
                ValueError(
                    f"run.event {event!r}: field {key!r} cannot be written as text (its __str__ "
                    f"raised {type(failed).__name__}); give the field a value that prints"
                ),
                "field",
                f"the field is recorded as {placeholder!r}",
            )
            return placeholder

    def ended_by(self, exc: BaseException, status: str | None) -> None:
        """What an exception that ends the run leaves in the record: a search's early end as an
        event (``trial_pruned``, ``trial_stopped``), a failure or interruption as an error; never
        an exception of its own (the user's is on its way)."""
        with contextlib.suppress(Exception):
            if status in ("pruned", "stopped"):
                self.event(f"trial_{status}", "info", {"reason": printable(exc)[:500]})
            elif status is not None:
                self.error(exc)

    def error(
        self,
        exc: BaseException,
        context: Mapping[str, object] | None = None,
        operation: str | None = None,
        severity: Severity | None = None,
        *,
        step: int | None = None,
    ) -> ErrorLine | None:
        """An ``error`` line for ``exc``, classified. ``step``: the step it belongs to when that
        is not the last one written (``check_finite`` names the step under way)."""
        refuse = self.refusals.refuse
        if not isinstance(exc, BaseException):
            refuse(
                "run.error",
                "exc",
                TypeError(
                    f"run.error expects an exception, got {type(exc).__name__} {shown(exc)}; pass "
                    "the exception you caught (`except Exception as exc: run.error(exc)`)"
                ),
                then="nothing is recorded",
            )
            return None
        try:
            if getattr(exc, "_traintel_recorded", None) == self.run_id:
                return None  # already recorded (re-raised through another span or the block)
        except Exception:  # an exception class whose attribute lookup fails
            pass
        if severity is not None:
            try:
                check_choice("run.error: severity", severity, SEVERITIES)
            except ValueError as error:
                refuse("run.error", "severity", error, then="the classification's is used")
                severity = None
        if operation is not None:
            if not isinstance(operation, str):
                warn_once(
                    f"error.operation.{type(operation).__name__}",
                    f"run.error(operation=...) takes the operation's name as a str, got "
                    f"{type(operation).__name__}; recorded as its text",
                )
            operation = clean_text(printable(operation))[:MAX_NAME_LENGTH]
        else:
            operation = operation_of(exc)
        # the message cut before any work: classification and redaction read it on this thread
        message = exception_text(exc)
        kind = classify(exc, operation, message)
        severity = severity or kind.severity
        if context is not None and not isinstance(context, Mapping):
            warn_once(
                f"error.context.{type(context).__name__}",
                f"run.error(context=...) takes a dict of details, got "
                f"{type(context).__name__}; recorded as context={{'value': ...}}",
            )
            context = {"value": context}
        details = dict(context or {})
        if kind.error_type == "oom":
            from traintel.samplers.cuda import oom_details

            details.update(oom_details(exc) or {})
        state = self.state
        now = time.time()
        line: ErrorLine = {
            "ts": now,
            "type": "error",
            "level": "critical" if severity == "critical" else "error",
            "error_type": kind.error_type,
            "severity": severity,
            "exc_type": type(exc).__name__,
            "message": message,
            "operation": operation,
            "traceback": format_traceback(exc),
            "context": details,
            "hints": list(kind.hints),
            "step": state.step if step is None else step,
            "epoch": state.epoch,
        }
        key = (kind.error_type, severity)
        state.errors[key] = state.errors.get(key, 0) + 1
        if state.first_error is None:
            state.first_error = {
                "ts": now,
                "error_type": kind.error_type,
                "exc_type": type(exc).__name__,
                "step": line["step"],
            }
        self.emit(
            _errors_log,
            logging.CRITICAL if severity == "critical" else logging.ERROR,
            f"{kind.error_type} ({severity}) in {operation or 'training'}: "
            f"{type(exc).__name__}: {message}",
            line,
        )
        # after the pipeline: its Redact processor has redacted the message and traceback in place
        self.spans.mark_error(exc, kind.error_type, line["message"], line["traceback"])
        if len(self.errors) < MAX_KEPT_ERRORS:
            self.errors.append(line)
        try:
            exc._traintel_recorded = self.run_id  # type: ignore[attr-defined]  # our marker
        except Exception:  # __slots__, a __setattr__ of the user's that refuses
            pass
        if kind.error_type != "interrupted":
            self.flush_soon()
        return line

    def check_finite(self, loss: SupportsFloat, step: int | None = None) -> float:
        """``run.check_finite``: a non-finite loss is counted as a logged one is (the
        ``nonfinite_loss`` event, ``traintel_nonfinite_loss_total``), recorded as an error of
        the operation ``check_finite`` and raised. ``step``: the step under way (the one
        ``halt_on_nonfinite`` would name for the same batch), else the next one."""
        value = to_number("run.check_finite", "loss", loss)
        if not math.isfinite(value):
            text = nonfinite_text(value)
            step = self.state.step + 1 if step is None else step
            self.nonfinite(self.state.loss_key or "loss", text, step)
            exc = NonFiniteLossError(f"loss is {text} at step {step}")
            self.error(
                exc, context={"loss": text, "step": step}, operation="check_finite", step=step
            )
            raise exc
        return float(value)

    def signal(self, name: str, decided_by: str) -> None:
        """A stop signal (SIGTERM: preemption, a time limit) arrived: a warning event that says
        who decides what happens, written soon."""
        self.own_event(
            "signal",
            logging.WARNING,
            {"signal": name, "decided_by": decided_by},
            text=f"{name} received at step {self.state.step}: " + _DECIDED[decided_by],
        )
        self.flush_soon()

    # -- non-finite values: counted, the first flagged, then a count now and then ----------
    def nonfinite(self, metric: str, text: str, step: int) -> None:
        """A NaN or infinite value passed to ``run.log``: the first of each metric is a warning
        with its step; later ones are counted and reported at most every
        ``NONFINITE_REPORT_S`` (a run that diverges early would otherwise print a line per
        step for the rest of its life). Never an exception."""
        state = self.state
        seen = state.nonfinite.get(metric)
        loss = state.is_loss(metric)
        if loss:
            state.nonfinite_losses += 1
        if seen is None:
            seen = state.nonfinite[metric] = NonFinite(step)
            seen.count = 1
            seen.next_report = time.time() + NONFINITE_REPORT_S
            self.own_event(
                "nonfinite_loss" if loss else "nonfinite_value",
                logging.WARNING,
                {"metric": metric, "value": text, "step": step, "first": True},
                text=f"{metric} is {text} at step {step}: the first non-finite {metric} "
                f"(later ones are counted, reported every {NONFINITE_REPORT_S:.0f} s)",
            )
            return
        seen.count += 1
        seen.last_step = step
        seen.unreported += 1
        now = time.time()
        if now >= seen.next_report:
            self._report_nonfinite(metric, seen, now)

    def periodic(self, now: float) -> None:
        """Counts of non-finite values not yet reported, when their report is due (called
        every few steps from the step recorder's rare path)."""
        for metric, seen in list(self.state.nonfinite.items()):
            if seen.unreported and now >= seen.next_report:
                self._report_nonfinite(metric, seen, now)

    def _report_nonfinite(self, metric: str, seen: NonFinite, now: float) -> None:
        self.own_event(
            "nonfinite_loss" if self.state.is_loss(metric) else "nonfinite_value",
            logging.WARNING,
            {
                "metric": metric,
                "count": seen.unreported,
                "total": seen.count,
                "first_step": seen.first_step,
                "step": seen.last_step,
            },
            text=f"{metric} was non-finite {seen.unreported} more time(s), {seen.count} since "
            f"step {seen.first_step} (the last at step {seen.last_step})",
        )
        seen.unreported = 0
        seen.next_report = now + NONFINITE_REPORT_S

    def halt_nonfinite(self, metric: str, text: str, step: int) -> None:
        """``halt_on_nonfinite``: a non-finite loss ends the run with a clear error."""
        exc = NonFiniteLossError(
            f"{metric} is {text} at step {step}; the run stops at the first non-finite loss "
            "(traintel.init(halt_on_nonfinite=True)). The record keeps every step up to it"
        )
        self.error(exc, context={metric: text, "step": step})
        raise exc

    def milestone(self, percent: int) -> None:
        state = self.state
        eta = state.eta_seconds()
        line: MilestoneLine = {
            "type": "milestone",
            "percent": percent,
            "step": state.step,
            "elapsed_s": round(time.time() - state.start_ts, 3),
            "eta_s": None if eta is None else round(eta, 3),
        }
        self.emit(_events_log, logging.INFO, f"milestone {percent}%", line, event="milestone")

    def run_start(
        self,
        identity: RunIdentity,
        config: RunConfig,
        continuation: Continuation,
        total_epochs: int | None,
        telemetry: RunTelemetry,
        initial_step: int | None = None,
        loss_key: str | None = None,
    ) -> None:
        """A segment's first lines (who, where, what version, which segment, what its telemetry
        did; the configuration, with the keys that changed since the record's last) and
        config.json."""
        before = continuation.before
        start: RunStartLine = {
            "ts": self.state.start_ts,
            "type": "run_start",
            "level": "info",
            "project": identity.project,
            "name": identity.name,
            "host": identity.host,
            "pid": os.getpid(),
            "world_size": identity.world_size,
            "local_rank": identity.local_rank,
            "traintel_version": __version__,
            "total_epochs": total_epochs,
            "total_steps": self.state.total_steps,
            "initial_step": initial_step,
            "loss_key": loss_key,
            "segment": continuation.segment,
            "resumed": continuation.resumed,
            "tags": list(identity.tags),
            "notes": identity.notes,
            "group": identity.group,
            "export": telemetry["export"],
            "export_interval_s": telemetry["export_interval_s"],
            "log_level": telemetry["log_level"],
            "resource": telemetry["resource"],
        }
        self.pipeline.write(start)
        if before is None:
            self.config(config, "start", [], identity.dir)
        else:
            changed = changed_keys(before.config or {}, config.values)
            if changed:
                _run_log.warning(
                    "run %s: the configuration changed since the last segment: "
                    "%s (the record keeps both; config.json has the history)",
                    identity.id,
                    ", ".join(changed),
                )
            self.config(config, "resume", changed, identity.dir)
            last = next(
                (s["last_step"] for s in reversed(before.segments) if s["last_step"] is not None),
                None,
            )
            if initial_step is not None and last is not None and initial_step < last:
                self.own_event(
                    "superseded",
                    logging.INFO,
                    {"after_step": initial_step, "through_step": last, "step": initial_step},
                    text=f"resumed after step {initial_step}: the record's steps "
                    f"{initial_step + 1}..{last} are superseded (counted once, their "
                    "lines kept)",
                )
        _run_log.info(
            "run %s (%s/%s) recording to %s%s",
            identity.id,
            identity.project,
            identity.name,
            identity.dir,
            f" (segment {continuation.segment})" if before is not None else "",
        )

    def config(
        self, config: RunConfig, reason: ConfigReason, changed: list[str], directory: Path
    ) -> None:
        """The whole configuration as a record line, and config.json with its history (every
        start, resume and update with the keys it changed)."""
        if reason == "update":
            self.check_live("run.config.update")
        now = time.time()
        line: ConfigLine = {
            "ts": now,
            "type": "config",
            "level": "info",
            "config": config.values,
            "config_hash": config.hash,
            "seed": config.seed,
            "reason": reason,
            "changed": changed,
        }
        if reason == "update":
            self.emit(
                _run_log,
                logging.INFO,
                f"config updated: {', '.join(changed)}",
                line,
                event="config_update",
            )
        else:
            self.pipeline.write(line)
        previous = read_json(directory / "config.json") if reason != "start" else None
        history = previous.get("history") if isinstance(previous, dict) else None
        entry = {"ts": now, "reason": reason, "config_hash": config.hash, "changed": changed}
        write_json(
            directory / "config.json",
            {
                "config": config.values,
                "config_hash": config.hash,
                "seed": config.seed,
                "history": [*(history if isinstance(history, list) else []), entry],
            },
            quiet=True,
        )

    def run_end(
        self,
        status: EndStatus,
        writer: RecordWriter,
        about: RunAbout,
        continuation: Continuation,
        user: Callable[[], dict[str, Any]] | None = None,
    ) -> RunSummary:
        """The segment's last lines (each custom instrument summarised, then ``run_end``),
        summary.json from what the writer folded, then the record written to its end.

        summary.json comes first: a kill during a long final write (a large backlog) leaves
        the summary, and lines that could not be written are counted in it."""
        state = self.state
        segments = continuation.segments
        segment_steps = state.steps_taken - continuation.steps_before
        self.report_nonfinite()
        writer.stop()
        writer.fold()  # observations still queued count in the summary
        now = time.time()
        instruments = instrument_summaries(writer.observations, state.counters, state.gauges)
        for name, figures in instruments:
            # mypy cannot check a TypedDict spread into one with optional keys (_Stamped's)
            instrument = cast(
                InstrumentLine,
                {"ts": now, "type": "instrument", "level": "info", "name": name, **figures},
            )
            self.pipeline.write(instrument)
        duration = now - state.start_ts
        line: RunEndLine = {
            "type": "run_end",
            "status": status,
            "duration_s": duration,
            "steps": segment_steps,
            "last_step": state.step,
        }
        self.emit(
            _run_log,
            logging.INFO if status == "finished" else logging.WARNING,
            f"run {status} after {segment_steps} steps in {duration:.1f}s; record in "
            f"{writer.directory}",
            line,
        )
        writer.fold()
        this: Segment = {
            "segment": len(segments) + 1,
            "start_ts": state.start_ts,
            "end_ts": now,
            "duration_s": duration,
            "status": status,
            "steps": segment_steps,
            "last_step": state.step,
        }
        summary = build_summary(
            about,
            state,
            writer.figures,
            writer.lines,
            instruments,
            now,
            [*segments, this],
            writer.figures.epochs,  # each epoch once: a resume from an older checkpoint took some back
        )
        path = writer.directory / "summary.json"
        write_json(path, summary)
        lost = writer.close()
        kept = user() if user is not None else {}
        if kept:  # run.summary: its defined metrics are read from the whole record
            summary["summary"] = kept
        if lost:
            summary["record"]["dropped"] = state.dropped
        if lost or kept:
            write_json(path, summary)
        if lost:
            _run_log.warning(
                "run %s: %d line(s) of the record could not be written (counted "
                "in summary.json's record.dropped)",
                about["run"],
                lost,
            )
        return summary

    def report_nonfinite(self) -> None:
        """Non-finite values not yet reported, reported now (the end of a run)."""
        self.periodic(float("inf"))

    def check_live(self, what: str) -> None:
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

    def emit(
        self,
        logger: logging.Logger,
        level: int,
        text: object,
        line: Mapping[str, object],
        event: str | None = None,
    ) -> None:
        if event is not None:
            self.state.events[event] = self.state.events.get(event, 0) + 1
        self.pipeline.submit(logger, level, text, line)


def ended(what: str, run_id: str) -> str:
    """Why ``what`` was refused: its run has finished."""
    return (
        f"{what}: run {run_id} has finished (run.finish() or the end of its with block); "
        "nothing more can be recorded in it. Start a new run with traintel.init()"
    )


_DECIDED = {
    "user_handler": "your handler decides what happens (run.stop_requested is set)",
    "ignored": "ignored (SIG_IGN); run.stop_requested is set",
    "loop": "run.stop_requested is set; the loop decides (sigterm='flag')",
    "traintel": "finishing the run and exiting (143 after SIGTERM: preempted; 129 after "
    "SIGHUP: interrupted)",
}


class _EventText:
    """An event's text for people, ``name key=value ...``, composed when it is read: by then the
    pipeline's Redact processor has redacted the fields, so that a value under a secret-looking
    key never reaches the text."""

    __slots__ = ("line",)

    def __init__(self, line: EventLine) -> None:
        self.line = line

    def __str__(self) -> str:
        detail = " ".join(_pair(k, v) for k, v in self.line["fields"].items())
        return f"{self.line['event']} {detail}".strip()


#: field values written as they are (anything else is checked for text first)
_PLAIN = frozenset({str, int, float, bool, type(None)})


def _pair(key: str, value: object) -> str:
    """``key=value`` for an event's text; a value whose text fails (nested in a list) by its
    type, so that the line is never lost to a ``--- Logging error ---``."""
    try:
        return f"{key}={value}"
    except Exception:
        return f"{key}=<{type(value).__name__}>"
