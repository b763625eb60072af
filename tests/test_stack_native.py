"""The real stack, natively: the collector, Prometheus, Alertmanager and Loki that compose runs,
built by `traintel stack install` and started by the `stack` fixture (tests/stack_fixture.py).

Telemetry goes in through the Python OTel SDK's OTLP/HTTP exporters, as traintel sends it, and
is read back from each backend's query API. Tempo cannot be built here (components.py says
why): traces are read from the collector's file tap instead, and the Tempo test skips.
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
import yaml
from stack_fixture import eventually, require

from traintel.stack import install
from traintel.stack.components import COMPONENTS
from traintel.stack.native import REPO, NativeStack, StackError

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

    def query():
        response = requests.get(
            f"{stack.endpoints['prometheus']}/api/v1/query",
            params={"query": f'{{__name__=~"traintel_stack_test_steps.*", run="{test_id}"}}'},
            timeout=5,
        )
        return response.json()["data"]["result"]

    (series,) = eventually(query, 60, what="the counter in Prometheus")
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


@pytest.mark.stack
def test_one_program_stops_and_starts_again(stack: NativeStack) -> None:
    """What fault tests build on: same ports and data after the restart."""
    stack.stop("alertmanager")
    assert stack.pid("alertmanager") is None and not stack.ready("alertmanager")
    stack.start("alertmanager")
    assert stack.ready("alertmanager")


@pytest.mark.parametrize("name", ["otelcol", "prometheus", "alertmanager", "loki"])
def test_rendered_configs_name_only_this_host(name: str, tmp_path: Path) -> None:
    """Compose service names and bind-all addresses are gone; container paths point here."""
    try:
        _, _, rendered = NativeStack(tmp_path).render(name)
    except StackError as error:
        pytest.skip(str(error))
    text = rendered.read_text()
    hosts = {h for c in COMPONENTS.values() for h in c.hosts}
    assert not [h for h in hosts if re.search(rf"(^|[\s/\"']){re.escape(h)}:\d", text, re.M)]
    assert "0.0.0.0" not in text
    assert not [p for p in ("/etc/", "/var/lib/", " /loki", " /prometheus") if p in text]


def _shipped(pattern: str) -> list[Path]:
    return sorted(p for p in REPO.glob(pattern) if p.name != "builder-config.yaml")


@pytest.mark.stack
@pytest.mark.parametrize("config", _shipped("otel-collector/*.y*ml"), ids=lambda p: p.name)
def test_collector_configs_validate(config: Path, tmp_path: Path) -> None:
    """`otelcol validate` on each shipped collector config, as rendered for this host (its
    container paths must exist for file_storage to validate)."""
    _, _, rendered = NativeStack(tmp_path).render("otelcol", config)
    _check([str(install.binary("otelcol")), "validate", "--config", str(rendered)])


@pytest.mark.stack
def test_prometheus_config_checks(tmp_path: Path) -> None:
    """promtool on the rendered config also checks every rule file it names."""
    if not (REPO / "prometheus/prometheus.yml").exists():
        pytest.skip("config not yet written: prometheus/prometheus.yml")
    _, _, rendered = NativeStack(tmp_path).render("prometheus")
    out = _check([str(install.binary("prometheus", "promtool")), "check", "config", str(rendered)])
    assert "rules found" in out or "SUCCESS" in out


@pytest.mark.stack
def test_alertmanager_config_checks(tmp_path: Path) -> None:
    if not (REPO / "alertmanager/alertmanager.yml").exists():
        pytest.skip("config not yet written: alertmanager/alertmanager.yml")
    _check(
        [
            str(install.binary("alertmanager", "amtool")),
            "check-config",
            str(REPO / "alertmanager/alertmanager.yml"),
        ]
    )


def test_compose_pins_the_built_versions() -> None:
    """What CI tests is what compose runs: image tags equal the components table."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    images = {s["image"] for s in compose["services"].values() if "image" in s}
    assert {c.image for c in COMPONENTS.values()} <= images


def _check(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{output}"
    return output
