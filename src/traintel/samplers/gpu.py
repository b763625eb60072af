"""NVIDIA GPU telemetry through NVML (``nvidia-ml-py``, module ``pynvml``), imported lazily.

Only the devices this process uses are sampled by default (``CUDA_VISIBLE_DEVICES`` and the local
rank), so that eight ranks on one host do not each report all eight GPUs. A device is a whole GPU
or a MIG instance; a MIG instance brings its GPU along for the fields only the whole GPU has
(power, temperature, clocks, errors). Labels are dcgm-exporter's in Prometheus's snake_case
(``gpu``, ``uuid``, ``model_name``, ``pci_bus_id``, ``hostname``; ``gpu_i_id`` and
``gpu_i_profile`` on a MIG instance); the recording rule ``traintel:gpu_run:info`` spells them as
DCGM does, so that DCGM's series join traintel's on ``UUID``.

NVML's answer decides what a failed read means: a field the GPU or driver does not support is
dropped for that device at once, with one note per device listing them; a passing failure (a
timeout, "unknown") skips that field for one sample and drops it only after
``MAX_FIELD_FAILURES`` in a row; a GPU that is lost (fallen off the bus, needing a reset) is
reported once as a warning and no longer sampled. Xid errors arrive as NVML events, polled without
waiting at each sample, and leave as run events and a counter (:mod:`.xid`).
"""

from __future__ import annotations

import ctypes.util
import logging
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from traintel.core import env, extras
from traintel.samplers.base import Sample, SamplerEvent
from traintel.samplers.gpm import ACTIVITY, MIG_ACTIVITY, GpmReader
from traintel.samplers.nvml_fields import FIELD_VALUES, Key, key, read_all
from traintel.samplers.xid import NO_INSTANCE, XidWatcher, describe, level

log = logging.getLogger("traintel.samplers")

#: NVML errors meaning "this GPU or driver will never give this field" (names from nvml.h).
UNSUPPORTED_ERRORS = (
    "NVML_ERROR_NOT_SUPPORTED",
    "NVML_ERROR_NO_PERMISSION",
    "NVML_ERROR_FUNCTION_NOT_FOUND",
    "NVML_ERROR_INVALID_ARGUMENT",
    "NVML_ERROR_ARGUMENT_VERSION_MISMATCH",
    "NVML_ERROR_DEPRECATED",
)
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


#: A device this process uses: an NVML GPU index, or a MIG instance's UUID (``MIG-...``).
Choice = int | str


def select_gpus(
    uuids: list[str],
    visible: str | None,
    local_rank: int | None,
    all_gpus: bool = False,
    migs: dict[str, int] | None = None,
) -> list[Choice]:
    """The devices this process uses: NVML indexes of whole GPUs, UUIDs of MIG instances.

    ``uuids`` are the NVML UUIDs by NVML index; ``migs`` the MIG instances' UUIDs with their
    GPU's index. ``visible`` is ``CUDA_VISIBLE_DEVICES``: entries are indexes, (prefixes of)
    ``GPU-`` UUIDs or ``MIG-`` UUIDs; as in CUDA, the list ends at the first entry that names no
    device. With ``local_rank`` set and several devices visible, the rank's own device (the
    ``local_rank``-th visible one, as ``cuda:<local_rank>``) is chosen.
    """
    migs = migs or {}
    if all_gpus or visible is None:
        chosen: list[Choice] = list(range(len(uuids)))
    else:
        chosen = []
        for entry in (e.strip() for e in visible.split(",")):
            if not entry:
                continue
            found = (
                _resolve_mig(entry, migs) if entry.startswith("MIG-") else _resolve(entry, uuids)
            )
            if found is None:
                break
            if found not in chosen:
                chosen.append(found)
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


def _resolve_mig(entry: str, migs: dict[str, int]) -> str | None:
    matches = [uuid for uuid in migs if uuid.startswith(entry)]
    return matches[0] if len(matches) == 1 else None


@dataclass(eq=False)
class _Device:
    """A GPU, or a MIG instance of one (``parent`` set), and what is known of its fields."""

    index: int  # NVML index of the GPU (of the parent GPU, for a MIG instance)
    handle: Any
    labels: dict[str, str]
    fields: dict[str, FieldReader]
    #: the info metric emitted each sample while the process uses the device (None: only
    #: sampled for a MIG instance's sake)
    info: str | None = None
    parent: _Device | None = None
    gpu_instance: int | None = None
    dropped: set[str] = field(default_factory=set)  # fields not read again
    failures: dict[str, int] = field(default_factory=dict)  # passing failures in a row
    unsupported: dict[str, str] = field(default_factory=dict)  # field -> NVML's answer
    noted: int = 0  # entries of ``unsupported`` already logged
    #: this sample's field values (one nvmlDeviceGetFieldValues call, made on first use), or
    #: the error that call raised
    values: dict[Key, tuple[int, float]] | Exception | None = None
    gpm: GpmReader | None = None

    @property
    def title(self) -> str:
        if self.parent is None:
            return f"GPU {self.index} ({self.labels['model_name']}, {self.labels['uuid']})"
        return (
            f"GPU {self.index} MIG instance {self.labels['gpu_i_id']} "
            f"({self.labels['gpu_i_profile']})"
        )


#: reads one field of a device: (catalog metric, value, extra labels) tuples
FieldReader = Callable[[Any, _Device], list[Sample]]


def _memory(nvml: Any, device: _Device) -> list[Sample]:
    info = nvml.nvmlDeviceGetMemoryInfo(device.handle)
    return [
        ("traintel_gpu_memory_used_bytes", info.used, {}),
        ("traintel_gpu_memory_total_bytes", info.total, {}),
    ]


def _utilization(nvml: Any, device: _Device) -> list[Sample]:
    rates = nvml.nvmlDeviceGetUtilizationRates(device.handle)  # percent
    return [
        ("traintel_gpu_utilization_ratio", rates.gpu / 100.0, {}),
        ("traintel_gpu_memory_controller_utilization_ratio", rates.memory / 100.0, {}),
    ]


def _throttle(nvml: Any, device: _Device) -> list[Sample]:
    # The "event" name replaced the deprecated "throttle" one (driver 535); same bits.
    read = (
        getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
        or nvml.nvmlDeviceGetCurrentClocksThrottleReasons
    )
    return [
        ("traintel_gpu_throttled", active, {"reason": reason})
        for reason, active in decode_throttle(read(device.handle)).items()
    ]


def _pcie(nvml: Any, device: _Device) -> list[Sample]:
    # NVML reports KB/s (read as KiB/s, as nvidia-smi does), averaged over a 20 ms window.
    read = nvml.nvmlDeviceGetPcieThroughput
    return [
        (
            "traintel_gpu_pcie_bytes_per_second",
            read(device.handle, nvml.NVML_PCIE_UTIL_TX_BYTES) * 1024.0,
            {"direction": "tx"},
        ),
        (
            "traintel_gpu_pcie_bytes_per_second",
            read(device.handle, nvml.NVML_PCIE_UTIL_RX_BYTES) * 1024.0,
            {"direction": "rx"},
        ),
    ]


def _scalar(metric: str, read: Callable[[Any, Any], float]) -> FieldReader:
    return lambda nvml, device: [(metric, read(nvml, device.handle), {})]


def _field_values(name: str) -> FieldReader:
    """A reader of one FIELD_VALUES entry, from the device's one batch call of this sample."""

    def read(nvml: Any, device: _Device) -> list[Sample]:
        try:
            keys = [key(nvml, value) for value in FIELD_VALUES[name]]
        except AttributeError:  # bindings older than the field
            raise nvml.NVMLError(nvml.NVML_ERROR_FUNCTION_NOT_FOUND) from None
        if device.values is None:
            try:
                device.values = read_all(nvml, device.handle, _batch(nvml, device))
            except nvml.NVMLError as exc:
                device.values = exc  # the batch failed: so does each of its fields
        if isinstance(device.values, Exception):
            raise device.values
        out: list[Sample] = []
        for value, k in zip(FIELD_VALUES[name], keys):
            code, number = device.values.get(k, (nvml.NVML_ERROR_UNKNOWN, 0.0))
            if code != nvml.NVML_SUCCESS:
                raise nvml.NVMLError(code)
            out.append((value.metric, number * value.scale, value.labels))
        return out

    return read


def _batch(nvml: Any, device: _Device) -> list[Key]:
    """The (field id, scope) pairs of every field-values field the device still reads."""
    keys: list[Key] = []
    for name, values in FIELD_VALUES.items():
        if name in device.fields and name not in device.dropped:
            for value in values:
                if hasattr(nvml, value.field_id):
                    keys.append(key(nvml, value))
    return keys


def _activity(metrics: dict[str, str]) -> FieldReader:
    """GPM activity of a GPU or MIG instance (its reader is made on first use)."""

    def read(nvml: Any, device: _Device) -> list[Sample]:
        if device.gpm is None:
            if device.parent is None:
                device.gpm = GpmReader(nvml, device.handle, metrics)
            else:
                device.gpm = GpmReader(nvml, device.parent.handle, metrics, device.gpu_instance)
        return [(metric, value, {}) for metric, value in device.gpm.read()]

    return read


#: Field name -> reader, for a whole GPU.
FIELDS: dict[str, FieldReader] = {
    "memory": _memory,
    "utilization": _utilization,
    "power": _scalar(
        "traintel_gpu_power_watts",  # mW
        lambda n, h: n.nvmlDeviceGetPowerUsage(h) / 1000.0,
    ),
    "power_limit": _scalar(
        "traintel_gpu_power_limit_watts",  # mW
        lambda n, h: n.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0,
    ),
    "energy": _scalar(
        "traintel_gpu_energy_joules_total",  # mJ
        lambda n, h: n.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0,
    ),
    "temperature": _scalar(
        "traintel_gpu_temperature_celsius",
        lambda n, h: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU),
    ),
    "sm_clock": _scalar(
        "traintel_gpu_sm_clock_hertz",  # MHz
        lambda n, h: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM) * 1e6,
    ),
    "memory_clock": _scalar(
        "traintel_gpu_memory_clock_hertz",  # MHz
        lambda n, h: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM) * 1e6,
    ),
    "throttle": _throttle,
    "ecc": _scalar(
        "traintel_gpu_ecc_errors_uncorrected_total",
        lambda n, h: n.nvmlDeviceGetTotalEccErrors(
            h, n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_VOLATILE_ECC
        ),
    ),
    "pcie": _pcie,
    **{name: _field_values(name) for name in FIELD_VALUES},
    "activity": _activity(ACTIVITY),
}

#: Field name -> reader, for a MIG instance (utilisation through NVML's GPM, Hopper and newer:
#: nvmlDeviceGetUtilizationRates does not answer for MIG instances).
MIG_FIELDS: dict[str, FieldReader] = {
    "memory": lambda nvml, device: [
        (metric.replace("traintel_gpu_", "traintel_gpu_mig_"), value, labels)
        for metric, value, labels in _memory(nvml, device)
    ],
    "activity": _activity(MIG_ACTIVITY),
}


class NvmlSampler:
    """Reads the NVML fields of each selected device; owns one ``nvmlInit`` (closed by
    ``close``) and one Xid event set."""

    name = "gpu"

    def __init__(self, nvml: Any, devices: list[_Device], driver_version: str = "") -> None:
        self.nvml = nvml
        self.devices = devices
        self.driver_version = driver_version
        self._unsupported = _codes(nvml, UNSUPPORTED_ERRORS)
        self._lost = _codes(nvml, LOST_ERRORS)
        self._events: list[SamplerEvent] = []
        #: (GPU index, Xid code) -> times seen, exported as traintel_gpu_xid_errors_total
        self.xids: Counter[tuple[int, int]] = Counter()
        self._xid_labels: dict[int, dict[str, str]] = {}
        self._xid_failures = 0
        self.watcher = XidWatcher(nvml)
        for device in devices:
            if device.parent is None:
                try:
                    self.watcher.register(device.index, device.handle)
                except nvml.NVMLError as exc:
                    device.unsupported["xid_events"] = str(exc)
                else:
                    self._xid_labels[device.index] = device.labels

    def sample(self) -> list[Sample]:
        readings = self._read_xids()
        for device in list(self.devices):
            if device not in self.devices:
                continue  # its GPU was lost earlier in this sample
            device.values = None
            if device.info is not None:
                extra = {"driver_version": self.driver_version} if device.parent is None else {}
                readings.append((device.info, 1.0, {**device.labels, **extra}))
            for name, read in device.fields.items():
                if name in device.dropped:
                    continue
                try:
                    values = read(self.nvml, device)
                except self.nvml.NVMLError as exc:
                    if not self._failed(device, name, exc):
                        break  # the GPU is lost: none of its fields can be read
                    continue
                device.failures.pop(name, None)
                for metric, value, extra in values:
                    readings.append((metric, float(value), {**device.labels, **extra}))
        self._note_unsupported()
        return readings

    def events(self) -> list[SamplerEvent]:
        events, self._events = self._events, []
        return events

    def _read_xids(self) -> list[Sample]:
        """Xid events waiting now, as run events; the counters of every Xid seen, as readings."""
        if self.watcher.event_set is not None:
            try:
                found = self.watcher.poll()
            except self.nvml.NVMLError as exc:
                found = []
                self._xid_failures += 1
                if self._xid_failures >= MAX_FIELD_FAILURES:
                    self.watcher.close()
                    log.info(
                        "NVML Xid events failed %d times in a row (%s): Xid errors are no "
                        "longer watched; see `dmesg | grep -i xid`",
                        self._xid_failures,
                        exc,
                    )
            else:
                self._xid_failures = 0
            for index, code, instance in found:
                self.xids[index, code] += 1
                xid = describe(code)
                fields: dict[str, str | int | float] = {
                    "xid": code,
                    "meaning": xid.meaning,
                    "action": xid.action,
                    "mnemonic": xid.mnemonic,
                    **self._xid_labels[index],
                }
                if instance != NO_INSTANCE:
                    fields["gpu_i_id"] = str(instance)
                self._events.append(SamplerEvent("gpu_xid", level(xid), fields))
        return [
            (
                "traintel_gpu_xid_errors_total",
                float(count),
                {**self._xid_labels[index], "xid": str(code)},
            )
            for (index, code), count in self.xids.items()
        ]

    def _failed(self, device: _Device, name: str, exc: Exception) -> bool:
        """Note a failed read; False when the whole GPU is lost and was taken off the list."""
        code = getattr(exc, "value", None)
        if code in self._lost:
            gpu = device.parent or device
            gone = [d for d in self.devices if d is gpu or d.parent is gpu]
            self.devices = [d for d in self.devices if d not in gone]
            for lost in gone:
                self._close_device(lost)
            seen = sorted({xid for (index, xid) in self.xids if index == gpu.index})
            log.warning(
                "%s is lost to NVML (%s): its telemetry stops.%s Look for Xid errors in "
                "the kernel log (`dmesg | grep -i xid`) and at `nvidia-smi`; the GPU "
                "needs a reset or the node a drain",
                gpu.title,
                exc,
                f" Xid seen: {', '.join(map(str, seen))}." if seen else "",
            )
            return False
        failures = device.failures[name] = device.failures.get(name, 0) + 1
        if code in self._unsupported:
            device.dropped.add(name)
            device.unsupported[name] = str(exc)
        elif failures >= MAX_FIELD_FAILURES:
            device.dropped.add(name)
            log.info(
                "%s: %s failed %d times in a row (%s): no longer read",
                device.title,
                name,
                failures,
                exc,
            )
        return True

    def _note_unsupported(self) -> None:
        """One info line per device for the fields its GPU or driver does not give."""
        for device in self.devices:
            if len(device.unsupported) > device.noted:
                fields = list(device.unsupported.items())[device.noted :]
                device.noted = len(device.unsupported)
                log.info(
                    "%s: not reported by this GPU or driver: %s",
                    device.title,
                    ", ".join(f"{name} ({why})" for name, why in fields),
                )
            if device.gpm is not None and device.gpm.refused:
                refused, device.gpm.refused = device.gpm.refused, {}
                log.info(
                    "%s: GPM does not measure %s here",
                    device.title,
                    ", ".join(f"{m} (NVML return {c})" for m, c in refused.items()),
                )

    def _close_device(self, device: _Device) -> None:
        if device.gpm is not None:
            device.gpm.close()
            device.gpm = None

    def close(self) -> None:
        for device in self.devices:
            self._close_device(device)
        self.watcher.close()
        self.nvml.nvmlShutdown()


def _codes(nvml: Any, names: tuple[str, ...]) -> set[int]:
    """The error codes of ``names`` that these bindings know (older ones lack the newest)."""
    return {getattr(nvml, name) for name in names if hasattr(nvml, name)}


def gpu_sampler(*, local_rank: int | None, all_gpus: bool = False) -> NvmlSampler | None:
    """An NVML sampler for this process's GPUs, or None (one info line) where NVML is missing."""
    try:
        import pynvml
    except ImportError:
        _without_bindings()
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        log.info("no NVIDIA driver: GPU metrics off (%s)", exc)
        return None
    try:
        devices = _devices(pynvml, local_rank, all_gpus)
    except Exception as exc:
        log.info("NVML could not list the GPUs: GPU metrics off (%s)", exc)
        _shutdown(pynvml)
        return None
    if not devices:
        log.info(
            "no NVIDIA GPU for this process (%d on the host, CUDA_VISIBLE_DEVICES=%r): "
            "GPU metrics off",
            pynvml.nvmlDeviceGetCount(),
            env.CUDA_VISIBLE_DEVICES.raw(),
        )
        _shutdown(pynvml)
        return None
    return NvmlSampler(
        pynvml, devices, _optional(lambda: _text(pynvml.nvmlSystemGetDriverVersion()), "")
    )


#: whether the missing-bindings hint was given in this process (once is enough)
_hinted: list[bool] = []


def _without_bindings() -> None:
    """GPU metrics are off because ``pynvml`` is missing: say so, loudly where there is a driver
    (the GPU is there, its metrics are not), quietly where there is none."""
    if not driver_present():
        log.info("no NVIDIA driver: GPU metrics off")
        return
    if not _hinted:
        _hinted.append(True)
        log.warning("traintel: %s", extras.hint("the GPU sampler", "gpu"))


def driver_present() -> bool:
    """An NVIDIA kernel driver is loaded, or its NVML library is installed (found without NVML's
    Python bindings: the file the driver publishes, or the linker's cache)."""
    if Path("/proc/driver/nvidia/version").exists():
        return True
    return ctypes.util.find_library("nvidia-ml") is not None


def _devices(nvml: Any, local_rank: int | None, all_gpus: bool) -> list[_Device]:
    """The devices this process uses, MIG instances after their GPU."""
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    uuids = [_text(nvml.nvmlDeviceGetUUID(h)) for h in handles]
    instances = {index: _mig_instances(nvml, handle) for index, handle in enumerate(handles)}
    migs = {mig[0]: index for index, found in instances.items() for mig in found}
    visible = env.CUDA_VISIBLE_DEVICES.raw()
    chosen = select_gpus(uuids, visible, local_rank, all_gpus, migs)
    whole = {c for c in chosen if isinstance(c, int)}
    wanted = {c for c in chosen if isinstance(c, str)}
    if visible is None or all_gpus:  # CUDA sees a MIG-enabled GPU through its instances
        wanted |= {mig[0] for index in whole for mig in instances[index]}
    host = socket.gethostname()
    devices = []
    for index in sorted(whole | {migs[uuid] for uuid in wanted}):
        labels = {
            "gpu": str(index),
            "uuid": uuids[index],
            "model_name": _text(nvml.nvmlDeviceGetName(handles[index])),
            "pci_bus_id": _optional(partial(_bus_id, nvml, handles[index]), "unknown"),
            "hostname": host,
        }
        # a GPU in MIG mode is used through its instances, never whole
        used_whole = index in whole and not instances[index]
        gpu = _Device(
            index, handles[index], labels, FIELDS, info="traintel_gpu_info" if used_whole else None
        )
        devices.append(gpu)
        for uuid, handle, gpu_instance, profile in instances[index]:
            if uuid in wanted:
                devices.append(
                    _Device(
                        index,
                        handle,
                        {**labels, "gpu_i_id": str(gpu_instance), "gpu_i_profile": profile},
                        MIG_FIELDS,
                        "traintel_gpu_mig_info",
                        gpu,
                        gpu_instance,
                    )
                )
    return devices


def _mig_instances(nvml: Any, handle: Any) -> list[tuple[str, Any, int, str]]:
    """(MIG UUID, handle, GPU instance id, profile such as ``1g.10gb``) of each MIG instance of a
    GPU in MIG mode; none for other GPUs or where NVML cannot tell."""
    try:
        if nvml.nvmlDeviceGetMigMode(handle)[0] != nvml.NVML_DEVICE_MIG_ENABLE:
            return []
        count = nvml.nvmlDeviceGetMaxMigDeviceCount(handle)
    except (nvml.NVMLError, AttributeError):  # not MIG-capable, or bindings without MIG
        return []
    found = []
    for slot in range(count):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except nvml.NVMLError:  # NOT_FOUND: an empty slot
            continue
        name = _text(nvml.nvmlDeviceGetName(mig))  # "NVIDIA A100-SXM4-40GB MIG 1g.5gb"
        found.append(
            (
                _text(nvml.nvmlDeviceGetUUID(mig)),
                mig,
                int(nvml.nvmlDeviceGetGpuInstanceId(mig)),
                name.rsplit(" MIG ", 1)[1] if " MIG " in name else "unknown",
            )
        )
    return found


def _optional(read: Callable[[], str], default: str) -> str:
    try:
        return read()
    except Exception:
        return default


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _shutdown(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception:
        pass


def _bus_id(nvml: Any, handle: Any) -> str:
    """A device's PCI bus id (``00000000:3B:00.0``), as DCGM names it."""
    return _text(nvml.nvmlDeviceGetPciInfo(handle).busId)
