"""Where traintel's background work holds the interpreter: py-spy's ``--gil`` samples of a paced
loop exporting everything often, sorted into the phases of a metric collection, a span batch and
a log batch.

A child runs the paced loop of ``stalls`` (100 steps/s, 2 ms of work per step) for ``seconds``
with a span every step, every record line as a log record, and metrics, spans and logs exported
every ``interval_ms`` to a fast local sink, under ``py-spy record --gil --idle``: each sample
names the thread holding the GIL at that moment (or none). Samples are sorted by thread and by
the deepest frame that says what the work is (encoding, the HTTP request, the SDK's aggregation,
traintel's own additions, ...). The GIL a phase holds per export is its samples over the
effective sampling rate (all samples over the run's length: a loaded machine samples slower than
asked) over the number of exports.

py-spy reads the interpreter's *last* holder of the GIL: a thread that released it to sleep or to
wait for a socket stays named until another takes it, so the training thread's sleeps count as
its own and a phase waiting on the network counts as holding. The figures are upper bounds on
what each phase holds; their order is what the profile tells.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks import harness

RATE_HZ = 500
#: (thread's target contains, phase, frames that any of these substrings mark) in order: the first
#: match names the sample's phase
PHASES: list[tuple[str, str, tuple[str, ...]]] = [
    ("_tick", "metrics: protobuf encoding", ("_encode", "SerializeToString")),
    (
        "_tick",
        "metrics: HTTP request",
        ("ExportSession", "urllib3", "requests", "niquests", "socket", "getaddrinfo"),
    ),
    (
        "_tick",
        "metrics: traintel's additions (histograms, windows, notes)",
        ("RunMetrics", "HistogramsExporter", "ExportNotes", "window"),
    ),
    ("_tick", "metrics: reading the state (callbacks)", ("_callback", "readings")),
    (
        "_tick",
        "metrics: the SDK's aggregation",
        ("collect", "_hash_attributes", "Exemplar", "aggregat"),
    ),
    ("_tick", "metrics: scheduling", ("",)),
    ("Span", "spans: protobuf encoding", ("_encode", "SerializeToString")),
    (
        "Span",
        "spans: HTTP request",
        ("ExportSession", "urllib3", "requests", "niquests", "socket", "getaddrinfo"),
    ),
    ("Span", "spans: other", ("",)),
    ("Log", "logs: protobuf encoding", ("_encode", "SerializeToString")),
    (
        "Log",
        "logs: HTTP request",
        ("ExportSession", "urllib3", "requests", "niquests", "socket", "getaddrinfo"),
    ),
    ("Log", "logs: other", ("",)),
    ("RecordWriter", "record writer", ("",)),
]


def _phase(frames: list[str]) -> str:
    if not frames or not frames[0]:
        return "no thread (GIL free)"
    if not frames[0].startswith("Thread._bootstrap"):
        return "training loop (main thread)"
    # the thread's target: the frame after threading's own (Thread.run, _bootstrap_inner)
    own = [f for f in frames if not f.startswith(("Thread.", "threading", "<frozen"))]
    target = own[0] if own else ""
    text = ";".join(frames)
    for thread, phase, marks in PHASES:
        if thread in (text if target.startswith("BatchProcessor") else target) and any(
            mark in text for mark in marks
        ):
            return phase
    return "other threads"


def loop(seconds: float, interval_ms: int) -> dict[str, Any]:
    """The profiled child: the stalls loop, everything exported every ``interval_ms``."""
    from benchmarks import stalls

    started = time.time()
    stalls.loop(seconds, 100.0, 2.0, observe=True, otlp=True, step_span_every=1)
    return {"loop_s": time.time() - started}


def run(seconds: float, interval_ms: int = 200) -> dict[str, Any]:
    spy = shutil.which("py-spy") or str(harness.Path(sys.executable).parent / "py-spy")
    if not os.path.exists(spy):
        raise harness.Skipped("py-spy is not installed (pip install 'traintel[bench]')")
    with harness.collector("sink") as (url, what), tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "raw.txt")
        env = {
            **os.environ,
            **harness.otlp_env(url, interval_ms),
            "OTEL_BLRP_SCHEDULE_DELAY": str(interval_ms),
        }
        started = time.monotonic()
        done = subprocess.run(
            [
                spy,
                "record",
                "--gil",
                "--idle",
                "-r",
                str(RATE_HZ),
                "-f",
                "raw",
                "-o",
                raw,
                "--",
                sys.executable,
                "-m",
                "benchmarks.child",
                "benchmarks.gil_profile:loop",
                json.dumps({"seconds": seconds, "interval_ms": interval_ms}),
            ],
            cwd=harness.REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300 + seconds * 4,
        )
        elapsed = time.monotonic() - started
        if done.returncode != 0 or not os.path.exists(raw):
            raise harness.Skipped(f"py-spy could not profile here: {done.stderr.strip()[-300:]}")
        samples: collections.Counter[str] = collections.Counter()
        with open(raw) as lines:
            for line in lines:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                samples[_phase(stack.split(";") if stack else [])] += int(count)
    total = sum(samples.values())
    rate = total / elapsed
    exports = seconds * 1000 / interval_ms
    phases = {
        name: {"samples": n, "share": n / total, "gil_ms_per_export": n / rate * 1e3 / exports}
        for name, n in samples.most_common()
    }
    return {
        "seconds": seconds,
        "interval_ms": interval_ms,
        "requested_rate_hz": RATE_HZ,
        "effective_rate_hz": rate,
        "samples": total,
        "collector": what,
        "phases": phases,
    }


def render(result: dict[str, Any]) -> list[str]:
    lines = ["| phase | GIL samples | share | GIL held per export |", "|---|---|---|---|"]
    for name, row in result["phases"].items():
        per = (
            ""
            if not name.startswith(("metrics", "spans", "logs"))
            else f"<= {row['gil_ms_per_export']:.2f} ms"
        )
        lines.append(f"| {name} | {row['samples']} | {100 * row['share']:.1f} % | {per} |")
    return lines + [
        "",
        f"py-spy --gil at {result['requested_rate_hz']} Hz asked, "
        f"{result['effective_rate_hz']:.0f} Hz had; the paced loop of `stalls` for "
        f"{result['seconds']:g} s with a span every step and everything exported "
        f"every {result['interval_ms']} ms to {result['collector']}. Spans' and "
        "logs' figures are per export interval (a batch every interval). py-spy names the "
        "GIL's last holder (a sleeping or waiting thread included): upper bounds.",
    ]


BENCHMARK = harness.Benchmark(
    name="gil_profile",
    title="Where background work holds the interpreter (py-spy --gil)",
    profiles={"full": {"seconds": 60.0}, "quick": {"seconds": 15.0}, "tiny": {"seconds": 1.0}},
    run=run,
    render=render,
)
