"""Spans in the record: every span a run ends becomes a ``span`` line, exported live or not.

The record is the source of truth: a run that trains offline (``mode="offline"``), or whose
collector was down, still has every span with its ids and times, and ``traintel sync`` sends
them later exactly as the live export would have (the span ids in the record's log lines then
lead to them). :class:`RecordSpans` is an OpenTelemetry span processor next to the exporting
one; it writes through the event pipeline's record-only door, so the line is stamped like every
other. Attributes and event attributes are scrubbed of secrets on the way in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from traintel.core.redact import Redactor
from traintel.record.format import SpanEvent, SpanLine, SpanStatus

#: writes a line to the record alone (``Pipeline.write``)
Write = Callable[[SpanLine], None]


class RecordSpans(SpanProcessor):
    """Writes each ended span as a ``span`` line (on the thread that ended it: a few
    microseconds beside the hundred or more the SDK spends on a span)."""

    def __init__(self, write: Write, scrubber: Redactor) -> None:
        self._write = write
        self._scrubber = scrubber

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        line = span_line(span, self._scrubber)
        if line is not None:
            self._write(line)

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def span_line(span: ReadableSpan, scrubber: Redactor) -> SpanLine | None:
    """A span as a record line (None for a span without a context or times)."""
    context = span.context
    if context is None or span.start_time is None or span.end_time is None:
        return None
    status_code = cast(SpanStatus, span.status.status_code.name.lower())  # unset, ok, error
    events: list[SpanEvent] = [
        {
            "name": event.name,
            "time_ns": event.timestamp,
            "attributes": _scrubbed(event.attributes, scrubber),
        }
        for event in span.events
    ]
    return {
        "ts": span.end_time / 1e9,
        "type": "span",
        "level": "debug",
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "name": span.name,
        "parent_span_id": format(span.parent.span_id, "016x") if span.parent else None,
        "kind": span.kind.name.lower(),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": status_code,
        "status_message": span.status.description,
        "attributes": _scrubbed(span.attributes, scrubber),
        "events": events,
    }


def _scrubbed(attributes: Mapping[str, Any] | None, scrubber: Redactor) -> dict[str, Any]:
    """Attributes as JSON-ready values (sequences as lists), secrets scrubbed."""
    plain = {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in (attributes or {}).items()
    }
    scrubbed: dict[str, Any] = scrubber.deep(plain)
    return scrubbed
