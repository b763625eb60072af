"""Offline-first runs: ``traintel.init(mode="offline")`` records everything a later
``traintel sync`` needs (spans with their ids, the trace ids of every line, the resource) and
exports nothing."""

from __future__ import annotations

import socket
import threading

import pytest
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import traintel
from traintel.export.otlp import log_record
from traintel.run import facade as run_module
from traintel.testing import capture


class Listener:
    """A TCP port that counts the connections made to it: an OTLP endpoint nobody should call."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.accepted = 0
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


def _train(run: traintel.Run) -> None:
    for _ in run.epochs(2):
        for _ in run.track(range(4)):
            run.log(loss=0.5, lr=0.1)
        with run.span("checkpoint", path="/tmp/ckpt"):
            run.event("checkpoint_saved", step=run.state.step)
        run.log_eval(val_loss=0.4)
    try:
        with run.span("eval_shard", shard=3):
            raise ValueError("bad shard, api_key=supersecret-123")
    except ValueError:
        pass


def test_offline_run_records_every_span_with_ids_and_exports_nothing(
    quiet_run, recorded, monkeypatch
):
    listener = Listener()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", listener.url)
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "50")
    try:
        with quiet_run(
            otlp=None, mode="offline", step_span_every=2, config={"api_key": "supersecret-123"}
        ) as run:
            _train(run)
    finally:
        listener.close()
    assert listener.accepted == 0, "an offline run connected to the OTLP endpoint"
    lines = recorded(run.dir)
    start = lines[0]
    assert start["export"] == "offline" and start["export_interval_s"] == 0.05
    assert start["log_level"] == "INFO"
    assert start["resource"]["service.instance.id"] == f"{run.id}/0"
    assert start["resource"]["run"] == run.id

    spans = {s["span_id"]: s for s in lines.of("span")}
    by_name: dict[str, list[dict]] = {}
    for span in spans.values():
        by_name.setdefault(span["name"], []).append(span)
    assert {n: len(v) for n, v in by_name.items()} == {
        "training_run": 1,
        "epoch": 2,
        "train_step": 4,
        "checkpoint": 2,
        "eval_shard": 1,
    }
    root = by_name["training_run"][0]
    assert root["parent_span_id"] is None and root["attributes"]["status"] == "finished"
    assert len({s["trace_id"] for s in spans.values()}) == 1, "one trace per run"
    for epoch in by_name["epoch"]:
        assert epoch["parent_span_id"] == root["span_id"]
    for child in by_name["train_step"] + by_name["checkpoint"]:
        assert spans[child["parent_span_id"]]["name"] == "epoch"
        assert root["start_ns"] <= child["start_ns"] <= child["end_ns"] <= root["end_ns"]
    assert by_name["checkpoint"][0]["attributes"] == {"path": "/tmp/ckpt"}
    failed = by_name["eval_shard"][0]
    assert failed["status"] == "error" and failed["status_message"] == "other: ValueError"
    exception = failed["events"][0]
    assert exception["name"] == "exception"
    assert "supersecret" not in str(failed) and "[REDACTED]" in str(exception["attributes"])
    # every line that says which span it belongs to names a recorded one: logs lead to traces
    stamped = [line for line in lines if line.get("span_id") and line["type"] != "span"]
    assert stamped and all(line["span_id"] in spans for line in stamped)
    assert all(line["trace_id"] == root["trace_id"] for line in stamped)


def test_mode_comes_from_the_environment_and_contradictions_are_refused(
    quiet_run, recorded, monkeypatch
):
    monkeypatch.setenv("TRAINTEL_MODE", "offline")
    with quiet_run(otlp=None) as run:
        assert run.settings.export_mode == "offline"
        run.log(loss=1.0)
    assert recorded(run.dir)[0]["export"] == "offline"
    monkeypatch.delenv("TRAINTEL_MODE")
    with pytest.raises(ValueError, match="mode"):
        quiet_run(otlp=None, mode="later")
    with pytest.raises(ValueError, match="otlp=True"):
        quiet_run(otlp=True, mode="offline")


def test_otel_sdk_disabled_means_no_opentelemetry_at_all(quiet_run, recorded, monkeypatch):
    """The specification's meaning: no spans, no trace ids; the record is still complete."""
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    with quiet_run(otlp=None) as run:
        _train(run)
    lines = recorded(run.dir)
    assert lines[0]["export"] == "disabled"
    assert not lines.of("span")
    assert all(line.get("trace_id") is None for line in lines)
    assert len(lines.of("step")) == 8


def test_a_live_run_notes_what_each_export_delivered(quiet_run, recorded):
    """The record says which metrics, log records and spans the live export delivered, and
    the log records it sent are exactly those ``log_record`` builds from the record's lines
    (what ``traintel sync`` sends for the lines that never arrived)."""
    with capture() as telemetry:
        with quiet_run(otlp=None, step_span_every=2) as run:
            _train(run)
            telemetry.collect()
    lines = recorded(run.dir)
    assert lines[0]["export"] == "otlp"
    notes = lines.of("export")
    metrics = [n for n in notes if n["signal"] == "metrics"]
    assert metrics and all(n["ok"] and n["count"] > 10 for n in metrics)
    assert metrics[0]["at"] <= notes[-1]["ts"]
    spans = {s["span_id"] for s in lines.of("span")}
    delivered_spans = {i for n in notes if n["signal"] == "traces" for i in n["delivered"]}
    exported = {format(s.context.span_id, "016x") for s in telemetry.spans.get_finished_spans()}
    # the last ones are exported when the run ends: noted after run_end
    assert delivered_spans == exported == spans
    delivered_logs = [ts for n in notes if n["signal"] == "logs" for ts in n["delivered"]]
    sent = {record.timestamp: record for record in telemetry.log_records()}
    assert sorted(delivered_logs) == sorted(sent)
    rebuilt = {
        int(line["ts"] * 1e9): log_record(line)
        for line in lines
        if int(line["ts"] * 1e9) in sent and line["type"] != "span"
    }
    assert set(rebuilt) == set(sent)
    for ts, live in sent.items():
        again = rebuilt[ts]
        assert (
            again.body,
            again.severity_text,
            again.severity_number,
            again.trace_id,
            again.span_id,
            again.event_name,
            again.observed_timestamp,
        ) == (
            live.body,
            live.severity_text,
            live.severity_number,
            live.trace_id,
            live.span_id,
            live.event_name,
            live.observed_timestamp,
        )
        assert dict(again.attributes or {}) == dict(live.attributes or {})


class _Refusing(InMemorySpanExporter):
    def export(self, spans):
        return SpanExportResult.FAILURE


def test_a_failed_export_is_noted_as_delivering_nothing(quiet_run, recorded):
    with capture() as telemetry:
        telemetry.spans = _Refusing()
        run_module.sinks_override.span_exporter = telemetry.spans
        with quiet_run(otlp=None, step_span_every=1) as run:
            for _ in run.track(range(40)):
                run.log(loss=1.0)
            run.flush()
            run.otlp.tracer_provider.force_flush()
    notes = [n for n in recorded(run.dir).of("export") if n["signal"] == "traces"]
    assert notes and not any(n["ok"] for n in notes)
    assert all(n["delivered"] == [] and n["count"] > 0 for n in notes)
