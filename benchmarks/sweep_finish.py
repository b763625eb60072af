"""``finish()`` per trial over a sweep of 30 short trials in one process (Optuna's shape).

Each variant runs in a fresh child process: 30 runs one after another, each logging 20 steps,
then ``finish()`` timed. Variants: nothing exported; the status endpoint on (``http_port=0``);
OTLP export to a real collector (the ``otelcol`` built by ``traintel stack install``, started on
free loopback ports); OTLP export with no collector listening (a refused port). Prints one
JSON object: per variant, the median, 90th percentile and max of ``finish()`` in ms, the first
trial's, and the warnings the process printed.

    python -m benchmarks.sweep_finish            # or: ... --trials 30 --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = ("no_export", "status_endpoint", "collector", "no_collector")

CHILD = r"""
import json, logging, statistics, sys, tempfile, time
import traintel
variant, trials, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
said = []
class Said(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING:
            said.append(record.getMessage()[:160])
for name in ("", "traintel", "traintel.export", "traintel.run.facade"):
    logging.getLogger(name).addHandler(Said())
options = {"progress": "off", "console_logs": False, "sample_interval": 0}
options.update({"no_export": {"otlp": False}, "status_endpoint": {"otlp": False, "http_port": 0},
                "collector": {"otlp": True}, "no_collector": {"otlp": True}}[variant])
times = []
with tempfile.TemporaryDirectory() as tmp:
    for trial in range(trials):
        run = traintel.init(project="sweep", dir=tmp, group="bench", **options)
        for step in range(steps):
            run.log(loss=1.0 / (step + 1))
        started = time.perf_counter()
        run.finish()
        times.append((time.perf_counter() - started) * 1000)
ordered = sorted(times)
print(json.dumps({"median_ms": statistics.median(times), "p90_ms": ordered[int(0.9 * len(ordered))],
                  "max_ms": max(times), "first_ms": times[0], "warnings": sorted(set(said)),
                  "warning_count": len(said)}))
"""


def _refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure(trials: int = 30, steps: int = 20) -> dict[str, object]:
    from traintel.stack import install, native

    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        stack = None
        if not install.missing_reason("otelcol"):
            stack = native.NativeStack(Path(tmp), ports=native.free_ports())
            stack.start("otelcol")
        try:
            for variant in VARIANTS:
                env = dict(os.environ)
                if variant == "collector":
                    if stack is None:
                        results[variant] = {"skipped": install.missing_reason("otelcol")}
                        continue
                    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = stack.endpoints["otlp_http"]
                elif variant == "no_collector":
                    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{_refused_port()}"
                done = subprocess.run(
                    [sys.executable, "-c", CHILD, variant, str(trials), str(steps)],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=600,
                    check=True,
                )
                results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        finally:
            if stack is not None:
                stack.stop("otelcol")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    print(json.dumps(measure(args.trials, args.steps), indent=2))
