"""Diagnostic reports: what a bug report or a 3 a.m. post-mortem needs, in one JSON document.

The same report is written as ``crash-report.json`` when a run fails and produced on demand by
``traintel report`` for a run directory or for the current machine. Each section is gathered on
its own: one that fails (a wedged driver, a broken record) says why and the others still arrive.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

from traintel.core import catalog, env
from traintel.core.redact import Redactor
from traintel.core.state import RunState
from traintel.record.files import read_json, write_json
from traintel.record.reader import RecordNotFound, Records, last_records, rank_dirs
from traintel.version import __version__

LAST_EVENTS = 50
#: environment variables that explain GPU, distributed and export behaviour (secret-looking
#: names among them are redacted all the same)
_ENV_PREFIXES = ("CUDA_", "NCCL_", "PYTORCH_", "TORCH_", "TRAINTEL_", "OMP_NUM_THREADS")
_ENV_NAMES = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "SLURM_JOB_ID",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
)


def versions() -> dict[str, Any]:
    """Python, traintel, torch, CUDA and driver versions. torch is not imported for this: its
    installed version is read from package metadata when the program has not imported it."""
    out: dict[str, Any] = {
        "python": sys.version.split()[0],
        "traintel": __version__,
        "platform": platform.platform(),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = getattr(torch, "__version__", None)
        out["torch_cuda"] = getattr(getattr(torch, "version", None), "cuda", None)
    else:
        try:
            out["torch"] = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            out["torch"] = None
        out["torch_cuda"] = None
    out["nvidia_driver"] = out["cuda_driver"] = None
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no driver, no library: that is an answer, not an error
        return out
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        out["nvidia_driver"] = driver.decode() if isinstance(driver, bytes) else driver
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        out["cuda_driver"] = f"{cuda // 1000}.{cuda % 1000 // 10}"
    finally:
        pynvml.nvmlShutdown()
    return out


def host() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "cpus": os.cpu_count(),
        "python_executable": sys.executable,
        "cwd": os.getcwd(),
    }


def environment() -> dict[str, str]:
    """The variables that explain GPU, distributed and export behaviour (redacted with the rest
    of the report)."""
    return dict(
        sorted(
            (k, v)
            for k, v in env.snapshot().items()
            if k.startswith(_ENV_PREFIXES) or k in _ENV_NAMES
        )
    )


def memory_state() -> dict[str, Any]:
    """Host and process memory, and the CUDA allocator's figures if CUDA is already in use
    (a report never creates a CUDA context)."""
    import psutil

    virtual = psutil.virtual_memory()
    out: dict[str, Any] = {
        "process_rss_bytes": psutil.Process().memory_info().rss,
        "host_total_bytes": virtual.total,
        "host_available_bytes": virtual.available,
    }
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        out["cuda"] = [
            {
                "device": i,
                "allocated_bytes": torch.cuda.memory_allocated(i),
                "reserved_bytes": torch.cuda.memory_reserved(i),
                "peak_allocated_bytes": torch.cuda.max_memory_allocated(i),
            }
            for i in range(torch.cuda.device_count())
        ]
    return out


def gpus() -> list[dict[str, Any]]:
    """Every GPU on the host with its current NVML readings (empty without a driver)."""
    from traintel.samplers.gpu import gpu_sampler

    sampler = gpu_sampler(local_rank=None, all_gpus=True)
    if sampler is None:
        return []
    try:
        readings = sampler.sample()
    finally:
        sampler.close()
    by_gpu: dict[str, dict[str, Any]] = {}
    naming = set(catalog.GPU_LABELS)
    for name, value, labels in readings:
        entry = by_gpu.setdefault(
            labels.get("gpu", "?"),
            {
                "index": labels.get("gpu"),
                "uuid": labels.get("uuid"),
                "name": labels.get("model_name"),
                "pci_bus_id": labels.get("pci_bus_id"),
            },
        )
        if name == "traintel_gpu_info":
            entry["driver_version"] = labels.get("driver_version")
            continue
        suffix = "_".join(v for k, v in sorted(labels.items()) if k not in naming)
        entry[name.removeprefix("traintel_gpu_") + (f"_{suffix}" if suffix else "")] = value
    return list(by_gpu.values())


class LiveSnapshot(TypedDict):
    """What a live run adds to its report (a crash report is written while the run ends)."""

    run: Mapping[str, object]
    summary: Mapping[str, object] | None
    config: Mapping[str, object]
    readings: list[dict[str, object]]
    errors: Sequence[Mapping[str, object]]


def snapshot(
    status: Mapping[str, object],
    summary: Mapping[str, object] | None,
    config: Mapping[str, object],
    state: RunState,
    errors: Sequence[Mapping[str, object]],
) -> LiveSnapshot:
    """A live run's status, summary, config, latest hardware readings and errors."""
    return {
        "run": status,
        "summary": summary,
        "config": config,
        "errors": errors,
        "readings": [
            {"name": name, "labels": dict(labels), "value": value}
            for (name, labels), value in list(state.readings.items())
        ],
    }


def build_report(
    live: LiveSnapshot | None = None, run_dir: Path | None = None, redactor: Redactor | None = None
) -> dict[str, Any]:
    """A diagnostic report for a live run (with its directory), a run's directory, or (neither)
    this machine, redacted whole by ``redactor`` (the run's; by default one that knows the
    environment's secrets).

    Host sections describe the machine making the report; for a run directory read elsewhere,
    ``run`` (its run_start line) says where the run itself ran.
    """
    report: dict[str, Any] = {
        "report_id": str(uuid.uuid4()),
        "created": time.time(),
        "versions": _safe(versions),
        "host": _safe(host),
        "environment": _safe(environment),
        "gpus": _safe(gpus),
        "memory": _safe(memory_state),
    }
    if live is not None:
        report.update(live)
    elif run_dir is not None:
        report.update(_from_directory(run_dir))
    if run_dir is not None:
        report["run_dir"] = str(run_dir)
        report["last_events"] = _safe(lambda: last_records(Records(run_dir), LAST_EVENTS))
    redacted: dict[str, Any] = (redactor or Redactor.for_environment()).deep(report)
    return redacted


def _from_directory(run_dir: Path) -> dict[str, Any]:
    """Run, summary, config and every error from what a run left on disk."""
    meta = (rank_dirs(run_dir) or [run_dir])[0]
    out: dict[str, Any] = {
        "run": None,
        "summary": read_json(meta / "summary.json"),
        "config": (read_json(meta / "config.json") or {}).get("config"),
        "errors": [],
    }
    try:
        records = Records(run_dir)
    except RecordNotFound:
        return out
    for record in records:
        if record.get("type") == "run_start" and out["run"] is None:
            out["run"] = record
        elif record.get("type") == "error":
            out["errors"].append(record)
    return out


def _safe(section: Callable[[], Any]) -> Any:
    try:
        return section()
    except Exception as exc:
        return {"unavailable": f"{type(exc).__name__}: {exc}"}


def write_crash_report(run_dir: Path, live: LiveSnapshot, redactor: Redactor) -> Path | None:
    """crash-report.json in the run's directory: the report of the run that just failed."""
    path = run_dir / "crash-report.json"
    return path if write_json(path, build_report(live, run_dir, redactor)) else None
