"""One rule for every counter across segments: a run killed with SIGKILL and resumed goes on
from the record's values, so that no counter it exported goes down, as Prometheus reads it
(the real collector and Prometheus)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import read_lines
from stack_fixture import eventually, promql

pytestmark = pytest.mark.stack

SEGMENT = textwrap.dedent("""\
    import os, signal, sys, time, traintel
    kill = sys.argv[1] == "kill"
    run = traintel.init(project="resume", run_id="counters", progress="off", sample_interval=0,
                        resume=True, flush_interval=0.2)
    offset = run.state.step
    for i in run.track(range(40)):
        step = offset + i + 1
        run.log(loss=2.0 / step, acc=step / 100, samples=4, tokens=64)
        if step % 10 == 0:
            run.log_eval(val_loss=1.0 / step if step != 30 else 5.0)
            run.event("marker", step=step)
        time.sleep(0.05)
    if kill:
        run.flush()
        time.sleep(2.5)  # a few exports of the last values
        os.kill(os.getpid(), signal.SIGKILL)
    run.finish()
    """)

#: the counter series a run exports (histograms by their _count, _sum and _bucket series)
COUNTERS = (
    "traintel_steps_total",
    "traintel_samples_total",
    "traintel_tokens_total",
    "traintel_logged_values_total",
    "traintel_logged_nonfinite_total",
    "traintel_events_total",
    "traintel_data_wait_seconds_total",
    "traintel_compute_seconds_total",
    "traintel_step_duration_seconds_count",
    "traintel_step_duration_seconds_sum",
    "traintel_step_duration_seconds_bucket",
    "traintel_export_failures_total",
)


def test_every_counter_goes_on_across_a_kill_and_a_resume(stack, tmp_path):
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": stack.endpoints["otlp_http"],
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "TRAINTEL_DIR": str(tmp_path),
    }
    killed = subprocess.run(
        [sys.executable, "-c", SEGMENT, "kill"],
        env=env,
        timeout=120,
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    time.sleep(1.5)  # the resumed process's first export comes after Prometheus has the last
    resumed = subprocess.run(
        [sys.executable, "-c", SEGMENT, "end"], env=env, timeout=120, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    run_dir = next(tmp_path.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 80 and len(summary["segments"]) == 2
    run_id = summary["run"]
    evals = sum(1 for line in read_lines(run_dir) if line["type"] == "eval")

    def final() -> dict | None:
        got = promql(stack, f'traintel_logged_values_total{{run="{run_id}",metric="loss"}}')
        events = promql(stack, f'traintel_events_total{{run="{run_id}",event="eval"}}')
        return (
            got
            and events
            and float(got[0]["value"][1]) == 80
            and float(events[0]["value"][1]) == evals
            and {"got": got}
        )

    eventually(final, 60, what="the resumed segment's last export in Prometheus")
    checked = 0
    for name in COUNTERS:
        series = promql(stack, f'{name}{{run="{run_id}"}}[1h]')
        for one in series:
            values = [float(v) for _, v in one["values"]]
            assert values == sorted(values), f"{name} {one['metric']} went down: {values}"
            checked += 1
    assert checked >= 12, checked
    # the series a resume restarted from zero before every counter was carried on
    for name, labels in (
        ("traintel_logged_values_total", 'metric="acc"'),
        ("traintel_events_total", 'event="best_eval"'),
        ("traintel_step_duration_seconds_count", ""),
    ):
        [one] = promql(stack, f'{name}{{run="{run_id}"{"," + labels if labels else ""}}}[1h]')
        times = [float(t) for t, _ in one["values"]]
        assert times[0] < summary["segments"][1]["start_ts"] < times[-1], (
            f"{name}: samples from both segments"
        )
