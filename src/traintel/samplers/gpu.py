"""NVIDIA GPU telemetry through NVML (``nvidia-ml-py``, module ``pynvml``), imported lazily.

Only the GPUs this process uses are sampled by default (``CUDA_VISIBLE_DEVICES`` and the local
rank), so that eight ranks on one host do not each report all eight GPUs. NVML's answer decides
what a failed read means: a field the GPU or driver does not support is dropped for that GPU at
once; a passing failure (a timeout, "unknown") skips that field for one sample and drops it only
after ``MAX_FIELD_FAILURES`` in a row; a GPU that is lost (fallen off the bus, needing a reset) is
reported once as a warning and no longer sampled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import env
from .base import Reading

log = logging.getLogger("traintel.samplers")

#: NVML errors meaning "this GPU or driver will never give this field" (names from nvml.h).
UNSUPPORTED_ERRORS = ("NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_NO_PERMISSION",
                      "NVML_ERROR_FUNCTION_NOT_FOUND", "NVML_ERROR_INVALID_ARGUMENT",
                      "NVML_ERROR_ARGUMENT_VERSION_MISMATCH", "NVML_ERROR_DEPRECATED")
#: NVML errors meaning the GPU itself is gone until it is reset.
LOST_ERRORS = ("NVML_ERROR_GPU_IS_LOST", "NVML_ERROR_RESET_REQUIRED", "NVML_ERROR_GPU_NOT_FOUND")
#: Passing failures of one field in a row after which it is dropped for the rest of the run.
MAX_FIELD_FAILURES = 3

#: Clock event ("throttle") reason bits from nvml.h, idle (0x1) left out on purpose: an idle GPU
#: is not a slow one. Bits not named here are reported together as ``other``.
THROTTLE_REASONS: dict[int, str] = {
    0x2: "applications_clocks",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
    0x100: "display_clock",
    0x200: "board_limit",
    0x400: "reliability",
}
_KNOWN_BITS = sum(THROTTLE_REASONS) | 0x1


def decode_throttle(mask: int) -> dict[str, float]:
    """1.0 for each active known reason, 0.0 for the inactive ones, ``other`` for unknown bits."""
    reasons = {name: float(bool(mask & bit)) for bit, name in THROTTLE_REASONS.items()}
    reasons["other"] = float(bool(mask & ~_KNOWN_BITS))
    return reasons


def select_gpus(uuids: list[str], visible: str | None, local_rank: int | None,
                all_gpus: bool = False) -> list[int]:
    """NVML indexes of the GPUs this process uses.

    ``uuids`` are the NVML UUIDs by NVML index. ``visible`` is ``CUDA_VISIBLE_DEVICES``: entries
    are indexes or (prefixes of) ``GPU-`` UUIDs; as in CUDA, the list ends at the first entry that
    names no GPU; MIG instances are skipped. With ``local_rank`` set and several GPUs visible, the
    rank's own GPU (the ``local_rank``-th visible one, as ``cuda:<local_rank>``) is chosen.
    """
    if all_gpus or visible is None:
        chosen = list(range(len(uuids)))
    else:
        chosen = []
        for entry in (e.strip() for e in visible.split(",")):
            if not entry or entry.startswith("MIG-"):
                continue
            index = _resolve(entry, uuids)
            if index is None:
                break
            if index not in chosen:
                chosen.append(index)
    if all_gpus or local_rank is None or len(chosen) <= 1:
        return chosen
    return [chosen[local_rank]] if 0 <= local_rank < len(chosen) else chosen


def _resolve(entry: str, uuids: list[str]) -> int | None:
    if entry.lstrip("-").isdigit():
        index = int(entry)
        return index if 0 <= index < len(uuids) else None
    prefix = entry if entry.startswith("GPU-") else "GPU-" + entry
    matches = [i for i, uuid in enumerate(uuids) if uuid.startswith(prefix)]
    return matches[0] if len(matches) == 1 else None


@dataclass
class _Gpu:
    index: int
    handle: Any
    labels: dict[str, str]
    dropped: set[str] = field(default_factory=set)  # fields not read again
    failures: dict[str, int] = field(default_factory=dict)  # passing failures in a row


def _memory(nvml: Any, handle: Any) -> list[Reading]:
    info = nvml.nvmlDeviceGetMemoryInfo(handle)
    return [("traintel_gpu_memory_used_bytes", info.used, {}),
            ("traintel_gpu_memory_total_bytes", info.total, {})]


def _utilization(nvml: Any, handle: Any) -> list[Reading]:
    rates = nvml.nvmlDeviceGetUtilizationRates(handle)  # percent
    return [("traintel_gpu_utilization_ratio", rates.gpu / 100.0, {}),
            ("traintel_gpu_memory_utilization_ratio", rates.memory / 100.0, {})]


def _throttle(nvml: Any, handle: Any) -> list[Reading]:
    # The "event" name replaced the deprecated "throttle" one (driver 535); same bits.
    read = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
        nvml.nvmlDeviceGetCurrentClocksThrottleReasons
    return [("traintel_gpu_throttled", active, {"reason": reason})
            for reason, active in decode_throttle(read(handle)).items()]


def _pcie(nvml: Any, handle: Any) -> list[Reading]:
    # NVML reports KB/s (read as KiB/s, as nvidia-smi does), averaged over a 20 ms window.
    read = nvml.nvmlDeviceGetPcieThroughput
    return [("traintel_gpu_pcie_bytes_per_second",
             read(handle, nvml.NVML_PCIE_UTIL_TX_BYTES) * 1024.0, {"direction": "tx"}),
            ("traintel_gpu_pcie_bytes_per_second",
             read(handle, nvml.NVML_PCIE_UTIL_RX_BYTES) * 1024.0, {"direction": "rx"})]


def _scalar(metric: str, read: Callable[[Any, Any], float]) -> Callable[[Any, Any], list[Reading]]:
    return lambda nvml, handle: [(metric, read(nvml, handle), {})]


#: Field name -> reader(nvml, handle) returning (metric, value, extra labels) tuples.
FIELDS = {
    "memory": _memory,
    "utilization": _utilization,
    "power": _scalar("traintel_gpu_power_watts",  # mW
                     lambda n, h: n.nvmlDeviceGetPowerUsage(h) / 1000.0),
    "power_limit": _scalar("traintel_gpu_power_limit_watts",  # mW
                           lambda n, h: n.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0),
    "energy": _scalar("traintel_gpu_energy_joules_total",  # mJ
                      lambda n, h: n.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0),
    "temperature": _scalar("traintel_gpu_temperature_celsius",
                           lambda n, h: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)),
    "sm_clock": _scalar("traintel_gpu_sm_clock_hertz",  # MHz
                        lambda n, h: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM) * 1e6),
    "throttle": _throttle,
    "ecc": _scalar("traintel_gpu_ecc_errors_uncorrected_total",
                   lambda n, h: n.nvmlDeviceGetTotalEccErrors(
                       h, n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_VOLATILE_ECC)),
    "pcie": _pcie,
}


class NvmlSampler:
    """Reads the NVML fields of each selected GPU; owns one ``nvmlInit`` (closed by ``close``)."""

    name = "gpu"

    def __init__(self, nvml: Any, gpus: list[_Gpu]) -> None:
        self.nvml = nvml
        self.gpus = gpus
        self._unsupported = _codes(nvml, UNSUPPORTED_ERRORS)
        self._lost = _codes(nvml, LOST_ERRORS)

    def sample(self) -> list[Reading]:
        readings: list[Reading] = []
        for gpu in list(self.gpus):
            for name, read in FIELDS.items():
                if name in gpu.dropped:
                    continue
                try:
                    values = read(self.nvml, gpu.handle)
                except self.nvml.NVMLError as exc:
                    if not self._failed(gpu, name, exc):
                        break  # the GPU is lost: none of its fields can be read
                    continue
                gpu.failures.pop(name, None)
                for metric, value, extra in values:
                    readings.append((metric, float(value), {**gpu.labels, **extra}))
        return readings

    def _failed(self, gpu: _Gpu, name: str, exc: Exception) -> bool:
        """Note a failed read; False when the whole GPU is lost and was taken off the list."""
        code = getattr(exc, "value", None)
        if code in self._lost:
            self.gpus.remove(gpu)
            log.warning("GPU %d (%s, %s) is lost to NVML (%s): its telemetry stops. Look for Xid "
                        "errors in the kernel log (`dmesg | grep -i xid`) and at `nvidia-smi`; "
                        "the GPU needs a reset or the node a drain", gpu.index,
                        gpu.labels["gpu_name"], gpu.labels["gpu_uuid"], exc)
            return False
        failures = gpu.failures[name] = gpu.failures.get(name, 0) + 1
        if code in self._unsupported or failures >= MAX_FIELD_FAILURES:
            gpu.dropped.add(name)
            log.debug("GPU %d: %s unavailable (%s, %d failure(s)): dropped", gpu.index, name,
                      exc, failures)
        return True

    def close(self) -> None:
        self.nvml.nvmlShutdown()


def _codes(nvml: Any, names: tuple[str, ...]) -> set[int]:
    """The error codes of ``names`` that these bindings know (older ones lack the newest)."""
    return {getattr(nvml, name) for name in names if hasattr(nvml, name)}


def gpu_sampler(*, local_rank: int | None, all_gpus: bool = False) -> NvmlSampler | None:
    """An NVML sampler for this process's GPUs, or None (one info line) where NVML is missing."""
    try:
        import pynvml
    except ImportError:
        log.info("no NVIDIA driver: GPU metrics off (nvidia-ml-py is not installed)")
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        log.info("no NVIDIA driver: GPU metrics off (%s)", exc)
        return None
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        uuids = [_text(pynvml.nvmlDeviceGetUUID(h)) for h in handles]
        names = [_text(pynvml.nvmlDeviceGetName(h)) for h in handles]
    except Exception as exc:
        log.info("NVML could not list the GPUs: GPU metrics off (%s)", exc)
        _shutdown(pynvml)
        return None
    visible = env.CUDA_VISIBLE_DEVICES.raw()
    chosen = select_gpus(uuids, visible, local_rank, all_gpus)
    if not chosen:
        log.info("no NVIDIA GPU for this process (%d on the host, CUDA_VISIBLE_DEVICES=%r): "
                 "GPU metrics off", len(handles), visible)
        _shutdown(pynvml)
        return None
    gpus = [_Gpu(i, handles[i], {"gpu": str(i), "gpu_uuid": uuids[i], "gpu_name": names[i]})
            for i in chosen]
    return NvmlSampler(pynvml, gpus)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _shutdown(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception:
        pass
