"""Diagnostic reports: what a bug report or a 3 a.m. post-mortem needs, in one JSON document.

The same report is written as ``crash-report.json`` when a run fails and produced on demand by
``traintel report`` for a run directory or for the current machine.
"""

from __future__ import annotations

import os
import platform
import sys
import time
import uuid
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from . import __version__

if TYPE_CHECKING:
    from .run import Run

LAST_EVENTS = 50


def versions() -> dict[str, Any]:
    """Python, traintel, torch, CUDA and driver versions; torch only if already imported."""
    out: dict[str, Any] = {"python": sys.version.split()[0], "traintel": __version__,
                           "platform": platform.platform()}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = getattr(torch, "__version__", None)
        out["cuda"] = getattr(getattr(torch, "version", None), "cuda", None)
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
            out["nvidia_driver"] = driver.decode() if isinstance(driver, bytes) else driver
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no library: that is an answer, not an error
        out["nvidia_driver"] = None
    return out


def memory_state() -> dict[str, Any]:
    import psutil

    process = psutil.Process()
    virtual = psutil.virtual_memory()
    out: dict[str, Any] = {"process_rss_bytes": process.memory_info().rss,
                           "host_total_bytes": virtual.total, "host_available_bytes":
                           virtual.available}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        out["cuda"] = [{"device": i, "allocated_bytes": torch.cuda.memory_allocated(i),
                        "reserved_bytes": torch.cuda.memory_reserved(i),
                        "peak_allocated_bytes": torch.cuda.max_memory_allocated(i)}
                       for i in range(torch.cuda.device_count())]
    return out


def gpus() -> list[dict[str, Any]]:
    """Every GPU on the host with its current NVML readings (empty without a driver)."""
    from .samplers.gpu import gpu_sampler

    sampler = gpu_sampler(local_rank=None, all_gpus=True)
    if sampler is None:
        return []
    try:
        readings = sampler.sample()
    finally:
        sampler.close()
    by_gpu: dict[str, dict[str, Any]] = {}
    for name, value, labels in readings:
        entry = by_gpu.setdefault(labels.get("gpu", "?"), {
            "index": labels.get("gpu"), "uuid": labels.get("gpu_uuid"),
            "name": labels.get("gpu_name")})
        suffix = "_".join(v for k, v in sorted(labels.items())
                          if k not in ("gpu", "gpu_uuid", "gpu_name"))
        entry[name.removeprefix("traintel_gpu_") + (f"_{suffix}" if suffix else "")] = value
    return list(by_gpu.values())


def tail_events(run_dir: Path, n: int = LAST_EVENTS) -> list[dict[str, Any]]:
    """The last ``n`` parseable lines of the run record (torn lines skipped)."""
    path = run_dir / "events.jsonl"
    if not path.exists():
        return []
    out: deque[dict[str, Any]] = deque(maxlen=n)
    with open(path, "rb") as handle:
        for raw in handle:
            try:
                out.append(orjson.loads(raw))
            except orjson.JSONDecodeError:
                continue
    return list(out)


def build_report(run: Run | None = None, run_dir: Path | None = None) -> dict[str, Any]:
    """A diagnostic report for a live run, a finished run's directory, or (neither) this host."""
    report: dict[str, Any] = {
        "report_id": str(uuid.uuid4()), "created": time.time(), "versions": versions(),
        "host": {"hostname": platform.node(), "pid": os.getpid(), "cpus": os.cpu_count()},
        "gpus": gpus(), "memory": memory_state()}
    if run is not None:
        run_dir = run.dir
        report["run"] = run.status_dict()
        report["config"] = run.config
        report["errors"] = run.errors
    elif run_dir is not None:
        for name in ("summary.json", "config.json"):
            path = run_dir / name
            if path.exists():
                report[name.removesuffix(".json") if name != "summary.json" else "run"] = \
                    orjson.loads(path.read_bytes())
        report["errors"] = [e for e in _all_events(run_dir) if e.get("type") == "error"]
    if run_dir is not None:
        report["run_dir"] = str(run_dir)
        report["last_events"] = tail_events(run_dir)
    return report


def _all_events(run_dir: Path) -> list[dict[str, Any]]:
    return tail_events(run_dir, n=10**9)


def write_crash_report(run: Run) -> Path | None:
    from .summary import write_json

    path = run.dir / "crash-report.json"
    return path if write_json(path, build_report(run)) else None
