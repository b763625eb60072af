"""Process and host telemetry through psutil: CPU, memory, run-directory disk, loader workers."""

from __future__ import annotations

import os
import time
from typing import Any

import psutil

from traintel.samplers.base import Sample

#: Child processes that are multiprocessing or torch.compile helpers, not data-loader workers.
_HELPERS = (
    "multiprocessing.resource_tracker",
    "multiprocessing.forkserver",
    "torch._inductor.compile_worker",
)


class SystemSampler:
    """CPU figures are deltas between samples (the first covers the time since construction).

    Host CPU is computed from ``psutil.cpu_times`` deltas of our own rather than
    ``psutil.cpu_percent``, whose between-calls state is shared with the user's code.
    """

    name = "system"

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self.process = psutil.Process()
        self._last_process = (time.monotonic(), _busy(self.process.cpu_times()))
        self._last_host = _host_times()

    def sample(self) -> list[Sample]:
        now, busy = time.monotonic(), _busy(self.process.cpu_times())
        then, busy_then = self._last_process
        self._last_process = (now, busy)
        host = _host_times()
        host_busy = host[0] - self._last_host[0]
        host_total = host[1] - self._last_host[1]
        self._last_host = host
        memory = psutil.virtual_memory()
        disk = psutil.disk_usage(_existing(self.run_dir))
        readings: list[Sample] = [
            ("traintel_process_memory_rss_bytes", float(self.process.memory_info().rss), {}),
            ("traintel_host_memory_used_bytes", float(memory.total - memory.available), {}),
            ("traintel_host_memory_total_bytes", float(memory.total), {}),
            ("traintel_disk_used_bytes", float(disk.used), {}),
            ("traintel_disk_total_bytes", float(disk.total), {}),
            ("traintel_dataloader_workers", float(self._workers()), {}),
        ]
        if now > then:  # process.cpu.utilization: over the CPUs this process may run on
            readings.append(
                (
                    "traintel_process_cpu_utilization_ratio",
                    (busy - busy_then) / (now - then) / _usable_cpus(),
                    {},
                )
            )
        if host_total > 0:
            readings.append(("traintel_host_cpu_utilization_ratio", host_busy / host_total, {}))
        return readings

    def close(self) -> None:
        pass

    def _workers(self) -> int:
        """Live direct children, less multiprocessing/compile helpers.

        A forked DataLoader worker cannot be told from other forked children by name or
        command line, so any other child process the program starts is counted too.
        """
        count = 0
        for child in self.process.children():
            try:
                if child.status() == psutil.STATUS_ZOMBIE:
                    continue
                cmdline = " ".join(child.cmdline())
            except psutil.Error:
                continue  # exited while we looked
            if not any(helper in cmdline for helper in _HELPERS):
                count += 1
        return count


def _usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: taskset, SLURM's binding), else the
    host's logical CPUs."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return psutil.cpu_count() or 1


def _busy(times: Any) -> float:
    return float(times.user + times.system)


def _host_times() -> tuple[float, float]:
    """(busy, total) CPU seconds of the host; idle and iowait count as not busy."""
    times = psutil.cpu_times()
    total = sum(times)
    # guest time is already counted in user time on Linux
    total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    return total - times.idle - getattr(times, "iowait", 0.0), total


def _existing(path: str) -> str:
    """The path, or its nearest existing parent (the run directory may not exist yet)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path
