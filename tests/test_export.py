"""What a run emits: metrics on both paths, spans, logs, OTel environment variables.

Assertions use the OTel SDK's in-memory reader and exporters (traintel.testing.capture) and the
prometheus-client exposition of the run's own registry.
"""

from __future__ import annotations

import time

import pytest
from opentelemetry.sdk.metrics.export import AggregationTemporality
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conftest import read_lines
from traintel.core import catalog
from traintel.export.otlp import EXPORT_BATCH, Sinks
from traintel.run import facade as run_module
from traintel.testing import capture


def _prometheus_samples(run) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(run.registry).decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _train(run, steps=10):
    for i, _ in enumerate(run.track(range(steps))):
        time.sleep(0.001)
        run.log(loss=1.0 / (i + 1), lr=0.01, grad_norm=3.0, samples=16, tokens=64, custom=7.0)
    run.log_eval(val_loss=0.3)
    run.counter("skipped").inc(2)
    run.histogram("seq_len").observe(12.0)
    run.event("checkpoint", path="x")


def test_a_value_logged_once_appears_on_both_paths(quiet_run):
    with capture() as telemetry:
        with quiet_run(otlp=None) as run:
            _train(run)
            run.flush()
            telemetry.collect()
            prom = _prometheus_samples(run)
    base = {"project": "test", "run": run.id, "rank": "0"}
    key = tuple(sorted(base.items()))
    expected = {
        "traintel_loss": 0.1,
        "traintel_learning_rate": 0.01,
        "traintel_grad_norm": 3.0,
        "traintel_steps_total": 10.0,
        "traintel_samples_total": 160.0,
        "traintel_tokens_total": 640.0,
    }
    for name, value in expected.items():
        otel = telemetry.points(name)
        assert [(attrs, point.value) for attrs, point in otel] == [(base, pytest.approx(value))]
        assert prom[(name, key)] == pytest.approx(value)
    custom = tuple(sorted({**base, "metric": "custom"}.items()))
    assert prom[("traintel_metric", custom)] == 7.0
    assert [p.value for a, p in telemetry.points("traintel_metric") if a["metric"] == "custom"] == [
        7.0
    ]
    eval_key = tuple(sorted({**base, "metric": "val_loss"}.items()))
    assert prom[("traintel_eval_best", eval_key)] == 0.3
    assert prom[("traintel_step_duration_seconds_count", key)] == 10
    steps = telemetry.points("traintel_step_duration_seconds")
    assert steps[0][1].count == 10 and steps[0][1].sum == pytest.approx(
        prom[("traintel_step_duration_seconds_sum", key)]
    )
    assert prom[("traintel_run_status", tuple(sorted({**base, "status": "running"}.items())))] == 1


def _window(telemetry, name: str) -> dict[str, float]:
    return {attrs["metric"]: point.value for attrs, point in telemetry.points(name)}


def test_every_value_between_two_exports_is_represented_on_both_paths(quiet_run):
    """Between two exports: a spike and a NaN. The latest value alone hides both; the window's
    max and the non-finite count show them, on the OTLP path and on the scrape path alike, and
    the next window starts afresh."""
    with capture() as telemetry:
        with quiet_run(otlp=None) as run:
            for loss in (1.0, 0.9, 100.0, float("nan"), 0.8):
                run.log(loss=loss, learning_rate=0.1, custom=2.0 if loss == 100 else loss)
            run._writer.flush()
            telemetry.collect()
            scraped = _prometheus_samples(run)
            assert telemetry.metric("traintel_loss") == [0.8]  # the latest: no trace of either
            assert _window(telemetry, "traintel_logged_max") == {
                "loss": 100.0,
                "lr": 0.1,
                "custom": 2.0,
            }
            assert _window(telemetry, "traintel_logged_min") == {
                "loss": 0.8,
                "lr": 0.1,
                "custom": 0.8,
            }
            assert _window(telemetry, "traintel_logged_nonfinite_total") == {
                "loss": 1,
                "lr": 0,
                "custom": 1,
            }
            assert _window(telemetry, "traintel_logged_values_total") == {
                "loss": 5,
                "lr": 5,
                "custom": 5,
            }
            base = {"project": "test", "run": run.id, "rank": "0"}

            def key(metric: str) -> tuple:
                return tuple(sorted({**base, "metric": metric}.items()))

            assert scraped[("traintel_logged_max", key("loss"))] == 100.0
            assert scraped[("traintel_logged_min", key("loss"))] == 0.8
            assert scraped[("traintel_logged_nonfinite_total", key("loss"))] == 1
            run.log(loss=0.5)
            run._writer.flush()
            telemetry.collect()
            assert _window(telemetry, "traintel_logged_max") == {"loss": 0.5}
            assert _window(telemetry, "traintel_logged_values_total")["loss"] == 6
            scraped = _prometheus_samples(run)
            assert scraped[("traintel_logged_max", key("loss"))] == 0.5
            assert ("traintel_logged_max", key("lr")) not in scraped  # nothing logged since


def test_otlp_histograms_carry_the_same_buckets_as_prometheus(quiet_run):
    with capture() as telemetry:
        with quiet_run(otlp=None) as run:
            _train(run)
            for seconds in (0.002, 0.02, 0.2):
                with run.operation("save"):
                    time.sleep(seconds)
            run.histogram("seq_len").observe(20000.0)  # beyond the last bound: the +Inf bucket
            run.flush()
            prom = _prometheus_samples(run)
            telemetry.collect()
    base = {"project": "test", "run": run.id, "rank": "0"}
    for name, extra in [
        ("traintel_step_duration_seconds", {}),
        ("traintel_operation_duration_seconds", {"operation": "save"}),
        ("traintel_user_observations", {"metric": "seq_len"}),
    ]:
        ((attributes, point),) = telemetry.points(name)
        assert attributes == {**base, **extra}
        labels = {**base, **extra}
        buckets = sorted(
            (float(dict(key)["le"]), value)
            for (series, key), value in prom.items()
            if series == name + "_bucket" and {k: v for k, v in key if k != "le"} == labels
        )
        assert [bound for bound, _ in buckets[:-1]] == list(point.explicit_bounds)
        cumulative = [sum(point.bucket_counts[: i + 1]) for i in range(len(point.bucket_counts))]
        assert cumulative == [count for _, count in buckets], name
        key = tuple(sorted(labels.items()))
        assert point.count == prom[(name + "_count", key)]
        assert point.sum == prom[(name + "_sum", key)]
        assert point.min <= point.sum / point.count <= point.max
    ((_, seq_len),) = telemetry.points("traintel_user_observations")
    assert (seq_len.count, seq_len.min, seq_len.max) == (2, 12.0, 20000.0)
    assert seq_len.bucket_counts[-1] == 1
    ((_, save),) = telemetry.points("traintel_operation_duration_seconds")
    assert save.min >= 0.002 and save.max >= 0.2 and save.count == 3
    metric = next(
        m
        for d in telemetry._collected
        for rm in d.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "traintel_step_duration_seconds"
    )
    assert metric.data.aggregation_temporality == AggregationTemporality.CUMULATIVE
    assert metric.unit == catalog.BY_NAME[metric.name].unit


def test_every_exported_name_is_in_the_catalog(quiet_run):
    with capture() as telemetry:
        with quiet_run(otlp=None, sample_interval=0.05) as run:
            _train(run)
            time.sleep(0.2)
            run.flush()
            telemetry.collect()
            prom = _prometheus_samples(run)
    otel_names = {
        metric.name
        for data in telemetry._collected
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    }
    assert otel_names <= set(catalog.BY_NAME)
    assert "traintel_process_memory_rss_bytes" in otel_names  # from the system sampler
    series = {name for name, _ in prom}
    allowed = {n for m in catalog.METRICS for n in catalog.prometheus_series_names(m)}
    assert series <= allowed | {n + "_total" for n in allowed} | {
        n.removesuffix("_total") + "_created" for n in allowed
    }
    for name, labels in prom:
        label_names = {k for k, _ in labels}
        assert {"project", "run", "rank"} <= label_names, name


def test_final_status_is_exported_at_shutdown(quiet_run):
    with capture() as telemetry:
        with quiet_run(otlp=None) as run:
            run.log(loss=1.0)
    statuses = {a["status"]: p.value for a, p in telemetry.points("traintel_run_status")}
    assert statuses == {
        "running": 0,
        "finished": 1,
        "failed": 0,
        "preempted": 0,
        "interrupted": 0,
        "pruned": 0,
        "stopped": 0,
    }


def test_spans_run_epoch_sampled_steps_and_user_spans(quiet_run):
    with capture() as telemetry:
        with quiet_run(otlp=None, step_span_every=4, total_epochs=2) as run:
            for _ in run.epochs():
                for _ in run.track(range(6)):
                    run.log(loss=1.0)
                with run.span("eval"):
                    pass

            @run.span("checkpoint")
            def save():
                return "ok"

            assert save() == "ok"
    spans = telemetry.spans.get_finished_spans()
    names = [s.name for s in spans]
    assert names.count("train_step") == 3  # steps 4, 8, 12 of 12
    assert names.count("epoch") == 2 and names.count("eval") == 2
    assert "checkpoint" in names and names.count("training_run") == 1
    root = next(s for s in spans if s.name == "training_run")
    assert all(root.start_time <= s.start_time and s.end_time <= root.end_time for s in spans)
    assert all(s.context.trace_id == root.context.trace_id for s in spans)
    epoch = next(s for s in spans if s.name == "epoch")
    assert epoch.parent.span_id == root.context.span_id
    step = next(s for s in spans if s.name == "train_step")
    assert step.parent.span_id in {s.context.span_id for s in spans if s.name == "epoch"}
    assert dict(step.attributes)["step"] == 4


def test_exception_in_span_sets_status_records_event_and_error(quiet_run):
    from opentelemetry.trace import StatusCode

    with capture() as telemetry:
        with pytest.raises(OSError):
            with quiet_run(otlp=None) as run:
                with run.span("checkpoint"):
                    raise PermissionError("read-only checkpoint dir")
    span = next(s for s in telemetry.spans.get_finished_spans() if s.name == "checkpoint")
    assert span.status.status_code is StatusCode.ERROR
    assert any(e.name == "exception" for e in span.events)
    errors = {
        (a["error_type"], a["severity"]): p.value
        for a, p in telemetry.points("traintel_errors_total")
    }
    assert errors == {("checkpoint_io", "high"): 1}
    assert run.errors[0]["operation"] == "checkpoint"


def test_logs_travel_over_otlp_with_trace_context(quiet_run):
    with capture() as telemetry:
        with quiet_run(otlp=None) as run:
            with run.span("load"):
                run.logger("data").warning("missing shard", extra={"shard": 4})
            run.event("early_stopping", patience=3)
    records = telemetry.log_records()
    warning = next(r for r in records if r.body == "missing shard")
    assert warning.severity_text == "WARNING"
    assert warning.trace_id and warning.span_id
    assert warning.attributes["logger"] == "traintel.data"
    event = next(r for r in records if (r.attributes or {}).get("event") == "early_stopping")
    assert event.attributes["type"] == "event"
    assert event.trace_id  # correlated with the run's trace even outside a user span


def test_otel_environment_variables_are_honoured(monkeypatch, quiet_run):
    monkeypatch.setenv("OTEL_SERVICE_NAME", "my-trainer")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "team=vision,deployment.environment=dev")
    with capture() as telemetry:
        with quiet_run(otlp=None) as run:
            run.log(loss=1.0)
    resource = telemetry.spans.get_finished_spans()[0].resource.attributes
    assert resource["service.name"] == "my-trainer"
    assert resource["team"] == "vision" and resource["deployment.environment"] == "dev"
    assert resource["run"] == run.id and resource["project"] == "test"


class _Batches(InMemorySpanExporter):
    """Keeps the size of every export request."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def export(self, spans):
        self.sizes.append(len(spans))
        return super().export(spans)


@pytest.mark.parametrize(
    "env, largest", [({}, EXPORT_BATCH), ({"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "100"}, 100)]
)
def test_spans_are_exported_in_small_batches_unless_the_user_says(
    monkeypatch, env, largest, quiet_run
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    batches = _Batches()
    monkeypatch.setattr(run_module, "sinks_override", Sinks(span_exporter=batches))
    with quiet_run(otlp=None, step_span_every=1) as run:
        for _ in run.track(range(150)):
            run.log(loss=1.0)
    assert sum(batches.sizes) == 151  # a span per step and the run's
    assert max(batches.sizes) == largest


def test_otel_sdk_disabled_turns_export_off(monkeypatch, quiet_run):
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    with quiet_run(otlp=None) as run:
        run.log(loss=1.0)
    assert run.otlp is None
    assert run.summary["steps"] == 1  # the local record is unaffected


def test_shutdown_with_unreachable_collector_is_bounded(monkeypatch, caplog, quiet_run):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # discard port
    run = quiet_run(otlp=True, shutdown_timeout=0.5)
    run.log(loss=1.0)
    run.finish()
    assert run.summary["steps"] == 1
    assert run.otlp._providers == []


def test_the_run_spans_steps_are_the_steps_taken_as_run_end_and_summary_say(quiet_run):
    """Found auditing issue 29: a loop numbering its steps from 0 (``step=i``) took 8 steps, as
    run_end and summary.json say, while the ``training_run`` span said 7 (the last step's
    number)."""
    with capture() as telemetry:
        with quiet_run(otlp=None) as run:
            for i in range(8):
                run.log({"train/loss": 1.0}, step=i)
    root = next(s for s in telemetry.spans.get_finished_spans() if s.name == "training_run")
    (end,) = read_lines(run.dir).of("run_end")
    assert dict(root.attributes)["steps"] == end["steps"] == run.summary["steps"] == 8


def test_the_http_stack_imports_what_it_imports_lazily_when_the_run_starts():
    """The first export would import them on an exporter's thread, holding the interpreter for
    10-20 ms (a late training step per run); in a fresh interpreter they come with the session,
    made when the run starts."""
    import json
    import subprocess
    import sys

    script = (
        "import json, sys\n"
        "from traintel.export.health import LAZY_IMPORTS, ExportSession\n"
        "before = set(sys.modules)\n"
        "ExportSession()\n"
        "print(json.dumps(sorted(set(LAZY_IMPORTS) & (set(sys.modules) - before))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert {"netrc", "shlex"} <= set(json.loads(done.stdout))
