"""The real stack, natively: the collector, Prometheus and Alertmanager that compose runs, built
by `traintel stack install` and started by the `stack` fixture (tests/stack_fixture.py).

Telemetry goes in through the Python OTel SDK's OTLP/HTTP exporters, as traintel sends it, and
is read back from each backend's query API. Loki and Tempo are never built (AGPL): the sink, a
second collector on their endpoints, shows what the collector sends them; with a Loki or Tempo
binary supplied, the tests that query the real program run instead.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

from stack_fixture import eventually, promql, require
from traintel.stack import install
from traintel.stack.components import COMPONENTS
from traintel.stack.native import NativeStack, StackError

REPO = Path(__file__).resolve().parents[1]
SERVICE = "traintel-stack-test"


def _resource(test_id: str):
    from opentelemetry.sdk.resources import Resource

    return Resource.create({"service.name": SERVICE, "service.instance.id": test_id})


@pytest.mark.stack
def test_collector_health(stack: NativeStack) -> None:
    assert requests.get(stack.endpoints["collector_health"], timeout=5).status_code == 200
    metrics = requests.get(f"{stack.endpoints['collector_metrics']}/metrics", timeout=5).text
    assert "otelcol_process_uptime" in metrics


@pytest.mark.stack
def test_metrics_reach_prometheus_by_remote_write(stack: NativeStack) -> None:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    test_id = uuid.uuid4().hex
    exporter = OTLPMetricExporter(endpoint=f"{stack.endpoints['otlp_http']}/v1/metrics")
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=60_000)
    provider = MeterProvider(resource=_resource(test_id), metric_readers=[reader])
    counter = provider.get_meter("traintel.tests").create_counter("traintel_stack_test_steps")
    counter.add(7, {"project": "stacktest", "run": test_id})
    provider.force_flush()
    provider.shutdown()

    (series,) = eventually(
        lambda: promql(stack, f'{{__name__=~"traintel_stack_test_steps.*", run="{test_id}"}}'),
        60,
        what="the counter in Prometheus",
    )
    assert float(series["value"][1]) == 7
    assert series["metric"]["project"] == "stacktest"


@pytest.mark.stack("loki")
def test_logs_reach_loki(stack: NativeStack) -> None:
    require(stack, "loki")
    from opentelemetry._logs import LogRecord, SeverityNumber
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    test_id = uuid.uuid4().hex
    provider = LoggerProvider(resource=_resource(test_id))
    provider.add_log_record_processor(
        BatchLogRecordProcessor(OTLPLogExporter(endpoint=f"{stack.endpoints['otlp_http']}/v1/logs"))
    )
    provider.get_logger("traintel.tests").emit(
        LogRecord(
            body=f"stack test {test_id}",
            severity_number=SeverityNumber.WARN,
            severity_text="WARN",
            attributes={"run": test_id},
        )
    )
    provider.force_flush()
    provider.shutdown()

    def query():
        response = requests.get(
            f"{stack.endpoints['loki']}/loki/api/v1/query_range",
            params={
                "query": f'{{service_name="{SERVICE}"}} |= "{test_id}"',
                "start": str(int((time.time() - 600) * 1e9)),
            },
            timeout=5,
        )
        return response.json().get("data", {}).get("result")

    (stream,) = eventually(query, 60, what="the log line in Loki")
    assert stream["values"][0][1] == f"stack test {test_id}"


def _send_span(stack: NativeStack, test_id: str) -> str:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=_resource(test_id))
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{stack.endpoints['otlp_http']}/v1/traces"))
    )
    with provider.get_tracer("traintel.tests").start_as_current_span(f"epoch-{test_id}") as span:
        span.set_attribute("run", test_id)
        trace_id = span.get_span_context().trace_id
    provider.shutdown()
    return f"{trace_id:032x}"


@pytest.mark.stack
def test_traces_reach_the_collector_pipeline(stack: NativeStack) -> None:
    """Read back through the tap (a file exporter the fixture adds to the traces pipeline)."""
    test_id = uuid.uuid4().hex
    trace_id = _send_span(stack, test_id)

    def spans():
        tap = stack.tap_file("traces")
        found = []
        for line in tap.read_text().splitlines() if tap.exists() else []:
            for rs in json.loads(line)["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    found += [s for s in ss["spans"] if s["traceId"] == trace_id]
        return found

    (span,) = eventually(spans, 30, what="the span in the collector's traces pipeline")
    assert span["name"] == f"epoch-{test_id}"


@pytest.mark.stack("tempo")
def test_traces_reach_tempo(stack: NativeStack) -> None:
    require(stack, "tempo")
    trace_id = _send_span(stack, uuid.uuid4().hex)

    def fetch():
        response = requests.get(f"{stack.endpoints['tempo']}/api/v2/traces/{trace_id}", timeout=5)
        return response.status_code == 200 and response.json()

    eventually(fetch, 60, what="the trace in Tempo")


# --- Loki's and Tempo's endpoints, served by the sink (a second collector) ----------------------


def require_sink(stack: NativeStack, program: str) -> None:
    """Skip unless the sink stands in for ``program`` (a real Loki/Tempo takes its place)."""
    if program not in stack.sink_covers:
        pytest.skip(f"a real {program} runs: the sink does not stand in for it")


def _sink_records(stack: NativeStack, signal_name: str) -> list[tuple[dict, dict]]:
    """(resource attributes, record) for every log record or span the sink received."""
    path, out = stack.sink_file(signal_name), []
    kind, scopes, items = (
        ("resourceLogs", "scopeLogs", "logRecords")
        if signal_name == "logs"
        else ("resourceSpans", "scopeSpans", "spans")
    )
    for line in path.read_text().splitlines() if path.exists() else []:
        for resource in json.loads(line)[kind]:
            attributes = {
                a["key"]: next(iter(a["value"].values()))
                for a in resource["resource"].get("attributes", [])
            }
            out += [(attributes, item) for scope in resource[scopes] for item in scope[items]]
    return out


def _emit_log(stack: NativeStack, test_id: str, trace_id: int | None = None, **extra) -> None:
    """One log record through the collector, as traintel sends them (OTLP/HTTP, batched)."""
    from opentelemetry import trace
    from opentelemetry._logs import LogRecord, SeverityNumber
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    provider = LoggerProvider(resource=_resource(test_id))
    provider.add_log_record_processor(
        BatchLogRecordProcessor(OTLPLogExporter(endpoint=f"{stack.endpoints['otlp_http']}/v1/logs"))
    )
    context = None
    if trace_id is not None:
        span = trace.NonRecordingSpan(
            trace.SpanContext(
                trace_id,
                0x1234567890ABCDEF,
                is_remote=False,
                trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
            )
        )
        context = trace.set_span_in_context(span)
    provider.get_logger("traintel.tests").emit(
        LogRecord(
            body=f"stack test {test_id}",
            severity_number=SeverityNumber.WARN,
            severity_text="WARNING",
            attributes={"run": test_id, "type": "log", **extra},
            context=context,
        )
    )
    provider.force_flush()
    provider.shutdown()


@pytest.mark.stack
def test_logs_reach_lokis_otlp_endpoint_with_resource_and_trace_id(stack: NativeStack) -> None:
    """What the collector posts to http://loki:3100/otlp/v1/logs, received by the sink."""
    require_sink(stack, "loki")
    test_id, trace_id = uuid.uuid4().hex, uuid.uuid4().int >> 64 << 64 | 7
    _emit_log(stack, test_id, trace_id, traceback="x" * 40_000)

    def received():
        return [
            (r, rec)
            for r, rec in _sink_records(stack, "logs")
            if rec["body"].get("stringValue") == f"stack test {test_id}"
        ]

    ((resource, record),) = eventually(received, 60, what="the log record at Loki's endpoint")
    assert resource["service.name"] == SERVICE and resource["service.instance.id"] == test_id
    assert record["traceId"] == f"{trace_id:032x}" and record["spanId"] == "1234567890abcdef"
    assert record["severityText"] == "WARNING" and record["severityNumber"] == 13
    attributes = {a["key"]: a["value"]["stringValue"] for a in record["attributes"]}
    assert attributes["run"] == test_id and attributes["type"] == "log"
    # transform/loki_limits: an attribute Loki would reject the whole line for is cut to 16 KiB
    assert len(attributes["traceback"]) == 16384


@pytest.mark.stack
def test_spans_reach_tempos_otlp_receiver(stack: NativeStack) -> None:
    require_sink(stack, "tempo")
    test_id = uuid.uuid4().hex
    trace_id = _send_span(stack, test_id)

    def received():
        return [(r, s) for r, s in _sink_records(stack, "traces") if s["traceId"] == trace_id]

    ((resource, span),) = eventually(received, 60, what="the span at Tempo's OTLP receiver")
    assert span["name"] == f"epoch-{test_id}"
    assert resource["service.instance.id"] == test_id
    assert {a["key"]: a["value"]["stringValue"] for a in span["attributes"]}["run"] == test_id


def _queued(stack: NativeStack, exporter: str) -> float:
    text = requests.get(f"{stack.endpoints['collector_metrics']}/metrics", timeout=5).text
    found = re.findall(
        rf'^otelcol_exporter_queue_size{{[^}}]*exporter="{re.escape(exporter)}"'
        r"[^}]*} (\S+)$",
        text,
        re.MULTILINE,
    )
    return sum(map(float, found))


@pytest.mark.stack
def test_logs_and_spans_survive_a_backend_outage_and_a_collector_restart(stack: NativeStack):
    """Loki's and Tempo's endpoints go away; the collector queues what it accepted on disk, is
    itself restarted, and delivers everything once they are back (retries, file_storage)."""
    require_sink(stack, "loki")
    require_sink(stack, "tempo")
    test_id = uuid.uuid4().hex
    stack.stop("sink")
    try:
        _emit_log(stack, test_id)
        trace_id = _send_span(stack, test_id)
        eventually(
            lambda: (
                _queued(stack, "otlp_http/loki") >= 1 and _queued(stack, "otlp_grpc/tempo") >= 1
            ),
            60,
            what="the log record and the span queued for the absent backends",
        )
        stack.stop("otelcol")  # the queue must outlive the collector: it is on disk
        stack.start("otelcol")
        assert not [
            r
            for r in _sink_records(stack, "logs")
            if r[1]["body"].get("stringValue") == f"stack test {test_id}"
        ]
    finally:
        stack.start("sink")
    logs = eventually(
        lambda: [
            r
            for r in _sink_records(stack, "logs")
            if r[1]["body"].get("stringValue") == f"stack test {test_id}"
        ],
        150,
        interval=2,
        what="the queued log record after the restarts",
    )
    spans = eventually(
        lambda: [s for s in _sink_records(stack, "traces") if s[1]["traceId"] == trace_id],
        150,
        interval=2,
        what="the queued span after the restarts",
    )
    assert len(logs) == 1 and len(spans) == 1  # delivered once, not lost and not doubled


@pytest.mark.stack
def test_one_program_stops_and_starts_again(stack: NativeStack) -> None:
    """What fault tests build on: same ports and data after the restart."""
    stack.stop("alertmanager")
    assert stack.pid("alertmanager") is None and not stack.ready("alertmanager")
    stack.start("alertmanager")
    assert stack.ready("alertmanager")


@pytest.mark.parametrize(
    "name", ["otelcol", "prometheus", "alertmanager", "loki", "tempo", "grafana", "sink"]
)
def test_rendered_configs_name_only_this_host(name: str, tmp_path: Path) -> None:
    """Compose service names and bind-all addresses are gone; container paths point here."""
    try:
        _, _, rendered = NativeStack(tmp_path, sink=True).render(name)
    except StackError as error:
        pytest.skip(str(error))
    text = rendered.read_text()
    hosts = {h for c in COMPONENTS.values() for h in c.hosts}
    assert not [h for h in hosts if re.search(rf"(^|[\s/\"']){re.escape(h)}:\d", text, re.M)]
    assert "0.0.0.0" not in text
    assert not [
        p for p in ("/etc/", "/var/lib/", "/var/tempo", " /loki", " /prometheus") if p in text
    ]


def _shipped(pattern: str) -> list[Path]:
    return sorted(p for p in REPO.glob(pattern) if p.name != "builder-config.yaml")


@pytest.mark.stack
@pytest.mark.parametrize("config", _shipped("otel-collector/*.y*ml"), ids=lambda p: p.name)
def test_collector_configs_validate(config: Path, tmp_path: Path) -> None:
    """`otelcol validate` on each shipped collector config, as rendered for this host (its
    container paths must exist for file_storage to validate)."""
    _, _, rendered = NativeStack(tmp_path).render("otelcol", config)
    _check([str(install.binary("otelcol")), "validate", "--config", str(rendered)])


def _check(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{output}"
    return output
