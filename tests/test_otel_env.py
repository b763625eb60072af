"""OpenTelemetry's environment variables, honoured as the SDK specification says, against the real
collector (traintel's own build) over both protocols.

Each case runs a small traintel run in a fresh Python process with the variables set, exporting to
a "probe": the collector with an OTLP receiver (gRPC and HTTP, TLS where asked) that writes what it
receives to files, and copies the request header ``x-traintel-probe`` into a resource attribute
(the resource processor's ``from_context``), so that the files show which headers arrived.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import traintel_cli
from kube_fixture import make_ca, make_certificate
from stack_fixture import eventually
from traintel.export import selection
from traintel.export.otlp import Sinks
from traintel.stack import install
from traintel.stack.native import free_port

PROTOCOLS = ("http/protobuf", "grpc")
RUN = """
import sys, traintel
with traintel.init(project="otel", dir=sys.argv[1], sample_interval=0, progress="off",
                   console_logs=False, step_span_every=1, shutdown_timeout=10) as run:
    for _ in run.track(range(3)):
        run.log(loss=1.0)
    run.logger("probe").warning("probe " + "x" * int(sys.argv[2]))
"""

pytestmark = pytest.mark.skipif(
    install.binary("otelcol") is None, reason=install.missing_reason("otelcol") or "no collector"
)


class Probe:
    """A collector receiving OTLP on free loopback ports and writing each signal to a file."""

    def __init__(self, directory: Path, tls: dict[str, str] | None = None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.grpc, self.http, self.health = free_port(), free_port(), free_port()
        receiver: dict = {"include_metadata": True}
        if tls:
            receiver["tls"] = tls
        config = {
            "receivers": {
                "otlp": {
                    "protocols": {
                        "grpc": {**receiver, "endpoint": f"127.0.0.1:{self.grpc}"},
                        "http": {**receiver, "endpoint": f"127.0.0.1:{self.http}"},
                    }
                }
            },
            "processors": {
                "resource/headers": {
                    "attributes": [
                        {
                            "key": "probe.header",
                            "from_context": "metadata.x-traintel-probe",
                            "action": "upsert",
                        }
                    ]
                }
            },
            "exporters": {
                f"file/{signal}": {"path": str(self.file(signal)), "flush_interval": "100ms"}
                for signal in selection.SIGNALS
            },
            "extensions": {"health_check": {"endpoint": f"127.0.0.1:{self.health}"}},
            "service": {
                "extensions": ["health_check"],
                "telemetry": {"metrics": {"level": "none"}},
                "pipelines": {
                    signal: {
                        "receivers": ["otlp"],
                        "processors": ["resource/headers"],
                        "exporters": [f"file/{signal}"],
                    }
                    for signal in selection.SIGNALS
                },
            },
        }
        path = self.dir / "probe.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log = (self.dir / "probe.log").open("w")
        self.proc = subprocess.Popen(
            [str(install.binary("otelcol")), "--config", str(path)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        eventually(self._ready, 30, 0.2, "the probe collector to start")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, (self.dir / "probe.log").read_text()
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.health)) == 0

    def file(self, signal: str) -> Path:
        return self.dir / f"{signal}.json"

    def received(self, signal: str) -> list[dict]:
        """Every resource (attributes as a dict) of ``signal`` received so far."""
        key = {"traces": "resourceSpans", "metrics": "resourceMetrics", "logs": "resourceLogs"}
        out = []
        try:
            lines = self.file(signal).read_text().splitlines()
        except OSError:
            return out
        for line in lines:
            for resource in json.loads(line).get(key[signal], []):
                attrs = {
                    a["key"]: next(iter(a["value"].values()))
                    for a in resource["resource"].get("attributes", [])
                }
                out.append({"attributes": attrs, "body": resource})
        return out

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)
        self.log.close()


@pytest.fixture
def probe(tmp_path: Path) -> Iterator[Probe]:
    found = Probe(tmp_path / "probe")
    yield found
    found.close()


def _run(
    tmp_path: Path, env: dict[str, str], message_bytes: int = 10
) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(tmp_path / "runs"), str(message_bytes)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _endpoint(probe: Probe, protocol: str, scheme: str = "http") -> str:
    port = probe.grpc if protocol == "grpc" else probe.http
    return f"{scheme}://127.0.0.1:{port}"


def _to(probe: Probe, protocol: str, **more: str) -> dict[str, str]:
    """The variables of an export to ``probe`` over ``protocol``, and ``more``."""
    return {
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_ENDPOINT": _endpoint(probe, protocol),
        **more,
    }


def _signal_path(protocol: str, signal: str) -> str:
    """A per-signal endpoint: HTTP's is the full URL (no path appended), gRPC's the address."""
    return "" if protocol == "grpc" else f"/v1/{signal}"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_protocol_endpoint_and_headers_general_and_per_signal(probe, tmp_path, protocol):
    done = _run(
        tmp_path,
        _to(
            probe,
            protocol,
            OTEL_EXPORTER_OTLP_HEADERS="x-traintel-probe=general",
            OTEL_EXPORTER_OTLP_TRACES_HEADERS="x-traintel-probe=traces-only",
        ),
    )
    for signal in selection.SIGNALS:
        eventually(lambda: probe.received(signal), 20, 0.2, f"{signal} over {protocol}")
    headers = {
        signal: {r["attributes"].get("probe.header") for r in probe.received(signal)}
        for signal in selection.SIGNALS
    }
    assert headers == {"traces": {"traces-only"}, "metrics": {"general"}, "logs": {"general"}}
    assert all(r["attributes"]["project"] == "otel" for r in probe.received("metrics"))
    assert "traintel:" not in done.stderr  # no configuration warning


def _split_arrived(metrics_probe: Probe, rest_probe: Probe) -> None:
    """Wait for metrics at the one collector, traces and logs at the other."""
    eventually(lambda: metrics_probe.received("metrics"), 20, 0.2, "metrics")
    eventually(
        lambda: rest_probe.received("traces") and rest_probe.received("logs"),
        20,
        0.2,
        "traces and logs",
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_per_signal_protocol_and_endpoint(tmp_path, protocol):
    """Metrics over one protocol to one collector, traces and logs over the other to another."""
    other = PROTOCOLS[1 - PROTOCOLS.index(protocol)]
    metrics_probe, rest_probe = Probe(tmp_path / "m"), Probe(tmp_path / "r")
    try:
        _run(
            tmp_path,
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": other,
                "OTEL_EXPORTER_OTLP_ENDPOINT": _endpoint(rest_probe, other),
                "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": protocol,
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": _endpoint(metrics_probe, protocol)
                + _signal_path(protocol, "metrics"),
            },
        )
        _split_arrived(metrics_probe, rest_probe)
        assert not rest_probe.received("metrics")
        assert not metrics_probe.received("traces") and not metrics_probe.received("logs")
    finally:
        metrics_probe.close()
        rest_probe.close()


def test_a_sync_reads_the_variables_a_live_run_reads(tmp_path):
    """``traintel sync`` without ``--endpoint``: the general and per-signal endpoints and
    headers, and the timeout in milliseconds, as a live export reads them."""
    metrics_probe, rest_probe = Probe(tmp_path / "m"), Probe(tmp_path / "r")
    try:
        variables = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": _endpoint(rest_probe, "http/protobuf"),
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": _endpoint(metrics_probe, "http/protobuf")
            + "/v1/metrics",
            "OTEL_EXPORTER_OTLP_HEADERS": "x-traintel-probe=general",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-traintel-probe=traces-only",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "5000",
        }
        _run(tmp_path, {**variables, "TRAINTEL_MODE": "offline"})
        time.sleep(0.5)
        assert not any(
            probe.received(signal)
            for probe in (metrics_probe, rest_probe)
            for signal in selection.SIGNALS
        ), "an offline run exported"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        done = traintel_cli("sync", str(tmp_path / "runs"), env={**clean, **variables})
        assert done.returncode == 0, done.stderr[-3000:]
        _split_arrived(metrics_probe, rest_probe)
        assert not rest_probe.received("metrics") and not metrics_probe.received("logs")
        headers = {
            signal: {
                r["attributes"].get("probe.header")
                for r in (metrics_probe if signal == "metrics" else rest_probe).received(signal)
            }
            for signal in selection.SIGNALS
        }
        assert headers == {"traces": {"traces-only"}, "metrics": {"general"}, "logs": {"general"}}
    finally:
        metrics_probe.close()
        rest_probe.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_exporter_selection_none_and_console(probe, tmp_path, protocol):
    done = _run(
        tmp_path, _to(probe, protocol, OTEL_TRACES_EXPORTER="none", OTEL_LOGS_EXPORTER="console")
    )
    eventually(lambda: probe.received("metrics"), 20, 0.2, "metrics")
    time.sleep(1.0)  # the file exporter flushes every 100 ms: anything sent has landed
    assert probe.received("traces") == [] and probe.received("logs") == []
    printed = [json.loads(block) for block in _json_blocks(done.stdout)]
    assert any(str(p.get("body", "")).startswith("probe x") for p in printed), done.stdout[:2000]


def _json_blocks(text: str) -> list[str]:
    """The console exporter's pretty-printed JSON objects, one per record."""
    blocks, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "{":
            depth, start = depth + 1, (i if depth == 0 else start)
        elif char == "}":
            depth -= 1
            if depth == 0:
                blocks.append(text[start : i + 1])
    return blocks


class ByteCounter:
    """A TCP relay in front of the probe counting the bytes the client sends."""

    def __init__(self, port: int) -> None:
        self.target, self.sent = port, 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if counted:
                    self.sent += len(chunk)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            sink.close()

    def close(self) -> None:
        self.server.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_compression_gzip_shrinks_what_goes_on_the_wire(probe, tmp_path, protocol):
    relay = ByteCounter(probe.grpc if protocol == "grpc" else probe.http)
    try:
        _run(
            tmp_path,
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{relay.port}",
                "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
                "OTEL_TRACES_EXPORTER": "none",
                "OTEL_METRICS_EXPORTER": "none",
            },
            message_bytes=500_000,
        )
        logs = eventually(lambda: probe.received("logs"), 20, 0.2, "logs")
    finally:
        relay.close()
    assert "x" * 500_000 in json.dumps(logs[0]["body"])  # arrived whole
    assert relay.sent < 50_000, f"{relay.sent} bytes for a 500 kB record: not compressed"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_timeout_is_in_milliseconds(tmp_path, monkeypatch, protocol):
    """OTEL_EXPORTER_OTLP_TIMEOUT=500 is half a second (opentelemetry-python alone would wait
    500 s): an export to a server that accepts and never answers gives up within seconds."""
    silent = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(silent.accept()[0]), daemon=True).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "60000")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "500")
    assert selection.timeout_s("traces") == 0.5 and selection.timeout_s("logs") == 60.0
    sinks = Sinks.otlp()
    from opentelemetry.sdk.trace import TracerProvider

    span = TracerProvider().get_tracer("t").start_span("s")
    span.end()
    started = time.monotonic()
    try:
        assert sinks.span_exporter.export([span]).name == "FAILURE"
    finally:
        for exporter in (sinks.span_exporter, sinks.metric_exporter, sinks.log_exporter):
            exporter.shutdown()
        silent.close()
    assert time.monotonic() - started < 10


def _certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    directory.mkdir(exist_ok=True)
    paths = {
        name: directory / f"{name}.pem"
        for name in ("ca", "ca-key", "server", "server-key", "client", "client-key")
    }

    make_ca(directory, "probe-ca", paths["ca-key"], paths["ca"])
    for name, extension in (
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        make_certificate(
            directory,
            name,
            extension + "\n",
            paths[f"{name}-key"],
            paths[name],
            paths["ca"],
            paths["ca-key"],
        )
    return paths


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_certificates_server_and_client(tmp_path, protocol):
    """TLS with the CA in OTEL_EXPORTER_OTLP_CERTIFICATE, and mutual TLS with the client's
    certificate and key: accepted with them, refused without the client certificate. With
    REQUESTS_CA_BUNDLE naming another bundle, as on many machines (requests would let it win over
    the exporter's CA file over HTTP)."""
    import certifi

    pem = _certificates(tmp_path / "pki")
    secure = Probe(
        tmp_path / "tls",
        tls={
            "cert_file": str(pem["server"]),
            "key_file": str(pem["server-key"]),
            "client_ca_file": str(pem["ca"]),
        },
    )
    base = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_ENDPOINT": _endpoint(secure, protocol, "https"),
        "OTEL_EXPORTER_OTLP_CERTIFICATE": str(pem["ca"]),
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "REQUESTS_CA_BUNDLE": certifi.where(),
    }
    try:
        _run(tmp_path, base)  # no client certificate: the server refuses
        time.sleep(1.0)
        assert secure.received("metrics") == []
        _run(
            tmp_path,
            {
                **base,
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(pem["client"]),
                "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(pem["client-key"]),
            },
        )
        eventually(lambda: secure.received("metrics"), 20, 0.2, "metrics over mutual TLS")
    finally:
        secure.close()


def test_prometheus_as_metrics_exporter_serves_traintels_own_metrics(tmp_path):
    port = free_port()
    code = (
        "import sys, time, urllib.request, traintel\n"
        "with traintel.init(project='p', dir=sys.argv[1], sample_interval=0, progress='off',"
        " console_logs=False) as run:\n"
        "    run.log(loss=1.0)\n"
        f"    print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRAINTEL_"))}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **clean,
            "OTEL_METRICS_EXPORTER": "prometheus",
            "OTEL_EXPORTER_PROMETHEUS_PORT": str(port),
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
        },
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "traintel_loss{" in done.stdout


def test_configuration_mistakes_are_warnings_naming_the_variable(monkeypatch, caplog):
    monkeypatch.setattr(selection, "_warned", set())
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "otlp,nosuchexporter")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none,console")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "soon")
    assert selection.exporters("logs") == []
    assert [type(e).__name__ for e in selection.exporters("traces")] == ["ConsoleSpanExporter"]
    assert selection.timeout_s("metrics") == 10.0
    text = caplog.text
    assert "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL / OTEL_EXPORTER_OTLP_PROTOCOL='http/json'" in text
    assert "OTEL_LOGS_EXPORTER: no exporter 'nosuchexporter' is installed" in text
    assert "OTEL_TRACES_EXPORTER='none,console': 'none' means no exporter" in text
    assert "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT='soon' must be a number" in text


def test_grpc_without_its_extra_names_it(monkeypatch, caplog):
    monkeypatch.setattr(selection, "_warned", set())
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc", None)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert selection.exporters("metrics") == []
    assert "pip install 'traintel[grpc]'; no metrics are exported" in caplog.text


def test_unset_means_otlp_over_http_protobuf(monkeypatch):
    for variable in (
        *selection.EXPORTERS.values(),
        *selection.PROTOCOLS.values(),
        *selection.TIMEOUTS.values(),
    ):
        monkeypatch.delenv(variable.name, raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TIMEOUT", raising=False)
    made = {signal: selection.exporters(signal) for signal in selection.SIGNALS}
    assert {s: [type(e).__module__ for e in found] for s, found in made.items()} == {
        "traces": ["opentelemetry.exporter.otlp.proto.http.trace_exporter"],
        "metrics": ["opentelemetry.exporter.otlp.proto.http.metric_exporter"],
        "logs": ["opentelemetry.exporter.otlp.proto.http._log_exporter"],
    }
    for found in made.values():
        for exporter in found:
            exporter.shutdown()


def _metric_points(probe: Probe, name: str) -> list[tuple[int, dict]]:
    """(aggregation temporality, data point) of every point of histogram ``name`` received."""
    return [
        (metric["histogram"]["aggregationTemporality"], point)
        for resource in probe.received("metrics")
        for scope in resource["body"].get("scopeMetrics", [])
        for metric in scope.get("metrics", [])
        if metric["name"] == name
        for point in metric["histogram"]["dataPoints"]
    ]


@pytest.mark.parametrize("preference, temporality", [("delta", 1), ("", 2), ("cumulative", 2)])
def test_histograms_follow_the_temporality_preference(probe, tmp_path, preference, temporality):
    """Delta (1) under ``delta``, as the specification's table says for histograms; cumulative
    (2) otherwise. An empty value is unset: the default, without the SDK's 'Invalid value'."""
    done = _run(
        tmp_path,
        _to(
            probe,
            "http/protobuf",
            OTEL_METRIC_EXPORT_INTERVAL="100",
            OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=preference,
            OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION="",
        ),
    )
    points = eventually(
        lambda: _metric_points(probe, "traintel_step_duration_seconds"),
        30,
        0.2,
        "the step-time histogram",
    )
    assert {t for t, _ in points} == {temporality}
    counts = [int(point["count"]) for _, point in points]
    if temporality == 1:  # each point holds its interval only: together, the three steps
        assert sum(counts) == 3
    else:
        assert max(counts) == 3
    assert "Invalid value" not in done.stderr


def _resource_and_labels(probe: Probe) -> tuple[dict, dict]:
    resource = eventually(lambda: probe.received("metrics"), 30, 0.2, "metrics")[0]
    point = next(
        p
        for scope in resource["body"]["scopeMetrics"]
        for m in scope["metrics"]
        if m["name"] == "traintel_steps_total"
        for p in m["sum"]["dataPoints"]
    )
    labels = {a["key"]: next(iter(a["value"].values())) for a in point["attributes"]}
    return resource["attributes"], labels


def test_a_malformed_resource_attributes_value_is_discarded_whole(probe, tmp_path):
    done = _run(
        tmp_path, _to(probe, "http/protobuf", OTEL_RESOURCE_ATTRIBUTES="team=vision,no-equals-sign")
    )
    resource, _ = _resource_and_labels(probe)
    assert "team" not in resource
    assert (
        "OTEL_RESOURCE_ATTRIBUTES: 'no-equals-sign' is no key=value pair: the whole value "
        "is discarded" in done.stderr
    )


def test_the_runs_own_labels_win_on_the_resource_as_on_the_points(probe, tmp_path):
    done = _run(
        tmp_path,
        _to(probe, "http/protobuf", OTEL_RESOURCE_ATTRIBUTES="project=other,team=vision%2Cnlp"),
    )
    resource, labels = _resource_and_labels(probe)
    assert resource["project"] == labels["project"] == "otel"
    assert resource["team"] == "vision,nlp"  # percent-decoded, as the specification says
    assert "OTEL_RESOURCE_ATTRIBUTES sets project" in done.stderr
