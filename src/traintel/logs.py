"""stdlib ``logging`` integration.

Records on the ``traintel`` logger tree (``traintel.data``, ``traintel.model``, ...) go three ways:
a JSON line in the run record, an OTLP log record correlated with the current trace, and a
human-readable console line. Structured events and errors travel the same path with their record
line attached, so Loki sees exactly what the local record holds.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry import trace

if TYPE_CHECKING:
    from .export.otlp import OtlpExport
    from .record import RecordWriter
    from .redact import Scrubber

ROOT = "traintel"
#: LogRecord attribute carrying a ready-made record line (events, errors, milestones)
RECORD_ATTR = "traintel_record"
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName", RECORD_ATTR}


def current_span(fallback: Callable[[], Any] | None = None) -> Any:
    """The caller's span, or the run's own (epoch or run span) when the caller has none."""
    span = trace.get_current_span()
    if not span.get_span_context().is_valid and fallback is not None:
        span = fallback() or span
    return span


def trace_ids(span: Any) -> tuple[str | None, str | None]:
    context = span.get_span_context()
    if not context.is_valid:
        return None, None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


class RunLogHandler(logging.Handler):
    """Writes each record to the run record and ships it over OTLP, secrets scrubbed."""

    def __init__(self, writer: RecordWriter, otlp: OtlpExport | None, scrubber: Scrubber,
                 fallback_span: Callable[[], Any] | None = None) -> None:
        super().__init__(logging.DEBUG)
        self.writer = writer
        self.otlp = otlp
        self.scrubber = scrubber
        self.fallback_span = fallback_span

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = getattr(record, RECORD_ATTR, None)
            span = current_span(self.fallback_span)
            trace_id, span_id = trace_ids(span)
            if line is None:
                fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
                message = record.getMessage()
                if record.exc_info:
                    message += "\n" + logging.Formatter().formatException(record.exc_info)
                line = {"ts": record.created, "type": "log", "level": record.levelname.lower(),
                        "logger": record.name, "message": self.scrubber.text(message),
                        "trace_id": trace_id, "span_id": span_id}
                if fields:
                    line["fields"] = self.scrubber.deep(fields)
            else:
                line.setdefault("trace_id", trace_id)
                line.setdefault("span_id", span_id)
            # attributes first: once queued, the line belongs to the writer thread
            attributes = _flat_attributes(line) if self.otlp is not None else None
            body = line.get("message") or self.scrubber.text(record.getMessage())
            self.writer.line(line)
            if self.otlp is not None and attributes is not None:
                self.otlp.emit_log(record, body, attributes, span)
        except Exception:  # logging must never raise into training
            self.handleError(record)


#: the body, the timestamp, and the run's identity (already resource attributes)
_NOT_ATTRIBUTES = {"message", "ts", "run", "rank", "project"}


def _flat_attributes(line: dict[str, Any]) -> dict[str, Any]:
    """Record line -> OTLP attributes: scalars as they are, nested values as compact JSON."""
    out: dict[str, Any] = {}
    for key, value in line.items():
        if key in _NOT_ATTRIBUTES:
            continue
        if value is None:
            continue
        if isinstance(value, (dict, list)):
            out[key] = orjson.dumps(value, default=str).decode()
        else:
            out[key] = value
    return out


def _not_milestone(record: logging.LogRecord) -> bool:
    """Milestones already appear as progress lines; the console shows them once."""
    line = getattr(record, RECORD_ATTR, None)
    return not (line and line.get("type") == "milestone")


def console_handler(console: Any = None) -> logging.Handler:
    """Rich, coloured lines on a terminal; plain timestamped lines in batch-job logs.

    ``console`` is the progress bar's rich Console while one is shown: lines go through it so
    that they scroll above the bar rather than through it.
    """
    if console is not None or sys.stderr.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=console or Console(stderr=True),
                                               show_path=False, markup=False,
                                               rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_not_milestone)
    return handler


class EveryNSeconds(logging.Filter):
    """Lets one record through per interval: a dead collector is reported, not repeated."""

    def __init__(self, interval: float = 300.0) -> None:
        super().__init__()
        self.interval = interval
        self._last = -float("inf")

    def filter(self, record: logging.LogRecord) -> bool:
        if any(part in str(record.msg) for part in _SHUTDOWN_CHATTER):
            return False  # our bounded shutdown aborting retries on purpose
        now = time.monotonic()
        if now - self._last < self.interval:
            return False
        self._last = now
        original = _summary(record)
        record.msg = ("traintel: telemetry export failed (%s); retrying in the background, "
                      "the local run record is complete. Check the collector with "
                      "`traintel doctor`.")
        record.args = (original,)
        record.exc_info = None
        return True


def _summary(record: logging.LogRecord) -> str:
    try:
        return str(record.msg % record.args if record.args else record.msg)[:300]
    except (TypeError, ValueError):
        return str(record.msg)[:300]


_SHUTDOWN_CHATTER = ("already shutdown", "Shutdown in progress", "max retries or shutdown")
_EXPORT_LOGGERS = ("opentelemetry.exporter.otlp.proto.http",
                   "opentelemetry.exporter.otlp.proto.http.metric_exporter",
                   "opentelemetry.exporter.otlp.proto.http.trace_exporter",
                   "opentelemetry.exporter.otlp.proto.http._log_exporter",
                   "opentelemetry.sdk._shared_internal",
                   "opentelemetry.sdk.metrics._internal.export")
_quieted = False


def quiet_export_errors() -> None:
    """Rate-limit the SDK's per-attempt export errors to one friendly line every 5 minutes."""
    global _quieted
    if _quieted:
        return
    _quieted = True
    shared = EveryNSeconds()
    for name in _EXPORT_LOGGERS:
        logging.getLogger(name).addFilter(shared)
