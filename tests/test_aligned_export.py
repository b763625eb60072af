"""Metric collection aligned across ranks: three processes, each a run exporting its metrics,
collect at the same wall-clock boundaries (multiples of OTEL_METRIC_EXPORT_INTERVAL since the
epoch), so that whatever pause a collection causes lands in the same step on every rank.

The processes print their exports with the SDK's console exporter (OTEL_METRICS_EXPORTER=console,
as a user checking their setup would); an observable gauge's point carries the moment of its
collection, which is what is checked."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from traintel.export.aligned import next_boundary

INTERVAL_MS = 400
#: the child: says READY once its run exports, logs steps until the file ``stop`` exists, then
#: prints that the loop ended (later collections are the shutdown's, off the schedule)
CHILD = textwrap.dedent("""
    import os, sys, time, traintel
    stop = sys.argv[1]
    run = traintel.init(project="aligned", name="r" + sys.argv[2], dir=sys.argv[3],
                        progress="off", console_logs=False, otlp=True)
    print("READY", file=sys.stderr, flush=True)
    for i, _ in enumerate(run.track(range(10**9))):
        run.log(loss=1.0 / (i + 1))
        time.sleep(0.01)
        if os.path.exists(stop):
            break
    print("LOOP-ENDED", time.time(), flush=True)
    run.finish()
""")


def _collection_times(stdout: str) -> list[float]:
    """Each console export's collection moment (the gauges' point timestamps), in seconds."""
    text = stdout.split("LOOP-ENDED")[0]
    decoder, at, times = json.JSONDecoder(), 0, set()
    while (start := text.find("{", at)) >= 0:
        try:
            export, at = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            at = start + 1
            continue
        for resource in export.get("resource_metrics", []):
            for scope in resource["scope_metrics"]:
                for metric in scope["metrics"]:
                    times.update(
                        p["time_unix_nano"] / 1e9
                        for p in metric["data"]["data_points"]
                        if p.get("start_time_unix_nano") is None
                    )  # a gauge's
    return sorted(times)


def test_three_processes_collect_at_the_same_boundaries(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "OTEL_METRICS_EXPORTER": "console",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_METRIC_EXPORT_INTERVAL": str(INTERVAL_MS),
    }
    stop = tmp_path / "stop"
    # stdout to files: a pipe's buffer would fill and hold the exporters
    files = [(tmp_path / f"{rank}.out").open("w") for rank in range(3)]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(stop), str(rank), str(tmp_path / str(rank))],
            env=env,
            stdout=files[rank],
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(3)
    ]
    for child in children:
        assert child.stderr is not None
        while (line := child.stderr.readline()) and line.strip() != "READY":
            pass
    time.sleep(3.0)  # about 7 collections together
    stop.touch()
    errors = [child.communicate(timeout=120)[1] for child in children]
    for file in files:
        file.close()
    assert all(child.returncode == 0 for child in children), errors
    outputs = [(tmp_path / f"{rank}.out").read_text() for rank in range(3)]
    interval = INTERVAL_MS / 1000
    boundaries = []
    for out in outputs:
        times = _collection_times(out)
        assert len(times) >= 4, out[-2000:]
        # each collection starts just after a boundary: late by the scheduler only (an
        # unaligned reader would be late by a uniform 0-400 ms, the same phase every time)
        lateness = [t - (next_boundary(t, interval) - interval) for t in times]
        assert statistics.median(lateness) < 0.08, lateness
        boundaries.append({round(t - late, 3) for t, late in zip(times, lateness)})
    shared = boundaries[0] & boundaries[1] & boundaries[2]
    assert len(shared) >= 3, boundaries
