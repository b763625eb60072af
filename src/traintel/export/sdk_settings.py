"""The OpenTelemetry SDK's own settings (batch processors, the metric reader, attribute limits),
read from their ``OTEL_*`` variables and checked by traintel before the SDK sees them.

Left to the SDK, a bad value stopped ``traintel.init`` with an error that mostly did not name the
variable (``OTEL_BSP_MAX_EXPORT_BATCH_SIZE=99999``: "max_export_batch_size must be less than or
equal to max_queue_size"; ``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT=abc``; ``OTEL_METRIC_EXPORT_INTERVAL=0``),
and ``OTEL_METRIC_EXPORT_INTERVAL=1e15`` killed the metric reader's thread (``Event.wait``
overflows), so that no metric was exported again. Settings from the environment never stop a
run: each value is checked against what the SDK accepts, and a bad one is replaced by its default
with one warning naming the variable. The values are then passed to the SDK's constructors, so
that it reads none of these variables itself.
"""

from __future__ import annotations

import logging
import math
from typing import TypedDict

from opentelemetry.sdk._logs import LogRecordLimits
from opentelemetry.sdk.trace import SpanLimits

from traintel.core import env

log = logging.getLogger("traintel.export")

#: Spans and log records per export request (the SDK's default is 512). Encoding a batch holds
#: the interpreter lock from start to end: with a span every step, 512 at a time made a paced loop
#: late by up to 23 ms, 32 at a time kept it on time (benchmarks/stalls.py).
EXPORT_BATCH = 32
#: the SDK's defaults (opentelemetry-sdk 1.45)
SDK_BATCH, SDK_QUEUE = 512, 2048
#: milliseconds between metric exports unless OTEL_METRIC_EXPORT_INTERVAL says otherwise (the
#: SDK's 60000 is too coarse for step curves and stall alerts)
METRIC_INTERVAL_MS = 15_000.0
#: the longest wait any of these settings may ask for (a day, in milliseconds): beyond it the
#: SDK's threads overflow ``Event.wait``
MAX_MS = 86_400_000
#: the largest queue or batch (items held in memory)
MAX_ITEMS = 1_000_000

_warned: set[str] = set()


class ProcessorOptions(TypedDict):
    """A batch processor's settings, as its constructor takes them."""

    max_queue_size: int
    max_export_batch_size: int
    schedule_delay_millis: int
    export_timeout_millis: int


def _warn(variable: env.Variable, text: str, rule: str, default: object) -> None:
    message = (
        f"{variable.name}={text!r} is refused: {rule}; using the default ({default}) and going on"
    )
    if message not in _warned:  # once per process: every run would repeat it
        _warned.add(message)
        log.warning("traintel: %s", message)


def whole(variable: env.Variable, default: int, low: int, high: int) -> int:
    """An integer setting in [low, high], else ``default`` with a warning naming the variable."""
    text = variable.get()
    if text is None:
        return default
    try:
        value = int(text.strip())
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        _warn(variable, text, f"it must be a whole number from {low:,} to {high:,}", default)
        return default
    return value


def milliseconds(variable: env.Variable, default: float) -> float:
    """A positive number of milliseconds up to a day, else ``default`` (warned)."""
    text = variable.get()
    if text is None:
        return default
    try:
        value = float(text.strip())
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_MS:  # NaN too
        _warn(
            variable,
            text,
            f"it must be a number of milliseconds above 0, at most {MAX_MS:,} (a day)",
            default,
        )
        return default
    return value


def processor_options(
    queue: env.Variable,
    batch: env.Variable,
    delay: env.Variable,
    timeout: env.Variable,
    default_delay: int,
) -> ProcessorOptions:
    """A batch processor's keyword arguments. The batch is :data:`EXPORT_BATCH` unless set, or
    unless the queue is set (then the SDK's default, within the queue), and never above the
    queue: the SDK refused that combination."""
    queue_size = whole(queue, SDK_QUEUE, 1, MAX_ITEMS)
    default_batch = EXPORT_BATCH if queue.get() is None else min(SDK_BATCH, queue_size)
    batch_size = whole(batch, default_batch, 1, MAX_ITEMS)
    if batch_size > queue_size:
        _warn(
            batch,
            str(batch_size),
            f"it is more than the queue ({queue.name}={queue_size})",
            min(default_batch, queue_size),
        )
        batch_size = min(default_batch, queue_size)
    return {
        "max_queue_size": queue_size,
        "max_export_batch_size": batch_size,
        # whole milliseconds, at least 1: the SDK refuses 0 (and 0.5 would become 0)
        "schedule_delay_millis": max(1, int(milliseconds(delay, default_delay))),
        "export_timeout_millis": max(1, int(milliseconds(timeout, 30_000))),
    }


def span_processor_options() -> ProcessorOptions:
    return processor_options(
        env.OTEL_BSP_MAX_QUEUE_SIZE,
        env.OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
        env.OTEL_BSP_SCHEDULE_DELAY,
        env.OTEL_BSP_EXPORT_TIMEOUT,
        5_000,
    )


def log_processor_options() -> ProcessorOptions:
    return processor_options(
        env.OTEL_BLRP_MAX_QUEUE_SIZE,
        env.OTEL_BLRP_MAX_EXPORT_BATCH_SIZE,
        env.OTEL_BLRP_SCHEDULE_DELAY,
        env.OTEL_BLRP_EXPORT_TIMEOUT,
        1_000,
    )


def metric_interval_ms() -> float:
    """Milliseconds between metric exports: OTEL_METRIC_EXPORT_INTERVAL, else 15000."""
    return milliseconds(env.OTEL_METRIC_EXPORT_INTERVAL, METRIC_INTERVAL_MS)


def metric_timeout_ms() -> float:
    return milliseconds(env.OTEL_METRIC_EXPORT_TIMEOUT, 30_000.0)


def _limit(variable: env.Variable, replacement: int | None) -> int | None:
    """A limit as the SDK's constructor takes it: None (the SDK reads the variable: it is unset
    or valid), else ``replacement`` of a bad value (warned)."""
    text = variable.get()
    if text is None or _valid_limit(text):
        return None
    _warn(
        variable,
        text,
        "it must be a non-negative whole number (or 'unset')",
        "no limit" if replacement in (None, SpanLimits.UNSET) else replacement,
    )
    return SpanLimits.UNSET if replacement is None else replacement


def _valid_limit(text: str) -> bool:
    text = text.strip().lower()
    return text == "unset" or (text.isdigit() and text.isascii())


def _general(variable: env.Variable, default: int | None) -> int | None:
    """A general limit's value when valid (the per-kind limits' default), else ``default``."""
    text = variable.get()
    if text is None or not _valid_limit(text) or text.strip().lower() == "unset":
        return default
    return int(text.strip())


def span_limits() -> SpanLimits:
    """The span limits of the variables, each bad one replaced by its default (a per-kind one
    by the general one)."""
    count = _general(env.OTEL_ATTRIBUTE_COUNT_LIMIT, 128)
    length = _general(env.OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT, None)
    return SpanLimits(
        max_attributes=_limit(env.OTEL_ATTRIBUTE_COUNT_LIMIT, 128),
        max_attribute_length=_limit(env.OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT, None),
        max_span_attributes=_limit(env.OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT, count),
        max_span_attribute_length=_limit(env.OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT, length),
        max_events=_limit(env.OTEL_SPAN_EVENT_COUNT_LIMIT, 128),
        max_links=_limit(env.OTEL_SPAN_LINK_COUNT_LIMIT, 128),
        max_event_attributes=_limit(env.OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT, count),
        max_link_attributes=_limit(env.OTEL_LINK_ATTRIBUTE_COUNT_LIMIT, count),
    )


def log_limits() -> LogRecordLimits:
    """The log record limits of the variables, each bad one replaced by its default."""
    count = _general(env.OTEL_ATTRIBUTE_COUNT_LIMIT, 128)
    length = _general(env.OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT, None)
    return LogRecordLimits(
        max_attributes=_limit(env.OTEL_ATTRIBUTE_COUNT_LIMIT, 128),
        max_attribute_length=_limit(env.OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT, None),
        max_log_record_attributes=_limit(env.OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT, count),
        max_log_record_attribute_length=_limit(
            env.OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT, length
        ),
    )
