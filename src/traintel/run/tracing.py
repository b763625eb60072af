"""The run's traces: one ``training_run`` span for the whole run, an ``epoch`` span per epoch, a
``train_step`` span every N steps, and the user's own spans (``run.span("checkpoint")``).

Step spans are made on the record writer's thread from the step's times (creating one costs
0.1-0.3 ms, too much for the training thread); a span the user opens outside any other belongs to
the current epoch, else to the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, ContextDecorator
from types import TracebackType
from typing import Literal, cast

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Status, StatusCode
from opentelemetry.util.types import AttributeValue

from traintel.core.forks import discard, reset_in_child
from traintel.core.misuse import printable, warn_once
from traintel.core.redact import Redactor
from traintel.core.refusals import Refusals
from traintel.core.validate import NameBudget
from traintel.record.format import EndStatus
from traintel.record.queue import Call, Observe, RecordQueue

#: called with an exception that escaped a user span, and the span's name (the operation)
OnError = Callable[[Exception, "str | None"], object]


class RunSpans:
    """The run's and the epochs' spans, and what other parts need of them."""

    def __init__(
        self,
        tracer: trace.Tracer,
        attributes: dict[str, AttributeValue],
        queue: RecordQueue,
        names: NameBudget,
        redactor: Redactor,
        refusals: Refusals | None = None,
    ) -> None:
        self.tracer = tracer
        self._refusals = refusals or Refusals(strict=True)
        self._queue = queue
        self._names = names
        self._redactor = redactor
        self.run = tracer.start_span("training_run", attributes=attributes)
        self._run_context = trace.set_span_in_context(self.run)
        self.epoch: trace.Span | None = None
        self._epoch_context: Context | None = None
        reset_in_child(self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        """In a forked child: what the spans queue goes nowhere (the writer is the parent's)."""
        self._queue = cast(RecordQueue, _Discarding())

    def parent(self) -> Context:
        """Where spans without a parent of their own go: the current epoch, else the run."""
        return self._epoch_context or self._run_context

    def active(self) -> trace.Span:
        """The span a log line belongs to when the caller has none: the epoch, else the run."""
        return self.epoch or self.run

    # -- epochs and steps ------------------------------------------------------------------
    def begin_epoch(self, epoch: int, began: float | None = None) -> None:
        """``began``: the epoch's start (Unix time) when it is said after it began."""
        self.epoch = self.tracer.start_span(
            "epoch",
            context=self._run_context,
            attributes={"epoch": epoch},
            start_time=None if began is None else int(began * 1e9),
        )
        self._epoch_context = trace.set_span_in_context(self.epoch)

    def end_epoch(self, steps: int) -> None:
        if self.epoch is not None:
            self.epoch.set_attribute("steps", steps)
            self.epoch.end()
        self.epoch = self._epoch_context = None

    def observe(self, item: Observe) -> None:
        """A span's duration, for the record writer (the operation histogram)."""
        self._queue.append(item)

    def step(self, start: float, end: float, step: int, epoch: int) -> None:
        """A ``train_step`` span from the step's own times, made on the record writer's thread."""
        self._queue.append(Call(self._step_span, (start, end, step, epoch, self.parent())))

    def _step_span(self, start: float, end: float, step: int, epoch: int, parent: Context) -> None:
        span = self.tracer.start_span(
            "train_step",
            context=parent,
            start_time=int(start * 1e9),
            attributes={"step": step, "epoch": epoch},
        )
        span.end(end_time=int(end * 1e9))

    # -- errors and the end ----------------------------------------------------------------
    def mark_error(self, exc: BaseException, error_type: str, message: str, traceback: str) -> None:
        """An exception event and an error status on the caller's span, the epoch's and the
        run's, with traintel's scrubbed text in place of the SDK's raw one."""
        spans = (trace.get_current_span(), self.epoch, self.run)
        # the SDK's record_exception would format the traceback again with the whole message
        # (0.6 s per MB) and call str(exc) itself (which may raise): the event it makes, from
        # the text already cut and redacted
        kind = type(exc)
        attributes: dict[str, AttributeValue] = {
            "exception.type": kind.__name__
            if kind.__module__ == "builtins"
            else f"{kind.__module__}.{kind.__qualname__}",
            "exception.message": message,
            "exception.stacktrace": traceback,
            "exception.escaped": "False",
            "error_type": error_type,
        }
        for span in {id(s): s for s in spans if s is not None and s.is_recording()}.values():
            span.add_event("exception", attributes)
            span.set_status(Status(StatusCode.ERROR, f"{error_type}: {type(exc).__name__}"))

    def finish(self, status: EndStatus, steps: int) -> None:
        if status != "finished":
            self.run.set_status(Status(StatusCode.ERROR, status))
        self.run.set_attribute("status", status)
        self.run.set_attribute("steps", steps)
        self.run.end()

    # -- the user's spans ------------------------------------------------------------------
    def span(self, name: str, attributes: dict[str, AttributeValue], on_error: OnError) -> Span:
        """A user's span: its name is an operation label, admitted by the run's name budget; its
        attributes are exported, redacted."""
        try:
            self._names.admit("run.span", "spans", name, "Put varying parts in attributes")
        except (TypeError, ValueError) as error:  # a bad name, or one beyond the budget
            self._refusals.refuse(
                "run.span", name, error, then="the block runs untimed, its errors still recorded"
            )
            return RefusedSpan(self, "refused", {}, on_error)
        try:
            kept = self._redactor.deep(_attributes(name, attributes))
        except Exception as failed:  # an attribute whose text fails
            self._refusals.refuse(
                "run.span",
                name,
                ValueError(
                    f"run.span {name!r}: its attributes cannot be written as text "
                    f"({type(failed).__name__}); pass numbers, strings or booleans"
                ),
                "field",
                "the span has no attributes",
            )
            kept = {}
        return Span(self, name, kept, on_error)


_ATTRIBUTE_TYPES = (str, bool, int, float)


def _attributes(span: str, attributes: dict[str, AttributeValue]) -> dict[str, AttributeValue]:
    """Attributes the SDK takes: its types as they are, sequences of them, anything else as its
    text (the SDK would call ``__str__`` later, on the span's start, where one that raises
    escaped into the training loop), said once per span and key."""
    out: dict[str, AttributeValue] = {}
    for key, value in attributes.items():
        if isinstance(value, (*_ATTRIBUTE_TYPES, bytes, Mapping)) or (
            isinstance(value, (list, tuple)) and all(isinstance(v, _ATTRIBUTE_TYPES) for v in value)
        ):
            out[key] = value
            continue
        if value is None:
            continue
        text = printable(value)
        if text.startswith("<") and "whose __str__ raised" in text:
            warn_once(
                f"span.attribute.{span}.{key}",
                f"run.span({span!r}): attribute {key!r} cannot be made text ({text}); "
                "recorded as that note. Pass a str, number or bool",
            )
        out[key] = text
    return out


class Span(ContextDecorator):
    """``with run.span("checkpoint"):`` or ``@run.span("checkpoint")``: a span around the block,
    its duration observed as an operation, an exception recorded as a classified error."""

    def __init__(
        self, spans: RunSpans, name: str, attributes: dict[str, AttributeValue], on_error: OnError
    ) -> None:
        self._spans = spans  # its queue: the run's (nowhere in a forked child)
        self.name = name
        self.attributes = attributes
        self._on_error = on_error
        #: a stack: the same span object may be entered again while open (recursion)
        self._open: list[tuple[AbstractContextManager[trace.Span], float]] = []

    def __enter__(self) -> trace.Span:
        spans = self._spans
        parent = None if trace.get_current_span().is_recording() else spans.parent()
        manager = spans.tracer.start_as_current_span(
            self.name,
            context=parent,
            attributes=self.attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        span = manager.__enter__()
        self._open.append((manager, time.perf_counter()))
        return span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if not self._open:
            warn_once(
                f"span.exit.{self.name}",
                f"span {self.name!r} was exited more often than "
                "entered; the extra exit is ignored (use `with run.span(name):`)",
            )
            return False
        manager, started = self._open.pop()
        elapsed = time.perf_counter() - started
        if isinstance(exc, Exception):
            self._on_error(exc, self.name)
        self._spans.observe(Observe("operation", self.name, elapsed))
        manager.__exit__(exc_type, exc, tb)
        return False


class RefusedSpan(Span):
    """What ``run.span`` returns for a name it refused: the block runs as it would, untimed and
    without a span (its name would be a new series); an exception in it is still recorded."""

    def __enter__(self) -> trace.Span:
        return trace.INVALID_SPAN

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if isinstance(exc, Exception):
            self._on_error(exc, None)
        return False


class _Discarding:
    """A queue that keeps nothing (a forked child's)."""

    append = staticmethod(discard)
