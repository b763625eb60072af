"""A run's tracer: its own resource and span processors, on one SDK tracer provider per process.

The SDK's ``TracerProvider`` registers an ``os.register_at_fork`` callback in its constructor,
which can never be unregistered: a provider per run left ~0.9 KB and 11 objects in the process
per run, ~1 MB per 1,000 trials of a sweep. The resource of a span is its tracer's, so a run
needs its own ``Tracer`` (its resource names the run), not its own provider: this module keeps
one provider per process (its sampler, id generator and ``OTEL_SDK_DISABLED`` as the SDK reads
them) and builds each run's tracer with the run's resource and span processors.
"""

from __future__ import annotations

import threading
import warnings

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import (
    SpanLimits,
    SpanProcessor,
    SynchronousMultiSpanProcessor,
    Tracer,
    TracerProvider,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationInfo, InstrumentationScope

from traintel.export.sdk_settings import span_limits

_lock = threading.Lock()
_process: TracerProvider | None = None


def process_provider() -> TracerProvider:
    """The process's one SDK tracer provider (created at first use, never shut down: it holds
    no processor, every run's spans go through the run's own)."""
    global _process
    with _lock:
        if _process is None:
            # span limits as traintel checked them: the SDK's own reading raises on a bad value
            _process = TracerProvider(shutdown_on_exit=False, span_limits=span_limits())
        return _process


class RunTracerProvider(trace.TracerProvider):
    """The tracer provider of one run: ``add_span_processor``, ``force_flush`` and
    ``shutdown`` as the SDK's, for this run's spans only."""

    def __init__(self, resource: Resource, span_limits: SpanLimits) -> None:
        self.resource = resource
        self._span_limits = span_limits  # checked by traintel: a bad OTEL_* value never raises
        self._processor = SynchronousMultiSpanProcessor()  # type: ignore[no-untyped-call]
        self._tracers: dict[tuple[str, str], trace.Tracer] = {}

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: object = None,
    ) -> trace.Tracer:
        key = (instrumenting_module_name, instrumenting_library_version or "")
        if key in self._tracers:
            return self._tracers[key]
        process = process_provider()
        if isinstance(process.get_tracer(key[0], key[1]), trace.NoOpTracer):  # OTEL_SDK_DISABLED
            tracer: trace.Tracer = trace.NoOpTracer()
        else:
            with warnings.catch_warnings():  # the SDK's Tracer still takes the deprecated info
                warnings.simplefilter("ignore", DeprecationWarning)
                info = InstrumentationInfo(key[0], key[1], schema_url)
            tracer = Tracer(
                process.sampler,
                self.resource,
                self._processor,
                process.id_generator,
                info,
                self._span_limits,
                InstrumentationScope(key[0], key[1], schema_url),
            )
        self._tracers[key] = tracer
        return tracer

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        self._processor.add_span_processor(span_processor)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._processor.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self._processor.shutdown()
