"""A stand-in for the pynvml module: NVML cannot run without an NVIDIA GPU (see test_gpu_real.py).

It answers with the real bindings' pieces wherever the sampler touches them: the error classes
(``NVMLError(code)`` builds the code's subclass), every ``NVML_*`` / ``nvmlEventType*`` constant,
device handles as ``c_nvmlDevice_t`` pointers, field values as ``c_nvmlFieldValue_t`` arrays,
events as ``c_nvmlEventData_t`` and GPM queries as ``c_nvmlGpmMetricsGet_t``. Raw values are in
NVML's own units.
"""

from __future__ import annotations

import ctypes
from collections import deque

import pynvml as real

GiB = 1024**3
UUIDS = ["GPU-aaaa1111-0000", "GPU-bbbb2222-0000", "GPU-cccc3333-0000", "GPU-dddd4444-0000"]
NAME = "NVIDIA H100 80GB HBM3"

#: field id -> raw value the stand-in reports (NVML units)
FIELD_VALUES = {
    real.NVML_FI_DEV_MEMORY_TEMP: 52,
    real.NVML_FI_DEV_PCIE_REPLAY_COUNTER: 3,
    real.NVML_FI_DEV_REMAPPED_COR: 2,
    real.NVML_FI_DEV_REMAPPED_UNC: 1,
    real.NVML_FI_DEV_REMAPPED_PENDING: 1,
    real.NVML_FI_DEV_REMAPPED_FAILURE: 0,
    real.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION: 0,
    real.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX: 4000,  # KiB
    real.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX: 5000,
    real.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL: 7,
    real.NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL: 8,
    real.NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL: 9,
    real.NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL: 10,
}
#: GPM metric id -> percent the stand-in reports
GPM_VALUES = {
    real.NVML_GPM_METRIC_GRAPHICS_UTIL: 90.0,
    real.NVML_GPM_METRIC_SM_UTIL: 80.0,
    real.NVML_GPM_METRIC_SM_OCCUPANCY: 40.0,
    real.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 60.0,
    real.NVML_GPM_METRIC_DRAM_BW_UTIL: 30.0,
}


def _pointer(address: int, kind):
    return ctypes.cast(ctypes.c_void_p(address), kind)


def _address(pointer) -> int:
    return ctypes.cast(pointer, ctypes.c_void_p).value


class FakeNvml:
    """``errors`` maps (device, field name) to the NVML error code that read fails with;
    ``field_errors`` maps (device, field id) to the return code of that one field value;
    ``calls`` counts calls per field. A device is a GPU index, or (GPU index, MIG slot)."""

    NVMLError = real.NVMLError

    def __init__(self, count=4, throttle=0x4 | 0x1, mig: dict[int, list[int]] | None = None):
        self.count, self.throttle = count, throttle
        #: GPU index -> GPU instance ids of its MIG instances (the GPU is in MIG mode)
        self.mig = mig or {}
        self.errors: dict[tuple[object, str], int] = {}
        self.field_errors: dict[tuple[object, int], int] = {}
        self.calls: dict[str, int] = {}
        self.initialised = 0
        self.gpm_supported = True
        self.xid_supported = True
        self.pending_events: deque = deque()
        self.registered: dict[int, int] = {}  # GPU index -> event types
        self.event_sets = 0
        self.gpm_samples: dict[int, int | None] = {}  # sample address -> when taken
        self.gpm_clock = 0
        self.gpm_queries: list[tuple[int, int]] = []
        self._devices = {}
        for index in range(count):
            self._devices[0x1000 + 0x10 * index] = index
            for slot, _ in enumerate(self.mig.get(index, [])):
                self._devices[0x8000 + 0x100 * index + slot] = (index, slot)

    def __getattr__(self, name):
        if name.startswith(("NVML_", "nvmlEventType", "c_nvml")):  # constants and structs
            return getattr(real, name)
        raise AttributeError(name)

    # --- helpers --------------------------------------------------------------------------

    def handle(self, device):
        """The handle of a device (GPU index, or (index, slot) of a MIG instance)."""
        if isinstance(device, tuple):
            return _pointer(0x8000 + 0x100 * device[0] + device[1], real.c_nvmlDevice_t)
        return _pointer(0x1000 + 0x10 * device, real.c_nvmlDevice_t)

    def device(self, handle):
        return self._devices[_address(handle)]

    def _read(self, name, handle, value):
        self.calls[name] = self.calls.get(name, 0) + 1
        device = self.device(handle)
        if (device, name) in self.errors:
            raise real.NVMLError(self.errors[device, name])  # builds the code's subclass
        return value

    def xid(self, gpu: int, code: int, gpu_instance: int = 0xFFFFFFFF) -> None:
        """The driver reports an Xid on ``gpu``."""
        self.pending_events.append((gpu, code, gpu_instance))

    # --- init and enumeration -------------------------------------------------------------

    def nvmlInit(self):
        self.initialised += 1

    def nvmlShutdown(self):
        self.initialised -= 1

    def nvmlSystemGetDriverVersion(self):
        return "570.86.15"

    def nvmlDeviceGetCount(self):
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index):
        return self.handle(index)

    def nvmlDeviceGetUUID(self, handle):
        device = self.device(handle)
        if isinstance(device, tuple):
            return f"MIG-{device[0]}{device[1]}eeeeee-0000"
        return UUIDS[device].encode()  # older pynvml returns bytes here

    def nvmlDeviceGetName(self, handle):
        device = self.device(handle)
        return f"{NAME} MIG 1g.10gb" if isinstance(device, tuple) else NAME

    def nvmlDeviceGetPciInfo(self, handle):
        info = real.nvmlPciInfo_t()
        info.busId = f"00000000:{0x18 + self.device(handle):02X}:00.0".encode()
        return info

    def nvmlDeviceGetMigMode(self, handle):
        device = self._read("mig_mode", handle, self.device(handle))
        if device not in self.mig:
            raise real.NVMLError(real.NVML_ERROR_NOT_SUPPORTED)
        return [real.NVML_DEVICE_MIG_ENABLE, real.NVML_DEVICE_MIG_ENABLE]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle):
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle, slot):
        gpu = self.device(handle)
        if slot >= len(self.mig[gpu]):
            raise real.NVMLError(real.NVML_ERROR_NOT_FOUND)
        return self.handle((gpu, slot))

    def nvmlDeviceGetGpuInstanceId(self, handle):
        gpu, slot = self.device(handle)
        return self.mig[gpu][slot]

    # --- plain reads ----------------------------------------------------------------------

    def nvmlDeviceGetMemoryInfo(self, handle):
        if isinstance(self.device(handle), tuple):
            return self._read(
                "memory", handle, type("Mem", (), {"used": 3 * GiB, "total": 10 * GiB})
            )
        return self._read("memory", handle, type("Mem", (), {"used": 2 * GiB, "total": 80 * GiB}))

    def nvmlDeviceGetUtilizationRates(self, handle):
        if self.device(handle) in self.mig:  # not answered in MIG mode
            raise real.NVMLError(real.NVML_ERROR_NOT_SUPPORTED)
        return self._read("utilization", handle, type("Util", (), {"gpu": 50, "memory": 20}))

    def nvmlDeviceGetPowerUsage(self, handle):
        return self._read("power", handle, 300_000)  # mW

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return self._read("power_limit", handle, 700_000)  # mW

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        return self._read("energy", handle, 5_000_000)  # mJ

    def nvmlDeviceGetTemperature(self, handle, sensor):
        assert sensor == real.NVML_TEMPERATURE_GPU
        return self._read("temperature", handle, 45)

    def nvmlDeviceGetClockInfo(self, handle, clock):
        if clock == real.NVML_CLOCK_MEM:
            return self._read("memory_clock", handle, 2619)  # MHz
        assert clock == real.NVML_CLOCK_SM
        return self._read("sm_clock", handle, 1980)  # MHz

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return self._read("throttle", handle, self.throttle)

    def nvmlDeviceGetTotalEccErrors(self, handle, error_type, counter):
        assert (error_type, counter) == (
            real.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
            real.NVML_VOLATILE_ECC,
        )
        return self._read("ecc", handle, 0)

    def nvmlDeviceGetPcieThroughput(self, handle, counter):
        return self._read("pcie", handle, 1000 if counter == real.NVML_PCIE_UTIL_TX_BYTES else 2000)

    # --- field values ---------------------------------------------------------------------

    def nvmlDeviceGetFieldValues(self, handle, field_ids):
        self._read("field_values", handle, None)
        device = self.device(handle)
        values = (real.c_nvmlFieldValue_t * len(field_ids))()
        for slot, asked in zip(values, field_ids):
            field_id, scope = asked if isinstance(asked, tuple) else (asked, 0)
            slot.fieldId, slot.scopeId = field_id, scope
            if field_id in (
                real.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
                real.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
            ):
                assert scope == 0xFFFFFFFF, "throughput must be asked for all links"
            slot.nvmlReturn = self.field_errors.get((device, field_id), real.NVML_SUCCESS)
            if field_id == real.NVML_FI_DEV_MEMORY_TEMP:
                slot.valueType = real.NVML_VALUE_TYPE_SIGNED_INT
                slot.value.siVal = FIELD_VALUES[field_id]
            else:
                slot.valueType = real.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                slot.value.ullVal = FIELD_VALUES[field_id]
        return values

    # --- Xid events -----------------------------------------------------------------------

    def nvmlDeviceGetSupportedEventTypes(self, handle):
        everything = real.nvmlEventTypeAll
        return (
            everything if self.xid_supported else everything & ~real.nvmlEventTypeXidCriticalError
        )

    def nvmlEventSetCreate(self):
        self.event_sets += 1
        return _pointer(0x4000, real.c_nvmlEventSet_t)

    def nvmlDeviceRegisterEvents(self, handle, event_types, event_set):
        self._read("register_events", handle, None)
        self.registered[self.device(handle)] = event_types

    def nvmlEventSetWait_v2(self, event_set, timeout_ms):
        assert timeout_ms == 0, "the sampler thread must never wait for events"
        self.calls["event_wait"] = self.calls.get("event_wait", 0) + 1
        if ("events", "wait") in self.errors:
            raise real.NVMLError(self.errors["events", "wait"])
        while self.pending_events:
            gpu, code, gpu_instance = self.pending_events.popleft()
            if gpu in self.registered:
                data = real.c_nvmlEventData_t()
                data.device = self.handle(gpu)
                data.eventType = real.nvmlEventTypeXidCriticalError
                data.eventData = code
                data.gpuInstanceId = data.computeInstanceId = gpu_instance
                return data
        raise real.NVMLError(real.NVML_ERROR_TIMEOUT)

    def nvmlEventSetFree(self, event_set):
        self.event_sets -= 1

    # --- GPM ------------------------------------------------------------------------------

    def nvmlGpmQueryDeviceSupport(self, handle):
        self._read("gpm_support", handle, None)
        support = real.c_nvmlGpmSupport_t()
        support.isSupportedDevice = int(self.gpm_supported)
        return support

    def nvmlGpmSampleAlloc(self):
        address = 0x20000 + 0x10 * len(self.gpm_samples)
        self.gpm_samples[address] = None
        return _pointer(address, real.c_nvmlGpmSample_t)

    def nvmlGpmSampleFree(self, sample):
        del self.gpm_samples[_address(sample)]

    def nvmlGpmSampleGet(self, handle, sample):
        self._read("gpm_sample", handle, None)
        assert not isinstance(self.device(handle), tuple)
        self.gpm_clock += 1
        self.gpm_samples[_address(sample)] = self.gpm_clock

    def nvmlGpmMigSampleGet(self, handle, gpu_instance, sample):
        self._read("gpm_mig_sample", handle, None)
        assert gpu_instance in self.mig[self.device(handle)]
        self.gpm_clock += 1
        self.gpm_samples[_address(sample)] = self.gpm_clock

    def nvmlGpmMetricsGet(self, query):
        assert query.version == real.NVML_GPM_METRICS_GET_VERSION
        first = self.gpm_samples[_address(query.sample1)]
        second = self.gpm_samples[_address(query.sample2)]
        assert first is not None and second is not None and first < second, (
            "GPM metrics need an older and a newer sample"
        )
        self.gpm_queries.append((first, second))
        for slot in query.metrics[: query.numMetrics]:
            slot.nvmlReturn = self.field_errors.get(("gpm", slot.metricId), real.NVML_SUCCESS)
            slot.value = GPM_VALUES[slot.metricId]
        return query
