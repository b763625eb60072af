"""CPU cost of the sampler thread with the default samplers at the default interval (5 s).

Two measurements, both of the sampler thread's own CPU time (``time.thread_time`` read inside
the thread, in the ``on_readings`` callback, so the training threads' CPU is not counted):

- real: the thread at the default interval for ``--seconds`` (default 60); CPU seconds per
  minute = thread CPU between the first and last batch / the wall time between them * 60.
- scaled: the same samplers every 50 ms for a few seconds gives CPU per sample, extrapolated
  to the default interval (12 samples a minute). Quicker, and a check on the real figure.

It also times ``sample_now`` (wall, in this thread): on a GPU machine the NVML PCIe counters
wait about 20 ms each. If torch is installed and CUDA is available, CUDA is initialised with a
small tensor first so that the allocator sampler does real work, as in a training program.

Where an NVIDIA GPU is present, ``nvml`` breaks one NVML sample down by field (median wall and
CPU time of 20 rounds on the first GPU): the GPM activity field (two GPM samples and a metrics
query), the one field-values call shared by temperatures, remapping, NVLink and PCIe replays,
and the Xid poll. Without a GPU it says so.

    python benchmarks/sampler_cost.py --seconds 60
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from traintel.samplers import SamplerThread, default_samplers

RESULTS = Path(__file__).parent / "results" / "sampler_cost.json"
TARGET_PCT = 1.0


def samplers_for(run_dir: str) -> list:
    local_rank = os.environ.get("LOCAL_RANK")
    return default_samplers(run_dir, local_rank=int(local_rank) if local_rank else None)


def nvml_costs(samplers: list, rounds: int = 20) -> dict:
    """Median wall and CPU milliseconds of each NVML field of the first GPU, and of the Xid poll."""
    from traintel.samplers.gpu import NvmlSampler

    nvml = next((s for s in samplers if isinstance(s, NvmlSampler)), None)
    if nvml is None:
        return {"skipped": "no NVIDIA GPU here (NVML sampler not running)"}
    device = next(d for d in nvml.devices if d.parent is None)

    def timed(call) -> dict | str:
        walls, cpus = [], []
        for _ in range(rounds):
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                call()
            except nvml.nvml.NVMLError as exc:
                return f"not read: {exc}"
            walls.append(time.perf_counter() - start)
            cpus.append(time.thread_time() - cpu)
        return {"wall_ms": statistics.median(walls) * 1e3, "cpu_ms": statistics.median(cpus) * 1e3}

    fields = {}
    for name, read in device.fields.items():

        def call(read=read):
            device.values = None  # a field-values field pays for the shared call here
            read(nvml.nvml, device)

        fields[name] = timed(call)
    return {"gpu": device.title, "fields": fields, "xid_poll": timed(nvml.watcher.poll)}


def thread_cpu(run_dir: str, interval_s: float, seconds: float) -> dict:
    """Run a SamplerThread for ``seconds``; CPU of the thread between its first and last batch."""
    marks: list[tuple[float, float]] = []  # (wall, thread CPU) after each batch

    def on_readings(readings):
        marks.append((time.perf_counter(), time.thread_time()))

    thread = SamplerThread(samplers_for(run_dir), interval_s=interval_s, on_readings=on_readings)
    thread.start()
    time.sleep(seconds)
    thread.stop()
    (wall0, cpu0), (wall1, cpu1) = marks[0], marks[-1]
    return {
        "interval_s": interval_s,
        "batches": len(marks),
        "wall_s": wall1 - wall0,
        "thread_cpu_s": cpu1 - cpu0,
        "first_batch_cpu_s": cpu0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the real run")
    parser.add_argument("--interval", type=float, default=5.0)
    args = parser.parse_args()

    cuda = False
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            torch.zeros(1024, device="cuda")
            cuda = True
    with tempfile.TemporaryDirectory() as run_dir:
        probe = SamplerThread(samplers_for(run_dir))
        names = [s.name for s in probe.samplers]
        walls, counts = [], []
        for _ in range(20):
            start = time.perf_counter()
            counts.append(len(probe.sample_now()))
            walls.append(time.perf_counter() - start)
        nvml = nvml_costs(probe.samplers)
        probe.stop()
        scaled = thread_cpu(run_dir, 0.05, 5.0)
        per_sample = scaled["thread_cpu_s"] / (scaled["batches"] - 1)
        real = thread_cpu(run_dir, args.interval, args.seconds)

    per_min_real = real["thread_cpu_s"] / real["wall_s"] * 60
    per_min_scaled = per_sample * 60 / args.interval
    result = {
        "benchmark": "sampler_cost",
        "samplers": names,
        "cuda_initialised": cuda,
        "readings_per_sample": counts[-1],
        "sample_wall_ms_median": statistics.median(walls) * 1e3,
        "sample_wall_ms_max": max(walls) * 1e3,
        "real": {**real, "cpu_s_per_min": per_min_real, "pct_of_one_core": per_min_real / 60 * 100},
        "scaled": {
            **scaled,
            "cpu_s_per_sample": per_sample,
            "cpu_s_per_min_extrapolated": per_min_scaled,
            "pct_of_one_core": per_min_scaled / 60 * 100,
        },
        "target_pct_of_one_core": TARGET_PCT,
        "nvml": nvml,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"samplers: {', '.join(names)}; {counts[-1]} readings per sample; sample wall "
        f"{result['sample_wall_ms_median']:.2f} ms median, "
        f"{result['sample_wall_ms_max']:.2f} ms max"
    )
    print(
        f"real ({real['wall_s']:.0f} s at {args.interval:g} s, {real['batches']} batches): "
        f"{per_min_real * 1e3:.1f} ms CPU per minute = {result['real']['pct_of_one_core']:.4f} % "
        "of one core"
    )
    print(
        f"scaled ({scaled['batches']} batches at 50 ms): {per_sample * 1e3:.3f} ms CPU per "
        f"sample -> {per_min_scaled * 1e3:.1f} ms per minute = "
        f"{result['scaled']['pct_of_one_core']:.4f} % of one core (target < {TARGET_PCT} %)"
    )
    if "fields" in nvml:
        print(f"NVML on {nvml['gpu']} (median ms wall / CPU):")
        for name, cost in {**nvml["fields"], "xid_poll": nvml["xid_poll"]}.items():
            print(
                f"  {name}: "
                + (
                    cost
                    if isinstance(cost, str)
                    else f"{cost['wall_ms']:.3f} / {cost['cpu_ms']:.3f}"
                )
            )
    else:
        print(f"NVML: {nvml['skipped']}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
