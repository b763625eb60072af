"""The event pipeline (traintel.record.pipeline) on its own: each processor, each sink, and which
door a line came through, with real stdlib loggers and LogRecords."""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from traintel.core.redact import Redactor
from traintel.export.otlp import flat_attributes
from traintel.export.server import EventHub
from traintel.record.pipeline import (
    RECORD_ATTR,
    Console,
    Identity,
    Pipeline,
    Redact,
    TraceIds,
    log_line,
    stamp,
)

Lines = list[dict[str, Any]]


def _record(text: str = "hello", level: int = logging.INFO, **extra: Any) -> logging.LogRecord:
    return logging.getLogger("traintel.test").makeRecord(
        "traintel.test", level, "f.py", 1, text, (), None, extra=extra
    )


@pytest.fixture
def lines() -> Lines:
    return []


@pytest.fixture
def logger(lines: Lines):
    """A `traintel.pipeline-test` logger tree whose one handler is a pipeline writing to `lines`."""
    pipeline = Pipeline(
        [Redact(Redactor({"s3cr3t-value"})), stamp, Identity({"run": "r", "rank": 0})],
        file=lambda line, record: lines.append(line),
    )
    root = logging.getLogger("traintel.pipeline-test")
    root.handlers, root.propagate, root.level = [pipeline], False, logging.INFO
    yield root.getChild("events")
    root.handlers = []


def test_stamp_takes_time_level_and_text_from_the_log_record() -> None:
    record = _record("text for people", logging.WARNING)
    assert stamp({"type": "event"}, record) == {
        "type": "event",
        "ts": record.created,
        "level": "warning",
        "message": "text for people",
    }
    kept = stamp({"type": "error", "message": "the exception's own", "level": "critical"}, record)
    assert (kept["message"], kept["level"]) == ("the exception's own", "critical")


def test_redact_redacts_text_fields_and_the_records_own_text() -> None:
    record = _record("uses s3cr3t-value")
    line = Redact(Redactor({"s3cr3t-value"}))(
        {
            "message": "s3cr3t-value!",
            "traceback": "at s3cr3t-value",
            "fields": {"token": "abc", "note": "s3cr3t-value"},
            "context": {"password": 1},
        },
        record,
    )
    assert line == {
        "message": "[REDACTED]!",
        "traceback": "at [REDACTED]",
        "fields": {"token": "[REDACTED]", "note": "[REDACTED]"},
        "context": {"password": "[REDACTED]"},
    }
    assert record.getMessage() == "uses [REDACTED]"


def test_identity_and_trace_ids() -> None:
    tracer = TracerProvider().get_tracer("test")
    run_span = tracer.start_span("training_run")
    line = Identity({"run": "r1", "rank": 3})({"type": "log", "rank": 0}, _record())
    assert (line["run"], line["rank"]) == ("r1", 0)  # set ones are kept
    ids = TraceIds(lambda: run_span)({}, _record())  # no current span: the run's
    assert ids["trace_id"] == format(run_span.get_span_context().trace_id, "032x")
    with tracer.start_as_current_span("load") as current:
        ids = TraceIds(lambda: run_span)({}, _record())
    assert ids["span_id"] == format(current.get_span_context().span_id, "016x")
    assert TraceIds()({}, _record()) == {"trace_id": None, "span_id": None}


def test_a_run_line_reaches_every_sink_and_below_the_level_only_the_record(
    logger, lines: Lines
) -> None:
    pipeline = logger.parent.handlers[0]
    heard: Lines = []
    pipeline.add_sink(lambda line, record: heard.append(line))
    pipeline.submit(logger, logging.INFO, "eval at step 1", {"type": "eval"})
    pipeline.submit(logger, logging.DEBUG, "quiet", {"type": "event"})
    pipeline.write({"type": "epoch"})
    assert [(line["type"], line.get("message"), line["run"]) for line in lines] == [
        ("eval", "eval at step 1", "r"),
        ("event", "quiet", "r"),
        ("epoch", None, "r"),
    ]
    assert [line["type"] for line in heard] == ["eval"]


def test_component_log_records_become_log_lines(logger, lines: Lines) -> None:
    try:
        raise ValueError("s3cr3t-value inside")
    except ValueError:
        logger.warning("shard %d missing", 3, exc_info=True, extra={"shard": 3})
    (line,) = lines
    assert (line["type"], line["logger"], line["level"]) == ("log", logger.name, "warning")
    assert line["message"].startswith("shard 3 missing\nTraceback")
    assert "[REDACTED] inside" in line["message"] and "s3cr3t" not in line["message"]
    assert line["fields"] == {"shard": 3}


def test_log_line_keeps_only_extra_as_fields() -> None:
    assert "fields" not in log_line(_record())
    assert log_line(_record(batch=7))["fields"] == {"batch": 7}
    assert RECORD_ATTR not in log_line(_record(**{RECORD_ATTR: {}})).get("fields", {})


def test_console_prints_the_scrubbed_text_at_its_level_and_leaves_milestones_out() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.INFO)
    console = Console(handler)
    record = _record("uses s3cr3t-value")
    Redact(Redactor({"s3cr3t-value"}))({}, record)
    console({"type": "event"}, record)
    console({"type": "milestone"}, _record("25% reached"))
    console({"type": "log"}, _record("detail", logging.DEBUG))
    assert stream.getvalue() == "uses [REDACTED]\n"


def test_the_event_stream_carries_run_lines_not_component_logs() -> None:
    hub = EventHub()
    subscription = hub.subscribe()
    hub({"type": "log", "message": "x"}, _record())
    hub({"type": "eval", "message": "y"}, _record())
    assert [line["type"] for line in subscription.lines] == ["eval"]
    assert subscription.wake.is_set()


def test_flat_attributes_for_otlp() -> None:
    assert flat_attributes(
        {
            "message": "m",
            "ts": 1.0,
            "run": "r",
            "rank": 0,
            "type": "event",
            "fields": {"a": 1},
            "trace_id": None,
            "step": 3,
        }
    ) == {"type": "event", "fields": '{"a":1}', "step": 3}
