"""A synchronous job: do traintel's pauses slow down N ranks that meet every step?

N processes (each its own interpreter, as torchrun starts them) form a gloo process group and
meet every step at an ``all_reduce`` of a one-element tensor, as DDP's gradient all-reduce does.
Each step holds the GIL for ``work_ms`` (busy-wait), logs the 8 metrics, all-reduces, then
sleeps until ``1 / rate_hz`` after the step began. Every step waits for the slowest rank, so a
pause on any rank is felt by the job. Reported from rank 0: the job's step time (start to the end
of the all-reduce) p50/p99/max, and the job's total slowdown: its wall time for the same steps
over the control's, the scenarios interleaved in rounds.

- ``control``: the job without traintel;
- ``defaults``: traintel at its defaults (a span every 100 steps, metrics every 15 s) exporting
  to a working collector (``harness.collector("healthy")``);
- ``stress``: a span every step, metrics and spans exported every second, to a black hole (a
  port that accepts connections and never answers: every export waits for its timeout);
- ``stress_unaligned``: ``stress`` with each rank's metric collections moved to a random phase
  of its own, as the SDK's periodic reader schedules them: what aligning the collections across
  ranks (``traintel.export.aligned``) saves.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from typing import Any

from benchmarks import harness

EXPORT_INTERVAL_MS = 1000
#: scenario -> (traintel on, collector kind or None, stressed, collections at a random phase)
SCENARIOS: dict[str, tuple[bool, str | None, bool, bool]] = {
    "control": (False, None, False, False),
    "defaults": (True, "healthy", False, False),
    "stress": (True, "blackhole", True, False),
    "stress_unaligned": (True, "blackhole", True, True),
}


def rank_loop(
    rank: int,
    world: int,
    port: int,
    steps: int,
    rate_hz: float,
    work_ms: float,
    observe: bool,
    stress: bool,
    unaligned: bool,
) -> dict[str, Any]:
    """One rank (runs in its own process): the paced, all-reducing loop. Rank 0 returns every
    step's time in ms and the loop's wall time."""
    import random

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    if unaligned:  # the SDK's schedule: this process's own phase
        from traintel.export import aligned

        phase = random.Random(os.getpid()).uniform(0, EXPORT_INTERVAL_MS / 1000)
        boundary = aligned.next_boundary
        aligned.next_boundary = lambda now, interval: boundary(now - phase, interval) + phase
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    period, work, clock = 1.0 / rate_hz, work_ms / 1e3, time.perf_counter
    tensor = torch.zeros(1)
    with tempfile.TemporaryDirectory(prefix="traintel-bench-") as tmp:
        run = (
            harness.traintel_run(tmp, otlp=True, step_span_every=1 if stress else 100)
            if observe
            else None
        )
        batches = run.track(range(steps)) if run else range(steps)
        dist.all_reduce(tensor)  # every rank ready
        step_ms = []
        began = clock()
        for i in batches:
            start = clock()
            while clock() < start + work:
                pass
            if run:
                run.log(**harness.step_values(i))
            dist.all_reduce(tensor)
            end = clock()
            step_ms.append((end - start) * 1e3)
            time.sleep(max(0.0, start + period - clock()))
        wall_s = clock() - began
        dist.barrier()
        if run:
            run.finish()
    dist.destroy_process_group()
    return {"step_ms": step_ms, "wall_s": wall_s} if rank == 0 else {"wall_s": wall_s}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def job(world: int, env: dict[str, str], timeout: float, **kwargs: Any) -> dict[str, Any]:
    """``world`` ranks of ``rank_loop``; rank 0's result."""
    port = _free_port()
    procs = []
    for rank in range(world):
        rank_env = {
            **os.environ,
            **env,
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.child",
                    "benchmarks.job:rank_loop",
                    json.dumps({"rank": rank, "world": world, "port": port, **kwargs}),
                ],
                cwd=harness.REPO,
                env=rank_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, (_, err) in zip(procs, outputs):
        if proc.returncode != 0:
            raise RuntimeError(f"a rank exited {proc.returncode}:\n{err[-4000:]}")
    return json.loads(outputs[0][0].strip().splitlines()[-1])


def run(
    seconds: float,
    rounds: int,
    ranks: list[int],
    rate_hz: float = 100.0,
    work_ms: float = 1.0,
    scenarios: list[str] | None = None,
) -> dict[str, Any]:
    """``seconds`` of steps per scenario and world size in all, split over ``rounds``."""
    names = scenarios or list(SCENARIOS)
    steps = max(10, int(seconds / rounds * rate_hz))
    table: dict[str, dict[str, Any]] = {}
    for world in ranks:
        rows = {name: {"step_ms": [], "wall_s": []} for name in names}
        for _, name in harness.interleaved(names, rounds):
            observe, kind, stress, unaligned = SCENARIOS[name]
            with harness.collector(kind) if kind else nullcontext(("", "none")) as (url, what):
                env = harness.otlp_env(url, EXPORT_INTERVAL_MS if stress else None) if kind else {}
                out = job(
                    world,
                    env,
                    timeout=120 + 10 * seconds,
                    steps=steps,
                    rate_hz=rate_hz,
                    work_ms=work_ms,
                    observe=observe,
                    stress=stress,
                    unaligned=unaligned,
                )
            rows[name]["step_ms"] += out["step_ms"]
            rows[name]["wall_s"].append(out["wall_s"])
            rows[name]["collector"] = what
        control_wall = sum(rows["control"]["wall_s"]) if "control" in rows else None
        noise = (
            (max(rows["control"]["wall_s"]) / min(rows["control"]["wall_s"]) - 1)
            if "control" in rows
            else None
        )
        for name, row in rows.items():
            times = row.pop("step_ms")
            table[f"{world}/{name}"] = {
                "ranks": world,
                "scenario": name,
                "collector": row["collector"],
                "steps": len(times),
                "p50_ms": harness.quantile(times, 0.5),
                "p99_ms": harness.quantile(times, 0.99),
                "max_ms": max(times),
                "wall_s": row["wall_s"],
                "slowdown": sum(row["wall_s"]) / control_wall - 1 if control_wall else None,
                "control_noise": noise,
            }
    targets = []
    for key, row in table.items():
        if row["scenario"] == "defaults" and row["slowdown"] is not None:
            allowed = max(0.01, row["control_noise"] or 0.0)
            targets.append(
                harness.target(
                    f"{row['ranks']} ranks, defaults: job slowdown <= max(1 %, control's run-to-run "
                    f"spread {100 * (row['control_noise'] or 0):.1f} %)",
                    row["slowdown"],
                    row["slowdown"] <= allowed,
                )
            )
    return {
        "seconds": seconds,
        "rounds": rounds,
        "rate_hz": rate_hz,
        "work_ms": work_ms,
        "steps_per_round": steps,
        "export_interval_ms": EXPORT_INTERVAL_MS,
        "jobs": table,
        "targets": targets,
    }


def render(result: dict[str, Any]) -> list[str]:
    lines = [
        "| ranks | scenario | steps (rank 0) | step p50 | p99 | max | total slowdown | collector |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["jobs"].values():
        slowdown = "" if row["slowdown"] is None else f"{100 * row['slowdown']:+.1f} %"
        lines.append(
            f"| {row['ranks']} | {row['scenario']} | {row['steps']} | "
            f"{row['p50_ms']:.2f} ms | {row['p99_ms']:.2f} ms | {row['max_ms']:.1f} ms | "
            f"{slowdown} | {row['collector']} |"
        )
    noise = {
        row["ranks"]: row["control_noise"]
        for row in result["jobs"].values()
        if row["control_noise"] is not None
    }
    return lines + [
        "",
        f"{result['rate_hz']:g} steps/s, {result['work_ms']:g} ms of GIL-holding "
        f"work per step on every rank, a gloo all_reduce of one float per step; "
        f"{result['steps_per_round']} steps per job, {result['rounds']} "
        f"interleaved rounds. Slowdown: the scenario's wall time over the "
        f"control's, same rounds; the control's own spread between rounds: "
        + ", ".join(f"{100 * v:.1f} % at {k} ranks" for k, v in noise.items())
        + f". Stress: a span every step, export every "
        f"{result['export_interval_ms']} ms.",
    ]


BENCHMARK = harness.Benchmark(
    name="job",
    title="A synchronous job: N ranks meeting at a gloo all_reduce every step (100 steps/s)",
    profiles={
        "full": {"seconds": 60.0, "rounds": 4, "ranks": [2, 4, 8]},
        "quick": {"seconds": 10.0, "rounds": 2, "ranks": [2, 4, 8]},
        "tiny": {"seconds": 0.2, "rounds": 1, "ranks": [2], "scenarios": ["control", "stress"]},
    },
    run=run,
    render=render,
)
