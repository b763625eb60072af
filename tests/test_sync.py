"""``traintel sync`` without a stack: the replayed state against the live one, where metric
points go, the cursor (repeated and interrupted syncs), what a live export delivered, garbage
records, the command line. The real collector, Prometheus and the sink are in
test_sync_stack.py."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.trace.export import SpanExportResult

import traintel
from conftest import read_lines
from traintel.core import catalog
from traintel.core.redact import Redactor
from traintel.export.otlp import RunMetrics, with_added
from traintel.sync import payload
from traintel.sync.deliver import Interrupted, Sync
from traintel.sync.plan import Options, identity_of
from traintel.sync.replay import NEARLY, NOT_IN_RECORD, REBUILT, Replay
from traintel.sync.source import LOGGED_TYPES, Record, find_records
from traintel.sync.target import SyncError, Target
from traintel.sync.timeline import LAG, NUDGE, SUSPECT_S, metric_times
from traintel.testing import capture

#: rates and the ETA come from a sliding window the writer feeds per flush, not per line: a
#: replay gets close, not equal; min/max are per export window (each path takes its own)
APPROXIMATE = {
    "traintel_steps_per_second",
    "traintel_samples_per_second",
    "traintel_tokens_per_second",
    "traintel_run_eta_seconds",
    "traintel_logged_min",
    "traintel_logged_max",
}


class Memory:
    """An exporter of any signal that keeps what it is given, and can refuse."""

    def __init__(self, result: Any) -> None:
        self.result = result
        self.refuse = False
        self.got: list[Any] = []

    def export(self, items: Any, **kwargs: Any) -> Any:
        if self.refuse:
            return type(self.result).FAILURE
        self.got.append(items)
        return self.result

    def shutdown(self, **kwargs: Any) -> None:
        pass


def memory_target() -> tuple[Target, dict[str, Memory]]:
    exporters = {
        "metrics": Memory(MetricExportResult.SUCCESS),
        "logs": Memory(LogRecordExportResult.SUCCESS),
        "traces": Memory(SpanExportResult.SUCCESS),
    }
    return Target("http://collector.invalid:4318", exporters=exporters), exporters  # type: ignore[arg-type]


def sent_points(
    exporter: Memory,
) -> dict[tuple[str, frozenset[tuple[str, str]]], list[tuple[int, Any]]]:
    """(metric, labels) -> [(time ns, value)] of everything a memory exporter got."""
    series: dict[tuple[str, frozenset[tuple[str, str]]], list[tuple[int, Any]]] = {}
    for data in exporter.got:
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        key = (metric.name, frozenset(dict(point.attributes).items()))
                        value = (
                            (point.count, point.sum, tuple(point.bucket_counts))
                            if isinstance(point, HistogramDataPoint)
                            else point.value
                        )
                        series.setdefault(key, []).append((point.time_unix_nano, value))
    return series


def snapshot(data: MetricsData) -> dict[tuple[str, frozenset[tuple[str, str]]], Any]:
    out = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = (
                        (point.count, point.sum, tuple(point.bucket_counts))
                        if isinstance(point, HistogramDataPoint)
                        else point.value
                    )
                    out[(metric.name, frozenset(dict(point.attributes).items()))] = value
    return out


def train(run: traintel.Run, sleep: float = 0.0) -> None:
    """A loop that touches every rebuilt metric: run.track (data wait), run.log outside it
    with step_s, user keys, samples and tokens, a NaN loss, evaluations with bests, events,
    an error, milestones (total_steps), epochs."""
    for epoch in run.epochs(2):
        for i in run.track(range(10)):
            run.log(
                loss=1.0 / (i + 1) if i != 3 else float("nan"),
                lr=0.1 * (epoch + 1),
                grad_norm=2.0,
                samples=8,
                tokens=1024,
                acc=0.5 + i / 100,
            )
            if sleep:
                time.sleep(sleep)
        run.log(loss=0.5, step_s=0.02, extra_key=3)
        run.log_eval(val_loss=0.5 / (epoch + 1), accuracy=0.7)
        run.event("checkpoint_saved", path="/ckpt")
    run.error(ValueError("a bad shard"), context={"shard": 3})


def replayed(run_dir: Path) -> MetricsData:
    """The record replayed to its end and collected as the live export collects."""
    record = Record(find_records([str(run_dir)])[0][0].files)
    record.scan()
    segment = record.segments[0]
    replay = Replay(segment.start)
    start = segment.start
    labels, run_info = identity_of(start, record.directory)
    reader = InMemoryMetricReader()
    metrics = RunMetrics(
        replay.state,
        labels,
        run_info,
        replay.histograms,
        payload.resource(start, Redactor()),
        reader,
    )
    for _begin, _end, line in record.lines():
        if line is not None and line.get("type") != "export":
            replay.apply(line)
    data = reader.get_metrics_data()
    return with_added(data, metrics.added(time.time_ns()))


def test_every_catalog_group_is_rebuilt_or_said_not_to_be():
    groups = {metric.group for metric in catalog.METRICS}
    assert groups - set(NOT_IN_RECORD), "no catalog metric would be synced"
    assert set(NOT_IN_RECORD) <= groups, "NOT_IN_RECORD names a group the catalog lost"
    assert {
        "traintel_steps_total",
        "traintel_loss",
        "traintel_eval_value",
        "traintel_errors_total",
    } <= REBUILT


def test_the_replayed_state_exports_what_the_live_run_exported(quiet_run, tmp_path):
    """The contract that makes a sync equal to the live export: the record replayed, read by
    the live export code, gives every rebuilt metric the values the live run's last export
    had."""
    with capture() as telemetry:
        with quiet_run(otlp=None, total_steps=22) as run:
            train(run, sleep=0.002)
    live = snapshot(telemetry._collected[-1])
    again = snapshot(replayed(run.dir))
    names = {name for name, _ in live}
    assert {
        "traintel_data_wait_seconds_total",
        "traintel_step_duration_seconds",
        "traintel_logged_nonfinite_total",
        "traintel_events_total",
        "traintel_run_progress_ratio",
    } <= names
    compared = 0
    for key, value in live.items():
        name = key[0]
        if name not in REBUILT:
            continue
        assert key in again, f"{name} {dict(key[1])} was not rebuilt"
        if name in APPROXIMATE:
            continue
        if name in NEARLY:  # a batch's time added up, or a step line's mean times its steps
            assert again[key] == pytest.approx(value, rel=1e-9), name
            continue
        assert again[key] == value, f"{name} {dict(key[1])}: live {value}, replayed {again[key]}"
        compared += 1
    assert compared > 40
    exact = REBUILT - APPROXIMATE - NEARLY  # NEARLY: left out between live samples
    assert {key for key in again if key[0] in exact} == {key for key in live if key[0] in exact}


def test_a_loop_that_starts_after_step_k_is_replayed_from_k(quiet_run):
    """``initial_step`` (a framework's restored global step): the first line at ``k + 5``
    stands for five steps' samples, live and replayed."""
    with capture() as telemetry:
        with quiet_run(otlp=None, initial_step=100) as run:
            for step in range(105, 130, 5):
                run.log(step=step, loss=1.0 / step, samples=8, step_s=0.01)
    live = snapshot(telemetry._collected[-1])
    again = snapshot(replayed(run.dir))
    for name in ("traintel_steps_total", "traintel_samples_total"):
        [key] = [key for key in live if key[0] == name]
        assert again[key] == live[key], name
    assert live[next(key for key in live if key[0] == "traintel_samples_total")] == 8 * 25


# -- where points go -------------------------------------------------------------------------
def test_an_offline_segment_gets_the_live_cadence_and_its_last_line():
    assert metric_times("offline", 15, 100.0, 160.0, []) == [115000, 130000, 145000, 160000]
    assert metric_times("offline", 15, 100.0, 100.0, []) == [100000]
    assert metric_times("offline", 15, 100.0, 99.0, []) == []


def test_points_go_just_after_failed_exports_and_midway_where_the_record_is_silent():
    exports = [(115.0, True), (130.0, False), (145.0, False), (160.5, True)]
    times = metric_times("otlp", 15, 100.0, 160.0, exports)
    assert times[0] >= 130002 and times[1] >= 145002 and len(times) == 3
    assert all(t - at * 1000 <= 3 for t, (at, _) in zip(times, exports[1:3]))
    # the next delivered export holds at least as much once LAG has passed: a point then
    assert times[2] == (160.5 - LAG) * 1000
    # the last delivered export was before the end: the rest is unknown, filled midway
    assert metric_times("otlp", 15, 100.0, 160.0, [(115.0, True), (130.0, True)]) == [
        137500,
        152500,
        160000,
    ]
    # a record with no notes (older traintel): midway between the live ticks, then the end
    assert metric_times(None, 15, 100.0, 160.0, []) == [107500, 122500, 137500, 152500, 160000]
    # --all: after every export
    assert len(metric_times("otlp", 15, 100.0, 160.0, exports, resend=True)) == 5


def test_an_outage_gets_the_live_cadence_though_failing_exports_came_seldom():
    # 5 s interval; each failed export spent 7 s retrying before the next collection
    exports = [(105.0, True), (110.0, False), (122.0, False), (134.0, True), (139.0, True)]
    times = [t / 1000 for t in metric_times("otlp", 5, 100.0, 139.0, exports)]
    assert times == [105.002, 110.002, 115.0, 120.0, 122.002, 127.0, 132.0, 134.0 - LAG]
    live = [at for at, ok in exports if ok]
    samples = sorted(times + live)
    assert max(b - a for a, b in zip(samples, samples[1:])) <= 5 + 0.01
    assert not set(times) & set(live)
    # points before a delivered export keep LAG away from it (its counts lag the record)
    assert all(not 0 < at - t < LAG for t in times for at in live)


def test_exports_delivered_just_before_a_collector_vanished_get_a_point_after_them():
    # acknowledged at 100 and 105, then the collector was gone: a collector killed without
    # warning may have lost them (its batch, its write-ahead log not yet read)
    exports = [(95.0, True), (100.0, True), (105.0, True), (110.0, False), (115.0, True)]
    times = metric_times("otlp", 5, 90.0, 115.0, exports)
    assert times == [math.ceil((at + NUDGE) * 1000) for at in (100, 105, 110)] + [
        (115 - LAG) * 1000
    ]
    assert [
        t for t in metric_times("otlp", 5, 90.0, 115.0, exports, resend=True) if t < 105_000
    ] == [95002, 100002], "--all: after every export, once"


def test_an_export_delivered_late_leaves_an_outage_that_gets_the_live_cadence_too():
    # the collector died during the export at 110: it retried until the collector was back,
    # got through (delivered), and the run collected next at 122.5
    exports = [(105.0, True), (110.0, True), (122.5, True), (127.5, True)]
    times = [t / 1000 for t in metric_times("otlp", 5, 100.0, 127.5, exports)]
    assert times == [115.0, 120.0, 122.5 - LAG]
    assert metric_times("otlp", 5, 100.0, 112.0, [(105.0, True), (112.0, True)]) == [], (
        "an export a little late (within LATE intervals) is no outage"
    )


def test_points_are_whole_distinct_milliseconds_never_on_a_live_sample():
    at = 1_800_000_000.123456
    times = metric_times("otlp", 15, at - 20, at, [(at, False)])
    # the run's first interval (nothing delivered in it), then just after the failed export
    assert times == [math.ceil((at - 5) * 1000), math.ceil((at + NUDGE) * 1000)]
    assert times[1] > math.floor(at * 1000) + 1
    dense = metric_times("offline", 0.0004, 100.0, 100.01, [])
    assert dense == sorted(set(dense))


# -- sending ---------------------------------------------------------------------------------
def _offline_run(
    quiet_run, monkeypatch, steps: int = 30, sleep: float = 0.01, **options: Any
) -> traintel.Run:
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "50")  # a point every 50 ms
    with quiet_run(otlp=None, mode="offline", step_span_every=3, **options) as run:
        for i in run.track(range(steps)):
            run.log(loss=1.0 / (i + 1), samples=4)
            if i % 5 == 0:
                run.event("tick", i=i)
            time.sleep(sleep)
        run.log_eval(val_loss=0.3)
    return run


def _loggable(lines: list[dict]) -> list[int]:
    return sorted(
        int(line["ts"] * 1e9)
        for line in lines
        if line["type"] in LOGGED_TYPES and line.get("level") != "debug"
    )


def test_a_sync_sends_everything_once_and_a_repeat_sends_nothing(quiet_run, tmp_path, monkeypatch):
    run = _offline_run(quiet_run, monkeypatch)
    lines = read_lines(run.dir)
    records, _ = find_records([str(run.dir)])
    target, got = memory_target()
    outcome = Sync(records, target, Options(max_age=None)).run()[0]
    logs = sorted(r.log_record.timestamp for batch in got["logs"].got for r in batch)
    assert logs == _loggable(lines)
    spans = [format(s.context.span_id, "016x") for batch in got["traces"].got for s in batch]
    assert sorted(spans) == sorted(s["span_id"] for s in lines.of("span"))
    steps = sent_points(got["metrics"])[
        ("traintel_steps_total", frozenset({"project": "test", "run": run.id, "rank": "0"}.items()))
    ]
    start = lines[0]["ts"]
    step_ts = [line["ts"] for line in lines.of("step")]
    assert len(steps) >= 5, "an offline run gets a point per export interval"
    for time_ns, value in steps:
        assert value == sum(ts * 1e9 <= time_ns for ts in step_ts)
        assert time_ns >= start * 1e9
    assert steps[-1][1] == 30 and outcome.tally.sent["metrics"] > 0
    # again: the cursor says it all arrived
    target, again = memory_target()
    outcome = Sync(find_records([str(run.dir)])[0], target, Options(max_age=None)).run()[0]
    assert not any(exporter.got for exporter in again.values())
    assert outcome.tally.before["logs"] == len(logs) and outcome.tally.before["traces"] == len(
        spans
    )


def test_the_cursor_names_its_target_without_credentials(quiet_run, monkeypatch):
    """The cursor beside the record keys each target by its URLs; a password or a signed query
    in them is redacted there as in every other file, and the same collector keeps its key when
    the password changes (a signed query, which may name a tenant, is another target: issue 28,
    tests/test_leaks.py)."""
    run = _offline_run(quiet_run, monkeypatch)
    memory = memory_target()[1]
    for password in ("hunter2-first", "hunter2-second"):
        target = Target(
            f"https://alice:{password}@collector.invalid:4318/otlp?api-key=sk-hunter2-0123456789",
            exporters=memory,
        )  # type: ignore[arg-type]
        Sync(find_records([str(run.dir)])[0], target, Options(max_age=None)).run()
    cursor = (run.dir / "sync-cursor.json").read_text()
    assert "hunter2" not in cursor
    assert len(json.loads(cursor)["targets"]) == 1, cursor  # the second sync found the first's
    assert sum(len(batch) for batch in memory["logs"].got) == len(_loggable(read_lines(run.dir)))


def test_an_interrupted_sync_resumes_where_the_collector_stopped_acknowledging(
    quiet_run, tmp_path, monkeypatch
):
    run = _offline_run(quiet_run, monkeypatch)
    options = Options(max_age=None, batch={"logs": 2, "traces": 2, "metrics": 40})
    target, first = memory_target()
    batches = []

    def stop_after_three() -> bool:
        batches.append(1)
        return len(batches) > 3

    with pytest.raises(Interrupted):
        Sync(find_records([str(run.dir)])[0], target, options, stop=stop_after_three).run()
    target, rest = memory_target()
    rest["logs"].refuse = True  # the collector refuses logs now: the cursor keeps them

    with pytest.raises(SyncError, match="did not take the logs"):
        Sync(find_records([str(run.dir)])[0], target, options).run()
    rest["logs"].refuse = False
    Sync(find_records([str(run.dir)])[0], target, options).run()
    lines = read_lines(run.dir)
    logs = sorted(
        r.log_record.timestamp
        for exporter in (first["logs"], rest["logs"])
        for batch in exporter.got
        for r in batch
    )
    assert logs == _loggable(lines), "every log line exactly once"
    spans = [
        s.context.span_id
        for exporter in (first["traces"], rest["traces"])
        for batch in exporter.got
        for s in batch
    ]
    assert len(spans) == len(set(spans)) == len(lines.of("span"))
    points = {**sent_points(first["metrics"])}
    for key, values in sent_points(rest["metrics"]).items():
        points[key] = points.get(key, []) + values
    for values in points.values():
        stamps = [t for t, _ in values]
        assert len(stamps) == len(set(stamps)), "a point sent twice"


def test_what_the_live_export_delivered_is_not_sent_again(quiet_run, tmp_path, monkeypatch):
    """A live run whose collector refused everything for a while: the sync sends the metric
    points of the failed exports, and the log lines and spans that never arrived, nothing
    else."""
    monkeypatch.setenv("OTEL_BLRP_SCHEDULE_DELAY", "20")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")
    with capture() as telemetry:
        refusing = Refusing()
        with quiet_run(otlp=None, step_span_every=2) as run:
            for i in run.track(range(30)):
                run.log(loss=1.0)
                run.event("tick", i=i)
                refusing.on = 10 <= i < 20
                time.sleep(0.03)
                if i % 3 == 2:
                    run.otlp.meter_provider.force_flush()
    lines = read_lines(run.dir)
    notes = lines.of("export")
    assert any(not n["ok"] for n in notes) and any(n["ok"] for n in notes)
    target, got = memory_target()
    Sync(find_records([str(run.dir)])[0], target, Options(max_age=None)).run()
    live_logs = [r.timestamp for r in telemetry.log_records()]
    synced_logs = [r.log_record.timestamp for batch in got["logs"].got for r in batch]
    assert synced_logs, "the refused lines are sent"
    assert sorted(live_logs + synced_logs) == _loggable(lines), "every line once"
    live_spans = {s.context.span_id for s in telemetry.spans.get_finished_spans()}
    synced = [s.context.span_id for batch in got["traces"].got for s in batch]
    assert synced and not live_spans & set(synced)
    assert len(live_spans) + len(synced) == len(lines.of("span"))
    metric_notes = sorted((n["at"], n["ok"]) for n in notes if n["signal"] == "metrics")
    failed = [at for at, ok in metric_notes if not ok]
    # and the delivered exports just before the collector went away (it may have lost them)
    suspect = [
        at
        for at, ok in metric_notes
        if ok and any(0 < f - at <= SUSPECT_S for f in failed) and at < min(failed)
    ]
    times = sorted({t for values in sent_points(got["metrics"]).values() for t, _ in values})
    assert failed and suspect and len(times) == len(failed) + len(suspect)
    for at, sent in zip(sorted(failed + suspect), times):
        assert 0 < sent / 1e9 - at < 0.004, "a point just after each failed export"


class Refusing:
    """capture()'s exporters, refusing everything while ``on``."""

    def __init__(self) -> None:
        from traintel.run import facade as run_module

        self.on = False
        sinks = run_module.sinks_override
        for exporter, failure in (
            (sinks.metric_exporter, MetricExportResult.FAILURE),
            (sinks.span_exporter, SpanExportResult.FAILURE),
            (sinks.log_exporter, LogRecordExportResult.FAILURE),
        ):
            exporter.export = self._guard(exporter.export, failure)

    def _guard(self, export: Any, failure: Any) -> Any:
        def guarded(items: Any, *args: Any, **kwargs: Any) -> Any:
            return failure if self.on else export(items, *args, **kwargs)

        return guarded


def test_what_is_sent_is_scrubbed_again(tmp_path):
    """A record from elsewhere (an older traintel, another machine) with a secret under a
    secret-looking key: the synced log attributes say [REDACTED]."""
    run_dir = tmp_path / "r1"
    run_dir.mkdir()
    start = {
        "ts": 1.0e9 + time.time() % 1,
        "type": "run_start",
        "level": "info",
        "run": "r1",
        "rank": 0,
        "project": "p",
        "name": "r1",
        "host": "h",
        "pid": 1,
        "world_size": 1,
        "local_rank": None,
        "traintel_version": "0.0",
        "total_epochs": None,
        "total_steps": None,
        "export": "offline",
        "export_interval_s": 15.0,
        "log_level": "INFO",
        "resource": {"service.name": "traintel"},
    }
    event = {
        "ts": start["ts"] + 1,
        "type": "event",
        "level": "info",
        "run": "r1",
        "rank": 0,
        "event": "login",
        "fields": {"api_key": "sk-verysecretvalue"},
        "step": 0,
        "epoch": 0,
        "message": "login",
    }
    (run_dir / "events.jsonl").write_bytes(b"\n".join(map(orjson.dumps, (start, event))) + b"\n")
    target, got = memory_target()
    Sync(find_records([str(run_dir)])[0], target, Options(max_age=None)).run()
    record = got["logs"].got[0][0].log_record
    assert "verysecret" not in str(record.attributes) and "[REDACTED]" in str(record.attributes)


def test_too_old_data_is_counted_and_left_out(quiet_run, tmp_path, monkeypatch):
    run = _offline_run(quiet_run, monkeypatch, steps=5, sleep=0)
    target, got = memory_target()
    outcome = Sync(find_records([str(run.dir)])[0], target, Options(max_age=1e-9)).run()[0]
    assert not got["metrics"].got and not got["logs"].got
    assert outcome.tally.too_old["metrics"] > 0 and outcome.tally.too_old["logs"] > 0


# -- garbage ---------------------------------------------------------------------------------
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_KEYS = [
    "ts",
    "type",
    "level",
    "run",
    "rank",
    "step",
    "epoch",
    "metrics",
    "step_s",
    "data_wait_s",
    "event",
    "fields",
    "best",
    "is_best",
    "error_type",
    "severity",
    "status",
    "trace_id",
    "span_id",
    "parent_span_id",
    "start_ns",
    "end_ns",
    "name",
    "attributes",
    "events",
    "signal",
    "ok",
    "at",
    "delivered",
    "message",
    "project",
    "resource",
    "export",
    "export_interval_s",
    "log_level",
    "traintel_version",
]
_TYPES = [
    "run_start",
    "step",
    "eval",
    "event",
    "milestone",
    "error",
    "log",
    "span",
    "export",
    "run_end",
    "epoch",
    "config",
    "instrument",
    "nonsense",
]
_LINE = st.one_of(
    st.fixed_dictionaries(
        {"type": st.sampled_from(_TYPES)}, optional={key: _JSON for key in _KEYS if key != "type"}
    ),
    _JSON.map(lambda value: value),
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(lines=st.lists(_LINE, max_size=25), junk=st.lists(st.binary(max_size=40), max_size=3))
def test_garbage_records_never_crash_a_sync(tmp_path_factory, lines, junk):
    """Whatever a crashed, foreign or hostile writer left: bad lines are skipped and counted,
    the rest is sent (to memory here), nothing raises."""
    run_dir = tmp_path_factory.mktemp("garbage")
    start = {
        "ts": time.time() - 5,
        "type": "run_start",
        "run": "g",
        "rank": 0,
        "project": "p",
        "name": "g",
        "host": "h",
        "world_size": 1,
        "export": "offline",
    }
    encoded = [orjson.dumps(start)]
    for line in lines:
        try:
            encoded.append(orjson.dumps(line))
        except (TypeError, orjson.JSONEncodeError):
            encoded.append(json.dumps(line, default=str).encode())
    encoded += [b.replace(b"\n", b" ") for b in junk]
    (run_dir / "events.jsonl").write_bytes(b"\n".join(encoded) + b"\n")
    for dry_run in (True, False):
        target, _ = memory_target()
        outcomes = Sync(
            find_records([str(run_dir)])[0], target, Options(max_age=None), dry_run=dry_run
        ).run()
        assert outcomes[0].tally.bad >= 0


# -- the command line ------------------------------------------------------------------------
def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "traintel.cli", "sync", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_dry_run_says_what_would_be_sent_and_sends_nothing(quiet_run, tmp_path, monkeypatch):
    run = _offline_run(quiet_run, monkeypatch, steps=5, sleep=0)
    proc = _cli("--dry-run", "--endpoint", "http://127.0.0.1:9", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "would send" in proc.stdout and run.id in proc.stdout
    assert not (run.dir / "sync-cursor.json").exists()


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_says_what_was_read_and_sent(monkeypatch, capsys, terminal):
    """On a terminal a rich bar (read, speed, ETA, what was sent), else plain lines."""
    from traintel.cli import sync as command
    from traintel.sync.deliver import Progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    monkeypatch.setattr(command, "PLAIN_EVERY", 0.0)
    with command._progress(2_000_000) as show:
        show(
            Progress(
                total=2_000_000,
                read=1_000_000,
                bytes_sent=3_000_000,
                record="run-1",
                sent={"metrics": 1200, "logs": 340, "traces": 5},
            )
        )
    said = " ".join(capsys.readouterr().err.split())
    assert "run-1" in said and "1,200 points, 340 log lines, 5 spans, 3 MB sent" in said
    assert ("1.0/2.0" in said) if terminal else ("50% read" in said), said


def test_an_unreachable_collector_is_a_clear_error_and_exit_1(quiet_run, tmp_path, monkeypatch):
    run = _offline_run(quiet_run, monkeypatch, steps=3, sleep=0)
    proc = _cli("--endpoint", "http://127.0.0.1:9", str(run.dir))
    assert proc.returncode == 1
    assert "the collector did not take the metrics: cannot connect to 127.0.0.1:9" in proc.stderr
    assert "connection refused" in proc.stderr


def test_a_grpc_only_configuration_is_refused_with_the_way_out(monkeypatch):
    """A live run may export over gRPC (OTEL_EXPORTER_OTLP_PROTOCOL); a sync speaks OTLP/HTTP."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(SyncError, match="--endpoint http://collector:4318"):
        Target()
    assert Target("http://collector:4318").urls["logs"] == "http://collector:4318/v1/logs"


def test_a_credential_provider_gives_the_session_as_for_a_live_run(monkeypatch):
    """OTEL_PYTHON_EXPORTER_OTLP_HTTP_*_CREDENTIAL_PROVIDER: the user's session (an entry point
    the SDK loads), where traintel's would otherwise be."""
    import opentelemetry.exporter.otlp.proto.http._common as common
    import requests

    asked: list[str] = []

    class Theirs(requests.Session):
        def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
            asked.append(url)
            return super().request(method, url, *args, **kwargs)

    class EntryPoint:
        def load(self) -> type[Theirs]:
            return Theirs

    monkeypatch.setattr(
        common, "entry_points", lambda group, name: [EntryPoint()] if name == "vault" else []
    )
    monkeypatch.setenv("OTEL_PYTHON_EXPORTER_OTLP_HTTP_LOGS_CREDENTIAL_PROVIDER", "vault")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "300")  # milliseconds: no long retries
    target = Target("http://127.0.0.1:9")
    try:
        assert set(target.sessions) == {"metrics", "traces"}
        with pytest.raises(SyncError, match="did not take the logs"):
            target.send("logs", [])
        assert asked and set(asked) == {"http://127.0.0.1:9/v1/logs"}
    finally:
        target.close()


def test_missing_runs_and_bad_durations_are_refused(tmp_path):
    proc = _cli("--dry-run", str(tmp_path / "nope"))
    assert proc.returncode == 1 and "no run record" in proc.stderr
    proc = _cli("--dry-run", "--max-age", "soon", str(tmp_path))
    assert proc.returncode == 2 and "--max-age" in proc.stderr


# -- segments, ranks, rotation --------------------------------------------------------------
def test_a_resumed_run_is_replayed_segment_by_segment(quiet_run):
    """Two processes, one record (resume): each segment is replayed as its process saw it,
    the second starting where the first left off, and its last point is what the second
    process last exported."""
    for segment in (1, 2):
        with capture() as telemetry:
            with quiet_run(otlp=None, run_id="resumed", resume=True) as run:
                for i in run.track(range(5)):
                    run.log(loss=1.0 / (i + segment), samples=2)
                run.log_eval(val_loss=0.5 / segment)
        live = snapshot(telemetry._collected[-1])
    assert len(read_lines(run.dir).of("run_start")) == 2
    target, got = memory_target()
    Sync(find_records([str(run.dir)])[0], target, Options(max_age=None, resend=True)).run()
    series = sent_points(got["metrics"])
    labels = frozenset({"project": "test", "run": "resumed", "rank": "0"}.items())
    steps = [value for _, value in series[("traintel_steps_total", labels)]]
    assert steps == sorted(steps) and steps[-1] == 10, "the second segment goes on counting"
    last = {key: values[-1][1] for key, values in series.items()}
    exact = REBUILT - APPROXIMATE - NEARLY  # NEARLY: left out between live samples
    compared = [key for key in live if key[0] in exact]
    assert len(compared) > 20
    for key in compared:
        assert last.get(key) == live[key], f"{key[0]} {dict(key[1])}"


@pytest.mark.parametrize("declared", [False, True])
def test_a_resume_from_an_older_checkpoint_is_replayed_as_it_ran(quiet_run, declared):
    """The second process goes back to step 4 of the first's 12 (``initial_step=4``, or its
    first step says so) and logs every third step: the sync sends what it exported, the
    evaluations after step 4 taken back (its best is no superseded one), and no counter
    ever goes down."""
    with quiet_run(otlp=None, run_id="back", resume=True) as run:
        for step in range(1, 13):
            run.log(step=step, loss=1.0 / step, samples=4, step_s=0.01)
            if step % 4 == 0:
                run.log_eval(val_acc=0.9 if step == 8 else step / 100, goals={"val_acc": "max"})
    options = {"initial_step": 4} if declared else {}
    with capture() as telemetry:
        with quiet_run(otlp=None, run_id="back", resume=True, **options) as run:
            for step in range(7, 17, 3):
                run.log(step=step, loss=2.0 / step, samples=4, step_s=0.01)
                run.log_eval(val_acc=step / 100)
    live = snapshot(telemetry._collected[-1])
    target, got = memory_target()
    Sync(find_records([str(run.dir)])[0], target, Options(max_age=None, resend=True)).run()
    series = sent_points(got["metrics"])
    labels = frozenset({"project": "test", "run": "back", "rank": "0"}.items())
    best = frozenset({**dict(labels), "metric": "val_acc"}.items())
    assert live[("traintel_eval_best", best)] == 0.16  # 0.9 at step 8 was superseded
    last = {key: values[-1][1] for key, values in series.items()}
    exact = REBUILT - APPROXIMATE - NEARLY
    compared = [key for key in live if key[0] in exact]
    assert ("traintel_steps_total", labels) in compared and ("traintel_eval_best", best) in compared
    for key in compared:
        assert last.get(key) == live[key], (
            f"{key[0]} {dict(key[1])}: {last.get(key)} != {live[key]}"
        )
    for (name, _labels), values in series.items():
        if name.endswith("_total"):
            points = [value for _, value in values]
            assert points == sorted(points), f"{name} went down"


def test_every_rank_and_every_rotated_file_is_sent_once(quiet_run, monkeypatch):
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "50")
    for rank in (0, 1):
        with quiet_run(
            otlp=None,
            mode="offline",
            run_id="ranks",
            rank=rank,
            world_size=2,
            max_record_bytes=2048,
        ) as run:
            for i in run.track(range(30)):
                run.log(loss=1.0, samples=1)
                run.event("tick", i=i, rank=rank)
    records, _ = find_records([str(run.dir.parent)])
    assert [record.name for record in records] == ["ranks/rank-0", "ranks/rank-1"]
    assert all(len(record.files) > 2 for record in records), "the records rotated"
    target, got = memory_target()
    Sync(records, target, Options(max_age=None)).run()
    sent = sorted(r.log_record.timestamp for batch in got["logs"].got for r in batch)
    expected = sorted(_loggable(read_lines(record.directory)) for record in records)
    assert sent == sorted(sum(expected, []))
    series = sent_points(got["metrics"])
    for rank in ("0", "1"):
        labels = frozenset({"project": "test", "run": "ranks", "rank": rank}.items())
        assert series[("traintel_steps_total", labels)][-1][1] == 30


def test_a_record_that_grows_and_rotates_between_syncs_is_sent_once(quiet_run):
    """Sync, then the run resumes, writes on and rotates its record: the next sync sends what
    is new, once (offsets count across the rotated files, oldest first)."""
    sent: list[int] = []
    for segment in (1, 2):
        with quiet_run(
            otlp=None, mode="offline", run_id="grows", resume=True, max_record_bytes=4096
        ) as run:
            for i in run.track(range(40)):
                run.log(loss=1.0)
                run.event("tick", i=i, segment=segment)
        target, got = memory_target()
        Sync(find_records([str(run.dir)])[0], target, Options(max_age=None)).run()
        sent += [r.log_record.timestamp for batch in got["logs"].got for r in batch]
    assert len(list(run.dir.glob("events.jsonl.*"))) > 2
    assert sorted(sent) == _loggable(read_lines(run.dir)), "every line once"
