"""Faults injected for real: a dead, killed or restarted collector, a backend outage behind a
healthy collector, SIGKILL, an unwritable run directory, failing samplers, forks and repeated
runs. Training must go on, the local record must keep every step, and what the collector
accepted must reach the backend after recovery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

import loki_model
import traintel
from conftest import logs_summary
from reliability_log import record
from stack_fixture import demo_command, demo_env, eventually, promql, require
from traintel.testing import capture

#: a step this much slower than the loop's own pace means export blocked training
STALL_BUDGET_S = 0.5


def _train_steps(run, steps: int, pace: float = 0.01) -> float:
    """Train ``steps`` paced steps; return the worst lateness of any step."""
    worst = 0.0
    for i, _ in enumerate(run.track(range(steps))):
        started = time.perf_counter()
        time.sleep(pace)
        run.log(loss=1.0 / (i + 1), samples=8)
        worst = max(worst, time.perf_counter() - started - pace)
    return worst


def test_collector_down_from_the_start(tmp_path, monkeypatch, recorded, quiet):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "200")
    options = {**quiet, "otlp": True, "step_span_every": 5}
    started = time.perf_counter()
    with traintel.init(project="faults", dir=str(tmp_path), **options) as run:
        worst = _train_steps(run, 200)
    finish_s = time.perf_counter() - started
    steps = recorded(run.dir).of("step")
    assert [s["step"] for s in steps] == list(range(1, 201))
    worst_step = max(s["step_s"] for s in steps)
    assert worst_step < 0.01 + STALL_BUDGET_S
    record(
        "collector down from the start",
        "training completes; every step recorded; no stall",
        f"200/200 steps recorded; worst step {worst_step * 1000:.1f} ms (10 ms pace); "
        f"worst lateness {worst * 1000:.1f} ms; run incl. bounded shutdown {finish_s:.1f} s",
    )


def _run_demo(stack, tmp_path, *args):
    return subprocess.Popen(
        demo_command("--project", "faults", "--sample-interval", "1", *args),
        env=demo_env(stack.endpoints["otlp_http"], tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _steps_in_prometheus(stack, run_id: str) -> float:
    result = promql(stack, f'traintel_steps_total{{run="{run_id}"}}')
    return float(result[0]["value"][1]) if result else 0.0


@pytest.mark.stack
def test_collector_killed_and_restarted_mid_run(stack, tmp_path, recorded):
    proc = _run_demo(
        stack,
        tmp_path,
        "--epochs",
        "1",
        "--steps-per-epoch",
        "200",
        "--batch-size",
        "8",
        "--step-sleep",
        "0.05",
    )
    run_dir = eventually(lambda: next(tmp_path.iterdir(), None), 60, what="run dir")
    try:
        eventually(
            lambda: _steps_in_prometheus(stack, run_dir.name) > 0,
            60,
            what="first steps in Prometheus",
        )
        stack.stop("otelcol")
        down_at = time.monotonic()
        time.sleep(3)
        stack.start("otelcol")
        outage = time.monotonic() - down_at
        assert proc.wait(timeout=180) == 0, proc.stderr.read()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = json.loads((run_dir / "summary.json").read_text())
    steps = recorded(run_dir).of("step")
    assert summary["steps"] == len(steps) == 200
    worst = max(s["step_s"] for s in steps)
    assert worst < 0.05 + STALL_BUDGET_S + 0.5  # model step + sleep + budget
    eventually(
        lambda: _steps_in_prometheus(stack, run_dir.name) == 200,
        60,
        what="the final step count after the collector restarted",
    )
    record(
        "collector killed and restarted mid-run",
        "training completes; record complete; new data reaches Prometheus after restart",
        f"200/200 steps recorded; collector down {outage:.1f} s; worst step "
        f"{worst * 1000:.0f} ms (50 ms sleep + model); Prometheus shows the final 200 steps",
    )


def _count_samples(stack, run_id: str, metric: str = "traintel_steps_total") -> int:
    result = promql(stack, f'count_over_time({metric}{{run="{run_id}"}}[30m])')
    return int(float(result[0]["value"][1])) if result else 0


@pytest.mark.stack
def test_prometheus_down_behind_a_healthy_collector_loses_nothing(stack, tmp_path):
    stack.stop("prometheus")
    try:
        proc = _run_demo(
            stack,
            tmp_path,
            "--epochs",
            "1",
            "--steps-per-epoch",
            "60",
            "--batch-size",
            "8",
            "--step-sleep",
            "0.05",
        )
        assert proc.wait(timeout=180) == 0, proc.stderr.read()[-2000:]
    finally:
        stack.start("prometheus")
    run_dir = next(tmp_path.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    final = eventually(
        lambda: _steps_in_prometheus(stack, run_dir.name) == summary["steps"],
        120,
        what="data accepted during the outage to arrive",
    )
    samples = _count_samples(stack, run_dir.name)
    duration = summary["duration_s"]
    assert final and samples >= duration * 0.5  # ~one export per second while it trained
    record(
        "Prometheus down for the whole run, collector healthy",
        "after Prometheus returns, the data the collector accepted arrives",
        f"run of {duration:.1f} s trained with Prometheus down; afterwards {samples} samples "
        f"of traintel_steps_total arrived (1 s export interval) and the final count "
        f"{summary['steps']} matches the record",
    )


@pytest.mark.stack
def test_loki_down_behind_a_healthy_collector_loses_nothing(stack, tmp_path, recorded):
    """With a supplied Loki, Loki itself is stopped; without one, the sink on Loki's endpoint."""
    backend = "sink" if "loki" in stack.sink_covers else "loki"
    if backend == "loki":
        require(stack, "loki")
    stack.stop(backend)
    try:
        proc = _run_demo(
            stack, tmp_path, "--epochs", "2", "--steps-per-epoch", "20", "--batch-size", "8"
        )
        assert proc.wait(timeout=180) == 0, proc.stderr.read()[-2000:]
    finally:
        stack.start(backend)
    run_dir = next(tmp_path.iterdir())
    expected = [line for line in recorded(run_dir) if line["type"] in ("eval", "milestone")]

    def in_loki() -> int:
        response = requests.get(
            f"{stack.endpoints['loki']}/loki/api/v1/query_range",
            params={
                "query": f'{{service_name="traintel"}} | run="{run_dir.name}" '
                '| type=~"eval|milestone"',
                "start": int((time.time() - 3600) * 1e9),
                "limit": 1000,
            },
            timeout=10,
        ).json()
        return sum(len(s["values"]) for s in response.get("data", {}).get("result", []))

    def at_lokis_endpoint() -> int:
        return len(
            [
                e
                for e in loki_model.entries(stack.sink_file("logs"))
                if e.labels.get("run") == run_dir.name
                and e.metadata.get("type") in ("eval", "milestone")
            ]
        )

    count = in_loki if backend == "loki" else at_lokis_endpoint
    got = eventually(
        lambda: count() >= len(expected) and count(),
        150,
        interval=2,
        what="log records accepted during the Loki outage",
    )
    assert got == len(expected)  # every one, none twice
    where = "in Loki" if backend == "loki" else "at Loki's OTLP endpoint (the sink)"
    record(
        "Loki down for the whole run, collector healthy",
        "after Loki returns, the log records the collector accepted arrive",
        f"{got} of {len(expected)} eval/milestone records arrived {where} after recovery",
    )


def test_sigkill_leaves_a_parseable_record_that_logs_summary_reads(tmp_path, recorded):
    script = (
        f"import time, traintel\n"
        f"run = traintel.init(project='faults', dir={str(tmp_path)!r}, progress='off', "
        f"otlp=False, sample_interval=0, console_logs=False, flush_interval=0.1)\n"
        f"for i in range(10**6):\n"
        f"    run.log(loss=1.0 / (i + 1))\n"
        f"    if i == 300: print(run.dir, flush=True)\n"
        f"    time.sleep(0.001)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    run_dir = Path(proc.stdout.readline().strip())
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    lines = recorded(run_dir)  # raises if any line is torn
    steps = lines.of("step")
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1)) and len(steps) > 300
    out = logs_summary(run_dir, "--format", "json")  # exit 0, or the test fails
    assert str(len(steps)) in out
    record(
        "SIGKILL mid-run",
        "every line up to the last flush parses; logs summary reads it",
        f"{len(steps)} steps, {len(lines)} lines, all parse; `traintel logs summary` exit 0",
    )


def test_unwritable_run_directory_warns_and_export_continues(caplog, quiet):
    with capture() as telemetry:
        with traintel.init(
            project="faults", dir="/dev/null/runs", **{**quiet, "otlp": None}
        ) as run:
            for _ in range(20):
                run.log(loss=1.0)
    warnings = [r for r in caplog.records if "cannot write the run record" in r.message]
    assert len(warnings) == 1
    assert telemetry.metric("traintel_steps_total") == [20.0]
    assert run.summary["steps"] == 20 and run.state.dropped > 0
    record(
        "run directory unwritable",
        "one warning; training and export continue",
        f"1 warning; 20/20 steps trained; steps exported over OTLP: 20; "
        f"{run.state.dropped} record lines counted as dropped",
    )


def test_a_failing_sampler_is_logged_once_and_never_kills_training(tmp_path, recorded, quiet):
    from traintel import samplers

    class Broken:
        name = "broken"

        def sample(self):
            raise RuntimeError("driver went away")

        def close(self):
            pass

    original = samplers.default_samplers
    samplers.default_samplers = lambda *a, **k: [Broken()]
    try:
        with traintel.init(
            project="faults", dir=str(tmp_path), **{**quiet, "sample_interval": 0.02}
        ) as run:
            worst = _train_steps(run, 30)
    finally:
        samplers.default_samplers = original
    messages = [
        line["message"]
        for line in recorded(run.dir).of("log")
        if line["logger"] == "traintel.samplers" and "broken" in line["message"]
    ]
    assert run.summary["steps"] == 30
    assert 1 <= len(messages) <= 2  # the failure once, then "disabled" once
    record(
        "traintel's sampler thread raising",
        "logged once, sampler stops, training goes on",
        f"30/30 steps; {len(messages)} log lines about it; worst lateness {worst * 1000:.1f} ms",
    )


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_repeated_runs_and_forked_workers_leak_nothing(tmp_path, recorded, quiet):
    import torch

    def one_run():
        loader = torch.utils.data.DataLoader(list(range(32)), batch_size=4, num_workers=2)
        with traintel.init(
            project="faults",
            dir=str(tmp_path),
            **{**quiet, "sample_interval": 0.05, "http_port": 0, "otlp": None},
        ) as run:
            for batch in run.track(loader):
                run.log(loss=float(batch.sum()))
        return run

    one_run()  # warm-up: imports and lazily created module state
    threads, fds = threading.active_count(), _fds()
    for _ in range(2):
        run = one_run()
    time.sleep(0.3)
    assert run.summary["steps"] == 8
    assert threading.active_count() == threads, [t.name for t in threading.enumerate()]
    assert _fds() <= fds
    lines = recorded(run.dir)
    assert len(lines.of("run_start")) == 1 and len(lines.of("run_end")) == 1
    record(
        "two runs in one process; forked data-loader workers",
        "no leaked threads, fds or handlers; workers don't write the parent's record",
        f"threads {threads} -> {threading.active_count()}, fds {fds} -> {_fds()}; "
        "one run_start and one run_end per record",
    )
