"""GPU fields read through ``nvmlDeviceGetFieldValues``: one NVML call per GPU and sample for all
of them, each value with its own return code, so that a field one GPU lacks (no NVLink on a PCIe
card, no HBM temperature on a consumer card) is dropped alone.

Field ids are NVML's ``NVML_FI_DEV_*`` constants (nvml.h), looked up by name in the bindings so
that bindings too old to know one simply lack that field.
"""

from __future__ import annotations

from typing import Any, NamedTuple

#: scopeId asking NVLink throughput fields for the sum over all links (nvml.h).
ALL_LINKS = 0xFFFFFFFF


class FieldValue(NamedTuple):
    metric: str
    labels: dict[str, str]
    #: name of the NVML_FI_DEV_* constant
    field_id: str
    scope: int | None = None
    #: NVML's unit times this is the catalog's unit
    scale: float = 1.0


def _errors(kind: str, field_id: str) -> list[FieldValue]:
    return [FieldValue("traintel_gpu_nvlink_errors_total", {"type": kind}, field_id)]


#: traintel field name -> the NVML field values it reports (a field is dropped whole).
FIELD_VALUES: dict[str, list[FieldValue]] = {
    "memory_temperature": [
        FieldValue("traintel_gpu_memory_temperature_celsius", {}, "NVML_FI_DEV_MEMORY_TEMP")
    ],
    "pcie_replays": [
        FieldValue("traintel_gpu_pcie_replays_total", {}, "NVML_FI_DEV_PCIE_REPLAY_COUNTER")
    ],
    "remapped_rows": [
        FieldValue(
            "traintel_gpu_remapped_rows_total", {"cause": "correctable"}, "NVML_FI_DEV_REMAPPED_COR"
        ),
        FieldValue(
            "traintel_gpu_remapped_rows_total",
            {"cause": "uncorrectable"},
            "NVML_FI_DEV_REMAPPED_UNC",
        ),
    ],
    "row_remap_pending": [
        FieldValue("traintel_gpu_row_remap_pending", {}, "NVML_FI_DEV_REMAPPED_PENDING")
    ],
    "row_remap_failed": [
        FieldValue("traintel_gpu_row_remap_failed", {}, "NVML_FI_DEV_REMAPPED_FAILURE")
    ],
    "recovery_action": [
        FieldValue("traintel_gpu_recovery_action", {}, "NVML_FI_DEV_GET_GPU_RECOVERY_ACTION")
    ],
    # cumulative KiB over all links, data only (no protocol overhead)
    "nvlink_bytes": [
        FieldValue(
            "traintel_gpu_nvlink_bytes_total",
            {"direction": "tx"},
            "NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX",
            ALL_LINKS,
            1024.0,
        ),
        FieldValue(
            "traintel_gpu_nvlink_bytes_total",
            {"direction": "rx"},
            "NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX",
            ALL_LINKS,
            1024.0,
        ),
    ],
    "nvlink_crc_flit_errors": _errors("crc_flit", "NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL"),
    "nvlink_crc_data_errors": _errors("crc_data", "NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL"),
    "nvlink_replay_errors": _errors("replay", "NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL"),
    "nvlink_recovery_errors": _errors("recovery", "NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL"),
}

#: nvmlValueType_t -> the member of nvmlValue_t holding it (nvml.h).
_MEMBERS = {
    "NVML_VALUE_TYPE_DOUBLE": "dVal",
    "NVML_VALUE_TYPE_UNSIGNED_INT": "uiVal",
    "NVML_VALUE_TYPE_UNSIGNED_LONG": "ulVal",
    "NVML_VALUE_TYPE_UNSIGNED_LONG_LONG": "ullVal",
    "NVML_VALUE_TYPE_SIGNED_LONG_LONG": "sllVal",
    "NVML_VALUE_TYPE_SIGNED_INT": "siVal",
    "NVML_VALUE_TYPE_UNSIGNED_SHORT": "usVal",
}

#: (field id, scope id) as NVML echoes them back
Key = tuple[int, int]


def key(nvml: Any, value: FieldValue) -> Key:
    """The (id, scope) of ``value``; AttributeError when the bindings lack the constant."""
    return getattr(nvml, value.field_id), value.scope or 0


def read_all(nvml: Any, handle: Any, keys: list[Key]) -> dict[Key, tuple[int, float]]:
    """One ``nvmlDeviceGetFieldValues`` call: (NVML return code, value) by (field id, scope)."""
    asked = [(field, scope) if scope else field for field, scope in keys]
    members = {
        getattr(nvml, name): member for name, member in _MEMBERS.items() if hasattr(nvml, name)
    }
    answers: dict[Key, tuple[int, float]] = {}
    for answer, (field, scope) in zip(nvml.nvmlDeviceGetFieldValues(handle, asked), keys):
        code = int(answer.nvmlReturn)
        value = 0.0
        if code == nvml.NVML_SUCCESS:
            member = members.get(int(answer.valueType))
            if member is None:  # a value type newer than these bindings
                code = nvml.NVML_ERROR_NOT_SUPPORTED
            else:
                value = float(getattr(answer.value, member))
        answers[field, scope] = (code, value)
    return answers
