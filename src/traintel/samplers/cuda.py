"""PyTorch CUDA caching-allocator telemetry, and the details of a CUDA out-of-memory error.

traintel never imports torch itself: the sampler reads ``torch.cuda`` only once the program has
imported torch and initialised CUDA, so it never creates a CUDA context, never initialises CUDA
before the program forks its data-loader workers, and costs nothing in a CPU-only program.

Peak memory: ``torch.cuda.reset_peak_memory_stats`` is never called, because it would reset the
figure the user's own code may be reading. ``traintel_cuda_memory_peak_allocated_bytes`` is the
largest ``allocated_bytes.all.peak`` seen since the sampler started: torch's counter since the
process began, kept by us across any reset the user makes. In the usual case (traintel starts
with the process) that is the peak since the run started; allocations made before the run, in
the same process, are included.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
from typing import Any

from traintel.samplers.base import Sample

log = logging.getLogger("traintel.samplers")

SUMMARY_LINES = 40

OOM_HINTS = [
    "Reduce the batch size (keep the effective batch with gradient accumulation).",
    "Enable gradient (activation) checkpointing to trade compute for activation memory.",
    "Use mixed precision (torch.autocast with bf16/fp16) to halve activation memory.",
    "If reserved-but-unallocated memory is large, the cache is fragmented: set "
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True before the program starts.",
    "torch.cuda.empty_cache() returns cached blocks to the driver (for other processes) but does "
    "not make more memory available to this one, and does not cure fragmentation.",
]

_UNITS = {"bytes": 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
_REQUEST = re.compile(r"Tried to allocate ([\d.]+) ?(bytes|B|KiB|MiB|GiB|TiB)")
_GPU = re.compile(r"\bGPU (\d+)")


def readings_from_stats(device: int, stats: dict[str, Any], peak: float) -> list[Sample]:
    """Catalog readings for one device from ``torch.cuda.memory_stats(device)``."""
    labels = {"device": str(device)}
    allocated = stats.get("allocated_bytes.all.current", 0)
    reserved = stats.get("reserved_bytes.all.current", 0)
    return [
        ("traintel_cuda_memory_allocated_bytes", float(allocated), labels),
        ("traintel_cuda_memory_reserved_bytes", float(reserved), labels),
        ("traintel_cuda_memory_peak_allocated_bytes", float(peak), labels),
        ("traintel_cuda_memory_reserved_unallocated_bytes", float(reserved - allocated), labels),
        ("traintel_cuda_alloc_retries_total", float(stats.get("num_alloc_retries", 0)), labels),
        ("traintel_cuda_ooms_total", float(stats.get("num_ooms", 0)), labels),
    ]


class CudaSampler:
    """Allocator figures for each CUDA device the process has allocated memory on."""

    name = "cuda"

    def __init__(self) -> None:
        self._peaks: dict[int, float] = {}

    def sample(self) -> list[Sample]:
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_initialized():
            return []
        readings: list[Sample] = []
        for device in range(torch.cuda.device_count()):
            stats = torch.cuda.memory_stats(device)
            if not stats.get("reserved_bytes.all.peak"):
                continue  # a device this process never allocated on
            peak = max(self._peaks.get(device, 0.0), stats.get("allocated_bytes.all.peak", 0))
            self._peaks[device] = peak
            readings.extend(readings_from_stats(device, stats, peak))
        return readings

    def close(self) -> None:
        pass


def cuda_sampler() -> CudaSampler | None:
    """A CUDA allocator sampler, or None (one info line) where torch cannot have CUDA memory."""
    torch = sys.modules.get("torch")
    if torch is None and importlib.util.find_spec("torch") is None:
        log.info("torch is not installed: CUDA allocator metrics off")
        return None
    if torch is not None and not torch.backends.cuda.is_built():  # True for ROCm builds too
        log.info("torch is built without CUDA: CUDA allocator metrics off")
        return None
    return CudaSampler()


def oom_details(exc: BaseException, device: int | None = None) -> dict[str, Any] | None:
    """What a CUDA out-of-memory error needs for diagnosis, or None for other errors.

    Looks along the exception's cause/context chain. Never raises: a figure that cannot be read
    is None. ``peak_allocated_since_start_bytes`` is torch's ``max_memory_allocated``: the peak
    since the process started (or since the program last called
    ``torch.cuda.reset_peak_memory_stats``); a per-step peak would need a reset on the hot path.
    """
    try:
        oom = _find_oom(exc)
        if oom is None:
            return None
        message = str(oom)
        details: dict[str, Any] = {"requested_bytes": _requested(message)}
        if device is None:
            match = _GPU.search(message)
            device = int(match.group(1)) if match else None
        details.update(_device_figures(device))
        details["hints"] = list(OOM_HINTS)
        return details
    except Exception:
        log.debug("oom_details failed", exc_info=True)
        return None


def _find_oom(exc: BaseException) -> BaseException | None:
    torch = sys.modules.get("torch")
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if (oom_type is not None and isinstance(current, oom_type)) or "CUDA out of memory" in str(
            current
        ):
            return current
        current = current.__cause__ or current.__context__
    return None


def _requested(message: str) -> int | None:
    match = _REQUEST.search(message)
    return round(float(match.group(1)) * _UNITS[match.group(2)]) if match else None


def _device_figures(device: int | None) -> dict[str, Any]:
    torch: Any = sys.modules.get("torch")
    ready = torch is not None and torch.cuda.is_initialized()
    if ready and device is None:
        device = _try(torch.cuda.current_device)
    figures: dict[str, Any] = {"device": device}
    if not ready or device is None:
        return {
            **figures,
            "capacity_bytes": None,
            "free_bytes": None,
            "allocated_bytes": None,
            "reserved_bytes": None,
            "reserved_unallocated_bytes": None,
            "peak_allocated_since_start_bytes": None,
            "num_alloc_retries": None,
            "num_ooms": None,
            "memory_summary": None,
        }
    cuda = torch.cuda
    stats = _try(lambda: cuda.memory_stats(device)) or {}
    allocated = stats.get("allocated_bytes.all.current")
    reserved = stats.get("reserved_bytes.all.current")
    free_total = _try(lambda: cuda.mem_get_info(device))
    summary = _try(lambda: cuda.memory_summary(device))
    return {
        **figures,
        "capacity_bytes": _try(lambda: cuda.get_device_properties(device).total_memory),
        "free_bytes": free_total[0] if free_total else None,
        "allocated_bytes": allocated,
        "reserved_bytes": reserved,
        "reserved_unallocated_bytes": None
        if reserved is None or allocated is None
        else reserved - allocated,
        "peak_allocated_since_start_bytes": stats.get("allocated_bytes.all.peak"),
        "num_alloc_retries": stats.get("num_alloc_retries"),
        "num_ooms": stats.get("num_ooms"),
        "memory_summary": "\n".join(summary.splitlines()[:SUMMARY_LINES]) if summary else None,
    }


def _try(read: Any) -> Any:
    try:
        return read()
    except Exception:
        return None
