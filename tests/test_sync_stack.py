"""``traintel sync`` through the real stack: the collector, Prometheus and the sink (a second
collector standing where Loki's OTLP endpoint and Tempo's OTLP receiver are, writing what it
receives to files; Loki and Tempo are AGPL and never built here).

A run trains offline, the sync sends it, and Prometheus holds its step counter, loss,
evaluations and errors at the record's times with the record's values; the sink holds its log
lines and spans, each once. Repeating the sync, and interrupting one half-way with SIGINT,
double nothing. A live run whose collector was down for its middle third, synced afterwards,
has a sample for every export it made and no counter reset.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conftest import read_lines
from stack_fixture import eventually, promql
from traintel.sync.timeline import LAG

pytestmark = pytest.mark.stack

#: the record lines a live run sends as logs (and a sync sends for it)
LOGGED = {"event", "eval", "error", "milestone", "log", "run_end"}
COUNTERS = (
    "traintel_steps_total",
    "traintel_samples_total",
    "traintel_data_wait_seconds_total",
    "traintel_compute_seconds_total",
    "traintel_step_duration_seconds_count",
)


def _needs_sink(stack) -> None:
    """Skip unless the sink stands in for both Loki and Tempo (a real one takes its place)."""
    if set(stack.sink_covers) != {"loki", "tempo"}:
        pytest.skip("a real Loki or Tempo runs: the sink does not stand in for it")


def _env(stack, runs: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": stack.endpoints["otlp_http"],
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        "TRAINTEL_DIR": str(runs),
        "TRAINTEL_PROGRESS": "lines",
        **extra,
    }


def _sync(
    stack, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "traintel.cli",
            "sync",
            "--endpoint",
            stack.endpoints["otlp_http"],
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env or dict(os.environ),
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _samples(stack, metric: str, run: str, extra: str = "") -> list[tuple[int, float]]:
    """Every raw sample of one series of a run, as (Unix ms, value)."""
    result = promql(stack, f'{metric}{{run="{run}"{extra}}}[1d]')
    assert len(result) <= 1, result
    return [(round(float(t) * 1000), float(v)) for t, v in result[0]["values"]] if result else []


def _sink(stack, signal_name: str, run: str) -> list[dict[str, Any]]:
    """The log records or spans the sink received for a run."""
    path = stack.sink_file(signal_name)
    kind, scopes, items = (
        ("resourceLogs", "scopeLogs", "logRecords")
        if signal_name == "logs"
        else ("resourceSpans", "scopeSpans", "spans")
    )
    out: list[dict[str, Any]] = []
    for line in path.read_text().splitlines() if path.exists() else []:
        for resource in json.loads(line)[kind]:
            attributes = {
                a["key"]: next(iter(a["value"].values()))
                for a in resource["resource"].get("attributes", [])
            }
            if attributes.get("run") == run:
                out += [item for scope in resource[scopes] for item in scope[items]]
    return out


def _loggable(lines: list[dict]) -> Counter[tuple[int, str]]:
    return Counter(
        (int(line["ts"] * 1e9), line.get("message", ""))
        for line in lines
        if line["type"] in LOGGED and line.get("level") != "debug"
    )


def _log_keys(records: list[dict]) -> Counter[tuple[int, str]]:
    return Counter(
        (int(r["timeUnixNano"]), r.get("body", {}).get("stringValue", "")) for r in records
    )


def _at(lines: list[dict], kind: str, ms: int) -> list[dict]:
    """The record's lines of one kind up to a point's time (a point holds every line up to
    it)."""
    return [line for line in lines if line["type"] == kind and line["ts"] * 1000 <= ms]


def _latest(lines: list[dict], kind: str, key: str, ms: int, field: str = "metrics") -> Any:
    values = [
        line[field][key]
        for line in _at(lines, kind, ms)
        if isinstance(line[field].get(key), (int, float))
    ]
    return values[-1] if values else None


# -- a run trained offline -------------------------------------------------------------------
@pytest.fixture(scope="module")
def offline(stack, tmp_path_factory):
    """The demo, a real PyTorch training loop, trained offline while a collector listens."""
    _needs_sink(stack)
    runs = tmp_path_factory.mktemp("offline")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "traintel.cli",
            "demo",
            "--epochs",
            "2",
            "--steps-per-epoch",
            "40",
            "--batch-size",
            "16",
            "--project",
            "sync",
            "--name",
            "offline",
            "--nan-at-step",
            "10",
            "--error-at-step",
            "15",
            "--step-sleep",
            "0.05",
            "--sample-interval",
            "1",
        ],
        env=_env(stack, runs, TRAINTEL_MODE="offline"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = next(runs.iterdir())
    lines = read_lines(run_dir)
    run_id = lines[0]["run"]
    assert lines[0]["export"] == "offline"
    time.sleep(3)
    assert not promql(stack, f'traintel_steps_total{{run="{run_id}"}}'), "an offline run exported"
    synced = _sync(stack, str(run_dir))
    return run_id, run_dir, lines, synced


def test_an_offline_run_reaches_prometheus_at_its_original_times(stack, offline):
    run_id, _, lines, _ = offline
    start, last = lines[0]["ts"], max(line["ts"] for line in lines if line["type"] != "export")
    interval = lines[0]["export_interval_s"]
    expected = sorted(
        {
            math.ceil(t * 1000)
            for t in [
                start + k * interval
                for k in range(1, math.ceil((last - start) / interval))
                if start + k * interval < last
            ]
            + [last]
        }
    )
    steps = eventually(
        lambda: (s := _samples(stack, "traintel_steps_total", run_id)) and s[-1][1] == 80 and s,
        what="the synced run's last step count",
    )
    assert [t for t, _ in steps] == expected, "a point per export interval, at the record's times"
    for ms, value in steps:
        assert value == len(_at(lines, "step", ms)), f"steps at {ms}"
    loss = _samples(stack, "traintel_loss", run_id)
    assert loss and all(value == _latest(lines, "step", "loss", ms) for ms, value in loss)
    evals = _samples(stack, "traintel_eval_value", run_id, ', metric="val_loss"')
    assert evals and all(value == _latest(lines, "eval", "val_loss", ms) for ms, value in evals)
    assert len({value for _, value in evals}) == 2, "both epochs' evaluations"
    errors = _samples(stack, "traintel_errors_total", run_id, ', error_type="data"')
    assert errors and errors[-1][1] == 1
    assert all(
        value == len([e for e in _at(lines, "error", ms) if e["error_type"] == "data"])
        for ms, value in errors
    )
    nan = _samples(stack, "traintel_logged_nonfinite_total", run_id, ', metric="loss"')
    assert nan[-1][1] == 1


def test_an_offline_run_reaches_the_logs_and_traces_backends(stack, offline):
    run_id, _, lines, _ = offline
    expected = _loggable(lines)
    logs = eventually(
        lambda: (
            (got := _sink(stack, "logs", run_id))
            and sum(_log_keys(got).values()) >= sum(expected.values())
            and got
        ),
        what="the synced log lines in the sink",
    )
    assert _log_keys(logs) == expected, "every line the live export would send, once"
    by_time = {int(line["ts"] * 1e9): line for line in lines if line["type"] in LOGGED}
    for record in logs:
        assert record.get("traceId") == by_time[int(record["timeUnixNano"])]["trace_id"]
    spans = {s["span_id"]: s for s in lines if s["type"] == "span"}
    sent = eventually(
        lambda: (got := _sink(stack, "traces", run_id)) and len(got) >= len(spans) and got,
        what="the synced spans in the sink",
    )
    assert sorted(s["spanId"] for s in sent) == sorted(spans)
    for span in sent:
        line = spans[span["spanId"]]
        assert (int(span["startTimeUnixNano"]), int(span["endTimeUnixNano"])) == (
            line["start_ns"],
            line["end_ns"],
        )
        assert span.get("parentSpanId", "") == (line["parent_span_id"] or "")


def test_a_repeated_sync_sends_nothing_again(stack, offline):
    run_id, run_dir, lines, _ = offline
    # the first sync's points must all have landed before they are counted (run alone, this
    # test would read them while the collector still forwards them)
    eventually(
        lambda: (s := _samples(stack, "traintel_steps_total", run_id)) and s[-1][1] == 80,
        what="the first sync's last step count",
    )
    time.sleep(6)  # the collector's batches and remote-write interval: anything still on its way
    before = _samples(stack, "traintel_steps_total", run_id)
    _sync(stack, str(run_dir))
    time.sleep(6)  # the collector's batches and remote-write interval
    assert _samples(stack, "traintel_steps_total", run_id) == before
    assert max(Counter(_log_keys(_sink(stack, "logs", run_id))).values()) == 1


# -- interrupted ------------------------------------------------------------------------------
CHATTY = textwrap.dedent("""\
    import traintel
    with traintel.init(project="sync", name="chatty", mode="offline", progress="off",
                       sample_interval=0, step_span_every=10) as run:
        log = run.logger("data")
        for i in run.track(range(200)):
            run.log(loss=1.0 / (i + 1), samples=4)
            for part in range(60):
                log.info("shard %d part %d", i, part)
    """)


def test_an_interrupted_sync_resumes_and_doubles_nothing(stack, tmp_path):
    _needs_sink(stack)
    proc = subprocess.run(
        [sys.executable, "-c", CHATTY],
        env=_env(stack, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = next(tmp_path.iterdir())
    lines = read_lines(run_dir)
    run_id = lines[0]["run"]
    cursor = run_dir / "sync-cursor.json"
    sync = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "traintel.cli",
            "sync",
            "--batch-size",
            "20",
            "--endpoint",
            stack.endpoints["otlp_http"],
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def acknowledged() -> int:
        try:
            entry = next(iter(json.loads(cursor.read_text())["targets"].values()))
        except (OSError, ValueError, StopIteration):
            return 0
        return entry["position"]["logs"]

    eventually(acknowledged, 60, 0.05, what="the first acknowledged batch")
    sync.send_signal(signal.SIGINT)
    out, err = sync.communicate(timeout=120)
    assert sync.returncode == 130, err[-2000:]
    assert "interrupted" in err
    size = sum(p.stat().st_size for p in run_dir.glob("events.jsonl*"))
    assert 0 < acknowledged() < size, "interrupted half-way"
    sent_before = sum(_log_keys(_sink(stack, "logs", run_id)).values())
    _sync(stack, "--batch-size", "20", str(run_dir))
    expected = _loggable(lines)
    assert sum(expected.values()) > 12000 > sent_before
    logs = eventually(
        lambda: (
            (got := _sink(stack, "logs", run_id))
            and sum(_log_keys(got).values()) >= sum(expected.values())
            and got
        ),
        timeout=120,
        what="every log line in the sink",
    )
    assert _log_keys(logs) == expected, "every line exactly once"
    steps = eventually(
        lambda: (s := _samples(stack, "traintel_steps_total", run_id)) and s[-1][1] == 200 and s,
        what="the last step count",
    )
    assert len({t for t, _ in steps}) == len(steps)
    assert all(b >= a for (_, a), (_, b) in zip(steps, steps[1:])), "no counter went down"
    spans = [s["spanId"] for s in _sink(stack, "traces", run_id)]
    assert len(spans) == len(set(spans)) == len([s for s in lines if s["type"] == "span"])


# -- a collector outage ----------------------------------------------------------------------
OUTAGE = textwrap.dedent("""\
    import time, traintel
    with traintel.init(project="sync", name="outage", progress="off", sample_interval=0,
                       step_span_every=5) as run:
        for i in run.track(range(270)):
            run.log(loss=1.0 / (i + 1), samples=4)
            if i % 10 == 0:
                run.event("tick", i=i)
            time.sleep(0.1)
    """)


def test_a_run_whose_collector_was_down_for_its_middle_third_has_no_gap(stack, tmp_path):
    _needs_sink(stack)
    env = _env(
        stack,
        tmp_path,
        OTEL_BSP_SCHEDULE_DELAY="200",
        OTEL_BLRP_SCHEDULE_DELAY="200",
        OTEL_EXPORTER_OTLP_TIMEOUT="2000",
    )  # ms
    proc = subprocess.Popen(
        [sys.executable, "-c", OUTAGE],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(10)
        stack.stop("otelcol")
        time.sleep(10)
    finally:
        stack.start("otelcol")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    run_dir = next(tmp_path.iterdir())
    lines = read_lines(run_dir)
    run_id = lines[0]["run"]
    exports = [n for n in lines if n["type"] == "export" and n["signal"] == "metrics"]
    failed = [n["at"] for n in exports if not n["ok"]]
    assert len(failed) >= 3, "the outage made exports fail"
    live = eventually(
        lambda: (s := _samples(stack, "traintel_steps_total", run_id)) and s[-1][1] == 270 and s,
        what="the run's live samples",
    )

    def covered(samples: list[tuple[int, float]], note: dict) -> bool:
        """A sample for an export: the live one when it was delivered (collected up to a few
        milliseconds before ``at``, the latest point time it sent), else the sync's (just
        after ``at``)."""
        at = note["at"] * 1000
        low, high = (at - 100, at) if note["ok"] else (at, at + 5)
        return any(low <= ms <= high for ms, _ in samples)

    assert not any(covered(live, n) for n in exports if not n["ok"]), (
        "something filled the gap before the sync: the test proves nothing"
    )
    _sync(stack, str(run_dir))

    def filled() -> list[tuple[int, float]] | None:
        samples = _samples(stack, "traintel_steps_total", run_id)
        return samples if all(covered(samples, n) for n in exports) else None

    steps = eventually(filled, what="a sample for every export the run made")
    gaps = [b - a for (a, _), (b, _) in zip(steps, steps[1:])]
    notes = sorted(n["at"] for n in exports)
    assert max(gaps) <= max(b - a for a, b in zip(notes, notes[1:])) * 1000 + 10
    # Every window of the outage has a sample, at the cadence the run would have had: from the
    # last delivered export before the first failure to the first delivered one after the last
    # (a failing export retries for seconds, so the run itself collected far less often).
    outage = (
        max(n["at"] for n in exports if n["ok"] and n["at"] < min(failed)),
        min(n["at"] for n in exports if n["ok"] and n["at"] > max(failed)),
    )
    inside = [ms for ms, _ in steps if outage[0] * 1000 - 100 <= ms <= outage[1] * 1000]
    window = max(1.0, LAG) * 1000  # the export interval; LAG before a delivered export
    assert max(b - a for a, b in zip(inside, inside[1:])) <= window + 10
    # (with the aligned reader a failed export no longer retries past the next boundary, so the
    # failed exports may come at the live cadence; sync's filling between sparse failures is
    # tested on the timeline itself in tests/test_sync.py)
    for metric in COUNTERS:
        resets = promql(stack, f'resets({metric}{{run="{run_id}"}}[1d])')
        assert resets and float(resets[0]["value"][1]) == 0, f"{metric} went down"
    expected = _loggable(lines)
    logs = eventually(
        lambda: (
            (got := _sink(stack, "logs", run_id))
            and sum(_log_keys(got).values()) >= sum(expected.values())
            and got
        ),
        what="every log line in the sink",
    )
    assert _log_keys(logs) == expected, "each line once: delivered live or synced"
    spans = [s["spanId"] for s in _sink(stack, "traces", run_id)]
    assert sorted(spans) == sorted(s["span_id"] for s in lines if s["type"] == "span")


def test_a_refusing_collector_is_a_clear_error(stack, offline):
    _, run_dir, _, _ = offline
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "traintel.cli",
            "sync",
            "--endpoint",
            stack.endpoints["prometheus"],
            str(run_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1
    where = stack.endpoints["prometheus"].removeprefix("http://")
    assert (
        f"the collector refused the metrics: {where} answered HTTP 404 Not Found: "
        "404 page not found" in refused.stderr
    )
