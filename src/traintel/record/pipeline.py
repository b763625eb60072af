"""What happens to a record line, in one place: processors, then sinks.

As in structlog, a line passes through a list of processors, each a small callable that takes the
line (and the stdlib ``LogRecord`` it travels with) and returns it: :func:`stamp` (time, level,
text), :class:`Redact` (secrets, encodable text), :class:`Identity` (run and rank), :class:`TraceIds` (the trace
and span it belongs to). Then every sink gets the finished line: the record file, OTLP logs
(:class:`OtlpLogs`), the live ``/events`` stream (``traintel.export.server.EventHub``) and the console
(:class:`Console`).

Lines come from three doors. The run's own events (evals, events, errors, milestones, the end of
the run) enter through :meth:`Pipeline.submit` as a stdlib ``LogRecord`` carrying the line, so
that ``logging`` levels and handlers apply; below the logger's level they reach the record file
alone. Records of the ``traintel`` logger tree (``run.logger("data").info(...)``) reach the
pipeline as its ``logging.Handler`` and become ``log`` lines. Lines for the record alone
(``run_start``, ``config``, ``epoch``, ``instrument``) enter through :meth:`Pipeline.write`.
Steps are the exception: the hot path queues them for the record writer, which stamps them with
the same identity.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, cast

from opentelemetry import trace

from traintel.core.forks import reset_in_child
from traintel.core.redact import Redactor
from traintel.record.format import EventDict, Level, LogLine, RecordLine
from traintel.record.queue import Line, RecordQueue
from traintel.record.span_lines import Write

#: LogRecord attribute carrying a run's own line (events, errors, milestones, evals)
RECORD_ATTR = "traintel_record"


class LogExport(Protocol):
    """What the pipeline needs of the run's OTLP export (``traintel.export.otlp.OtlpExport``),
    named here so that the record, a layer below export, does not import it."""

    @property
    def exports_logs(self) -> bool: ...

    def emit_log(self, line: Mapping[str, Any]) -> None: ...

    def record_spans(self, write: Write, redactor: Redactor) -> None: ...


Processor = Callable[[EventDict, logging.LogRecord], EventDict]
Sink = Callable[[EventDict, logging.LogRecord], None]
#: the span a line belongs to when the caller has none (the epoch's, else the run's)
FallbackSpan = Callable[[], "trace.Span | None"]

_LEVELS: dict[int, Level] = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}
#: attributes every LogRecord has: anything else a log call passed (``extra=``) is a field
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    RECORD_ATTR,
}
_FORMATTER = logging.Formatter()


# -- processors --------------------------------------------------------------------------------
def stamp(line: EventDict, record: logging.LogRecord) -> EventDict:
    """Time, level and the text people read, from the log record, unless the line has its own
    (an error line keeps the exception's own text as its message)."""
    line.setdefault("ts", record.created)
    line.setdefault("level", _LEVELS.get(record.levelno, "info"))
    if "message" not in line and record.msg:
        line["message"] = record.getMessage()
    return line


class Redact:
    """The door of every line but steps: each value made encodable and every secret redacted
    (``traintel.core.redact``), text deeply, so that the record, OTLP, ``/events`` and the console get
    the same safe line; and the log record's own text and exception, which the console prints."""

    #: keys whose values traintel sets itself from validated names and enumerations
    TRUSTED = frozenset(
        {
            "ts",
            "type",
            "level",
            "run",
            "rank",
            "event",
            "logger",
            "error_type",
            "severity",
            "step",
            "epoch",
            "trace_id",
            "span_id",
        }
    )

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor

    def __call__(self, line: EventDict, record: logging.LogRecord) -> EventDict:
        redactor = self.redactor
        for key, value in line.items():
            if key not in self.TRUSTED and isinstance(value, (str, dict, list)):
                line[key] = redactor.deep(value)
        record.msg, record.args = redactor.text(record.getMessage()), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = redactor.text(_FORMATTER.formatException(record.exc_info))
        return line


class Identity:
    """The run's identity (run id and rank) on every line."""

    def __init__(self, fields: Mapping[str, object]) -> None:
        self.fields = dict(fields)

    def __call__(self, line: EventDict, record: logging.LogRecord) -> EventDict:
        for key, value in self.fields.items():
            line.setdefault(key, value)
        return line


def current_span(fallback: FallbackSpan | None = None) -> trace.Span:
    """The caller's span, or the run's own (the epoch's or the run's) when the caller has none."""
    span = trace.get_current_span()
    if not span.get_span_context().is_valid and fallback is not None:
        span = fallback() or span
    return span


class TraceIds:
    """The trace and span a line belongs to (hex, as Loki and Tempo show them), so that a log
    line leads to its trace."""

    def __init__(self, fallback: FallbackSpan | None = None) -> None:
        self.fallback = fallback

    def __call__(self, line: EventDict, record: logging.LogRecord) -> EventDict:
        context = current_span(self.fallback).get_span_context()
        valid = context.is_valid
        line.setdefault("trace_id", format(context.trace_id, "032x") if valid else None)
        line.setdefault("span_id", format(context.span_id, "016x") if valid else None)
        return line


# -- sinks -------------------------------------------------------------------------------------
class OtlpLogs:
    """Each line as an OTLP log record, in the trace context of the span it names (the
    ``TraceIds`` processor's): built from the finished line alone, as ``traintel sync`` builds
    it from the record."""

    def __init__(self, otlp: LogExport) -> None:
        self.otlp = otlp

    def __call__(self, line: EventDict, record: logging.LogRecord) -> None:
        self.otlp.emit_log(line)


class Console:
    """Lines for people through a stdlib handler (rich on a terminal, plain in batch logs) at its
    level. Milestones are left out: the progress display already shows them."""

    def __init__(self, handler: logging.Handler) -> None:
        self.handler = handler

    def __call__(self, line: EventDict, record: logging.LogRecord) -> None:
        if record.levelno >= self.handler.level and line.get("type") != "milestone":
            self.handler.handle(record)


# -- the pipeline ------------------------------------------------------------------------------
def log_line(record: logging.LogRecord) -> LogLine:
    """A ``log`` line for a record of the ``traintel`` logger tree; ``extra=`` becomes fields."""
    message = record.getMessage()
    if record.exc_info:
        message += "\n" + _FORMATTER.formatException(record.exc_info)
    line: LogLine = {"ts": record.created, "type": "log", "logger": record.name, "message": message}
    fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
    if fields:
        line["fields"] = fields
    return line


class Pipeline(logging.Handler):
    """Processors, then sinks, for every line but steps. It is the one handler of the
    ``traintel`` logger tree while a run is active; ``file`` (the record) is the first sink and
    the only one of lines below the log level."""

    def __init__(
        self, processors: Sequence[Processor], file: Sink, sinks: Sequence[Sink] = ()
    ) -> None:
        super().__init__(logging.DEBUG)
        self.processors = list(processors)
        self.file = file
        self.sinks: list[Sink] = [file, *sinks]
        reset_in_child(self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        """In a forked child nothing reaches the record, OTLP or the console: the run and its
        writer are the parent's."""
        self.file = lambda line, record: None
        self.sinks = [self.file]

    @classmethod
    def for_run(
        cls,
        queue: RecordQueue,
        redactor: Redactor,
        identity: Mapping[str, object],
        active_span: FallbackSpan,
        otlp: LogExport | None = None,
        console: logging.Handler | None = None,
    ) -> Pipeline:
        """A run's pipeline: Redact, stamp, Identity, TraceIds; then the record (queued for the
        writer), OTLP logs and the console where the run has them. Its record-only door takes
        every span the run ends too (``OtlpExport.record_spans``)."""
        append = queue.append
        sinks: list[Sink] = []
        if otlp is not None and otlp.exports_logs:
            sinks.append(OtlpLogs(otlp))
        if console is not None:
            sinks.append(Console(console))
        pipeline = cls(
            [Redact(redactor), stamp, Identity(identity), TraceIds(active_span)],
            file=lambda line, record: append(Line(line)),
            sinks=sinks,
        )
        if otlp is not None:
            otlp.record_spans(pipeline.write, redactor)
        return pipeline

    def submit(
        self, logger: logging.Logger, level: int, text: object, line: Mapping[str, object]
    ) -> None:
        """One of the run's own lines (a ``RecordLine``), with the text people read (any object,
        turned into text when read): through stdlib logging when ``logger`` takes ``level``
        (then every sink), else to the record alone."""
        record = logger.makeRecord(
            logger.name, level, "traintel", 0, text, (), None, extra={RECORD_ATTR: line}
        )
        if logger.isEnabledFor(level):
            logger.handle(record)
        else:
            self._to_file(record)

    def write(self, line: RecordLine) -> None:
        """A line (a ``RecordLine``) for the record alone: ``run_start``, ``config``, ``epoch``,
        ``instrument``."""
        record = logging.LogRecord("traintel", logging.INFO, "traintel", 0, "", (), None)
        setattr(record, RECORD_ATTR, line)
        self._to_file(record)

    def foreign(self, record: logging.LogRecord, step: int) -> None:
        """A record of the user's own loggers (``traintel.run.userlogs``): a ``log`` line at
        ``step``, to every sink but the console (the user's own handlers print it)."""
        try:
            made = log_line(record)
            made["step"] = step
            line = cast(EventDict, made)
            for process in self.processors:
                line = process(line, record)
            for sink in list(self.sinks):
                if type(sink) is not Console:
                    sink(line, record)
        except Exception:  # logging must never raise into training
            self.handleError(record)

    def add_sink(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def remove_sink(self, sink: Sink) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self._process(record)
            for sink in list(self.sinks):
                sink(line, record)
        except Exception:  # logging must never raise into training
            self.handleError(record)

    def _process(self, record: logging.LogRecord) -> EventDict:
        attached = getattr(record, RECORD_ATTR, None)
        # processors work on the line as a plain dict (structlog's EventDict), typed where made
        line = cast(EventDict, attached if attached is not None else log_line(record))
        for process in self.processors:
            line = process(line, record)
        return line

    def _to_file(self, record: logging.LogRecord) -> None:
        try:
            self.file(self._process(record), record)
        except Exception:
            self.handleError(record)
