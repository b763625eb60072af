"""``traintel logs summary`` against ``jq`` counting records by type, on a large synthetic record.

Writes a run record of about ``--size-mb`` MiB in the documented format (rotated at 256 MiB like
the core's writer) in a temporary directory, reads it once to warm the page cache, then times:
the in-process summary, the CLI (interpreter start included), and jq two ways, with the faster jq
as the baseline; each the best of ``--repeat`` runs. The summary does strictly more work than jq
(levels, losses, throughput, evaluation metrics), and its counts by type are checked against jq's.

    python benchmarks/logs_summary.py --size-mb 1024
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from traintel.record.reader import Records
from traintel.reports import analysis

RESULTS = Path(__file__).parent / "results" / "logs_summary.json"


def generate(directory: Path, size_mb: int, rotate_mb: int = 256) -> int:
    """A run of mostly steps with evals, logs, checkpoints, milestones and the odd error; returns
    the line count."""
    rng = random.Random(0)
    directory.mkdir(parents=True)
    current, limit = directory / "events.jsonl", rotate_mb << 20
    out, written, total, lines, ts, step = open(current, "wb"), 0, 0, 0, 1.7e9, 0
    base = {"level": "info", "run": "bench", "rank": 0}

    def write(record: dict) -> None:
        nonlocal out, written, total, lines
        line = orjson.dumps(record) + b"\n"
        out.write(line)
        written, total, lines = written + len(line), total + len(line), lines + 1
        if written >= limit:  # rotate as the core's writer does: .N -> .N+1, live -> .1
            out.close()
            rotated = (int(p.suffix[1:]) for p in directory.glob("events.jsonl.*"))
            for n in sorted(rotated, reverse=True):
                (directory / f"events.jsonl.{n}").rename(directory / f"events.jsonl.{n + 1}")
            current.rename(directory / "events.jsonl.1")
            out, written = open(current, "wb"), 0

    write(
        {
            "ts": ts,
            "type": "run_start",
            **base,
            "project": "bench",
            "name": "synthetic",
            "host": "node1",
            "pid": 1,
            "world_size": 1,
            "local_rank": 0,
            "traintel_version": "0.1.0",
            "total_epochs": 10,
            "total_steps": None,
        }
    )
    write(
        {
            "ts": ts,
            "type": "config",
            **base,
            "config": {"lr": 3e-4, "batch_size": 64},
            "config_hash": "sha256:0",
            "seed": 0,
        }
    )
    while total < size_mb << 20:
        step += 1
        ts += 0.05 + rng.random() * 0.01
        loss = 2.0 / (1 + step / 1000) + rng.random() * 0.05
        write(
            {
                "ts": ts,
                "type": "step",
                **base,
                "step": step,
                "epoch": step // 10000,
                "step_s": 0.05,
                "data_wait_s": 0.004,
                "metrics": {
                    "loss": "nan" if step % 50000 == 0 else loss,
                    "lr": 3e-4,
                    "grad_norm": 1.0 + rng.random(),
                    "samples": 64,
                    "tokens": 65536,
                },
            }
        )
        if step % 100 == 0:
            write(
                {
                    "ts": ts,
                    "type": "log",
                    **base,
                    "logger": "train",
                    "message": f"step {step} done",
                    "trace_id": None,
                    "span_id": None,
                    "fields": {"loss": loss},
                }
            )
        if step % 1000 == 0:
            write(
                {
                    "ts": ts,
                    "type": "eval",
                    **base,
                    "step": step,
                    "epoch": step // 10000,
                    "metrics": {"val_loss": loss},
                    "is_best": {"val_loss": True},
                    "best": {"val_loss": loss},
                }
            )
            write(
                {
                    "ts": ts,
                    "type": "event",
                    **base,
                    "event": "checkpoint",
                    "fields": {"path": f"/ckpt/{step}.pt"},
                    "step": step,
                    "epoch": step // 10000,
                }
            )
        if step % 20000 == 0:
            write(
                {
                    "ts": ts,
                    "type": "error",
                    **base,
                    "level": "error",
                    "error_type": "data",
                    "severity": "medium",
                    "exc_type": "ValueError",
                    "message": "bad sample",
                    "operation": "data",
                    "traceback": "Traceback ...",
                    "context": {},
                    "hints": [],
                    "step": step,
                    "epoch": step // 10000,
                    "trace_id": None,
                    "span_id": None,
                }
            )
    write(
        {
            "ts": ts,
            "type": "run_end",
            **base,
            "status": "finished",
            "duration_s": ts - 1.7e9,
            "steps": step,
        }
    )
    out.close()
    return lines


def best(label: str, fn, repeat: int) -> tuple[float, object]:
    """The fastest of ``repeat`` runs (the machine may be shared) and the result."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    print(f"{label}: {min(times):.2f}s (of {', '.join(f'{t:.2f}' for t in times)})", flush=True)
    return min(times), result


def run(command: list[str], shell: bool = False) -> str:
    return subprocess.run(
        command if not shell else " ".join(command),
        shell=shell,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="record size (default 1024)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each, best kept (default 1)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    jq = shutil.which("jq")
    if jq is None:
        sys.exit("jq is needed for the baseline: apt-get install -y jq")

    with tempfile.TemporaryDirectory(prefix="traintel-bench-") as tmp:
        run_dir = Path(tmp) / "bench"
        gen_s, lines = best("generate", lambda: generate(run_dir, args.size_mb), 1)
        records = Records(run_dir)
        files = [str(f) for f in records.streams[0]]
        size = sum(os.path.getsize(f) for f in files)
        print(
            f"generated {size / 2**20:.0f} MiB, {lines:,} lines in {len(files)} files "
            f"({gen_s:.1f}s)",
            flush=True,
        )
        run(["cat", *files, ">", "/dev/null"], shell=True)  # warm the page cache for everyone

        n = args.repeat
        ours_s, summary = best("summarize (in process)", lambda: analysis.summarize(records), n)
        cli = [
            sys.executable,
            "-c",
            "from traintel.cli import main; main()",
            "logs",
            "summary",
            str(run_dir),
            "--format",
            "json",
        ]
        cli_s, out = best("traintel logs summary (CLI)", lambda: run(cli), n)
        reduce_s, jq_counts = best(
            "jq reduce",
            lambda: run([jq, "-n", "-c", "reduce inputs as $l ({}; .[$l.type] += 1)", *files]),
            n,
        )
        uniq_s, _ = best(
            "jq | sort | uniq -c",
            lambda: run([jq, "-c", ".type", *files, "|", "sort", "|", "uniq", "-c"], shell=True),
            n,
        )

    counts = summary["by_type"]
    if counts != json.loads(jq_counts) or counts != json.loads(out)["by_type"]:
        sys.exit(f"counts differ: jq {jq_counts.strip()} vs traintel {counts}")
    jq_s = min(reduce_s, uniq_s)
    result = {
        "size_mib": round(size / 2**20, 1),
        "lines": lines,
        "files": len(files),
        "traintel_in_process_s": round(ours_s, 3),
        "traintel_cli_s": round(cli_s, 3),
        "jq_reduce_s": round(reduce_s, 3),
        "jq_sort_uniq_s": round(uniq_s, 3),
        "jq_best_s": round(jq_s, 3),
        "ratio_jq_over_traintel_cli": round(jq_s / cli_s, 2),
        "mib_per_s_traintel_cli": round(size / 2**20 / cli_s, 1),
        "jq_version": run([jq, "--version"]).strip(),
        "python": platform.python_version(),
        "orjson": orjson.__version__,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "repeat": n,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"traintel: {result['ratio_jq_over_traintel_cli']}x jq's speed (CLI, start-up included)")


if __name__ == "__main__":
    main()
