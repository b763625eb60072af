"""NVIDIA Xid errors: what each code means, and how NVML hands them to traintel.

An Xid is the driver's report of a GPU error (printed to the kernel log as ``NVRM: Xid``). NVML
delivers them as ``nvmlEventTypeXidCriticalError`` events to an event set the process registered
its GPUs with. traintel polls that set with a zero timeout at each sample, so the sampler thread
never waits on it; the driver keeps the events until they are read. NVML's documented limit: when
several Xids of one GPU arrive before a read, each event carries the most recent code.

The table follows NVIDIA's Xid catalog (docs.nvidia.com/deploy/xid-errors, "Analyzing Xid Errors
with the Xid Catalog", Ampere and newer): the mnemonic, a short meaning, and NVIDIA's immediate
action ("resolution bucket"). Codes the catalog marks unused or display-only are left out; an
unknown code is still recorded, with a pointer to the catalog.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any, NamedTuple

from traintel.core.vocabulary import Level

log = logging.getLogger("traintel.samplers")


class Xid(NamedTuple):
    mnemonic: str
    meaning: str
    #: NVIDIA's immediate action: RESTART_APP, RESET_GPU, RESTART_BM (reboot the node),
    #: RESTART_VM, IGNORE, CONTACT_SUPPORT, CHECK_MECHANICALS, CHECK_UVM or a WORKFLOW_* to follow
    action: str
    #: the GPU is lost, or unusable until it (or the node) is reset: the GPUXidNeedsReset alert
    needs_reset: bool = False


_COPY_ENGINE = "Copy engine exception: the application using it must restart"
_MEDIA = "Video or JPEG engine exception"

XIDS: dict[int, Xid] = {
    8: Xid("ROBUST_CHANNEL_FIFO_ERROR_IDLE_TIMEOUT", "GPU stopped processing", "RESTART_APP"),
    11: Xid(
        "ROBUST_CHANNEL_GR_ERROR_MISSING_HW",
        "Invalid or corrupted push buffer stream",
        "RESTART_APP",
    ),
    13: Xid(
        "ROBUST_CHANNEL_GR_EXCEPTION",
        "Graphics engine exception: usually a kernel's out-of-range access (an application error)",
        "RESTART_APP",
    ),
    25: Xid(
        "ROBUST_CHANNEL_GR_ILLEGAL_NOTIFY", "Invalid or illegal push buffer stream", "RESTART_APP"
    ),
    31: Xid(
        "ROBUST_CHANNEL_FIFO_ERROR_MMU_ERR_FLT",
        "GPU memory page fault: an illegal memory "
        "access by a kernel (usually an application error)",
        "RESTART_APP",
    ),
    32: Xid(
        "ROBUST_CHANNEL_PBDMA_ERROR",
        "Invalid or corrupted push buffer stream (PBDMA)",
        "RESTART_APP",
    ),
    37: Xid("ROBUST_CHANNEL_FECS_ERR_UNIMP_FIRMWARE_METHOD", "Driver firmware error", "IGNORE"),
    38: Xid(
        "ROBUST_CHANNEL_FECS_ERR_WATCHDOG_TIMEOUT", "Driver firmware watchdog timeout", "IGNORE"
    ),
    43: Xid(
        "ROBUST_CHANNEL_RESETCHANNEL_VERIF_ERROR",
        "GPU stopped processing the channel of a faulting application; other applications go on",
        "IGNORE",
    ),
    44: Xid(
        "ROBUST_CHANNEL_GR_FAULT_DURING_CTXSW",
        "Graphics engine fault during a context switch",
        "IGNORE",
    ),
    45: Xid(
        "ROBUST_CHANNEL_PREEMPTIVE_REMOVAL",
        "Preemptive cleanup after an earlier error or a killed process",
        "WORKFLOW_XID_45",
    ),
    46: Xid(
        "ROBUST_CHANNEL_GPU_TIMEOUT_ERROR",
        "GPU stopped processing (GPU timeout)",
        "RESET_GPU",
        True,
    ),
    48: Xid(
        "ROBUST_CHANNEL_GPU_ECC_DBE",
        "Double-bit (uncorrectable) ECC error: the GPU needs a reset to retire or remap the memory",
        "WORKFLOW_XID_48",
        True,
    ),
    54: Xid(
        "SILENT_RUNNING_PWR_REDUCED_CLOCKING",
        "Clocks reduced for power: auxiliary power may be missing",
        "CHECK_MECHANICALS",
    ),
    60: Xid("ROBUST_CHANNEL_SEC2_ERROR", "SEC2 engine exception", "RESTART_APP"),
    61: Xid("PMU_BREAKPOINT", "Internal micro-controller breakpoint or warning", "CONTACT_SUPPORT"),
    62: Xid("PMU_HALT_ERROR", "Internal micro-controller halted", "RESET_GPU", True),
    63: Xid(
        "INFOROM_DRAM_RETIREMENT_EVENT",
        "ECC page retirement or row remapping recorded (applied at the next GPU reset)",
        "IGNORE",
    ),
    64: Xid(
        "INFOROM_DRAM_RETIREMENT_FAILURE",
        "ECC page retirement or row remapping failed",
        "RESET_GPU",
        True,
    ),
    69: Xid("ROBUST_CHANNEL_GR_CLASS_ERROR", "Graphics engine class error", "RESTART_APP"),
    74: Xid(
        "NVLINK_ERROR",
        "NVLink error: links to other GPUs are down or degraded",
        "WORKFLOW_NVLINK_ERR",
        True,
    ),
    79: Xid(
        "ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS",
        "GPU has fallen off the bus",
        "RESTART_BM",
        True,
    ),
    80: Xid("PBDMA_PUSHBUFFER_CRC_MISMATCH", "Corrupted data sent to the GPU", "RESTART_APP"),
    92: Xid("EXCESSIVE_SBE_INTERRUPTS", "High single-bit ECC error rate", "IGNORE"),
    93: Xid("INFOROM_ERASE_LIMIT_EXCEEDED", "InfoROM wear limit exceeded (non-fatal)", "IGNORE"),
    94: Xid(
        "ROBUST_CHANNEL_CONTAINED_ERROR",
        "Contained ECC error: only the application using the memory is hit",
        "RESTART_APP",
    ),
    95: Xid(
        "ROBUST_CHANNEL_UNCONTAINED_ERROR",
        "Uncontained ECC error: every application on the GPU is hit",
        "RESET_GPU",
        True,
    ),
    109: Xid("ROBUST_CHANNEL_CTXSW_TIMEOUT_ERROR", "Context switch timeout", "RESET_GPU", True),
    110: Xid("SEC_FAULT_ERROR", "Security fault", "RESET_GPU", True),
    119: Xid(
        "GSP_RPC_TIMEOUT", "GSP firmware did not answer the driver (RPC timeout)", "RESET_GPU", True
    ),
    120: Xid("GSP_ERROR", "GSP firmware error", "RESET_GPU", True),
    121: Xid("C2C_ERROR", "C2C (Grace-Hopper chip-to-chip) link error, corrected", "IGNORE"),
    136: Xid("ALI_TRAINING_FAIL", "NVLink link training failed", "RESET_GPU", True),
    140: Xid(
        "UNRECOVERABLE_ECC_ERROR_ESCAPE",
        "Uncorrectable ECC error escaped containment",
        "RESET_GPU",
        True,
    ),
    143: Xid("GPU_INIT_ERROR", "GPU initialisation failed", "RESET_GPU", True),
    151: Xid(
        "ROBUST_CHANNEL_KEY_ROTATION_ERROR",
        "Confidential-computing key rotation error",
        "RESTART_VM",
        True,
    ),
    154: Xid(
        "GPU_RECOVERY_ACTION_CHANGED",
        "GPU recovery action changed: see traintel_gpu_recovery_action and the Xid logged with it",
        "WORKFLOW_XID_154",
    ),
    155: Xid("NVLINK_SW_DEFINED_ERROR", "NVLink software-defined error", "RESET_GPU", True),
    156: Xid("RESOURCE_RETIREMENT_EVENT", "GPU resource retirement event", "RESET_GPU", True),
    157: Xid("RESOURCE_RETIREMENT_FAILURE", "GPU resource retirement failure", "IGNORE"),
    158: Xid("GPU_FATAL_TIMEOUT", "GPU fatal timeout", "RESET_GPU", True),
    159: Xid("ROBUST_CHANNEL_CHI_NON_DATA_ERROR", "CHI non-data error", "CHECK_UVM"),
    160: Xid("CHANNEL_RETIREMENT_EVENT", "Channel retirement event", "RESTART_BM", True),
    161: Xid("CHANNEL_RETIREMENT_FAILURE", "Channel retirement failure", "IGNORE"),
}
XIDS.update(
    {
        code: Xid(f"ROBUST_CHANNEL_CE{n}_ERROR", _COPY_ENGINE, "RESTART_APP")
        for n, code in enumerate((39, 40, 41, 70, 71, 72, 75, 76, 77, 85, *range(126, 136)))
    }
)
XIDS.update(
    {
        code: Xid(
            f"NVLINK_{unit}_ERROR",
            "NVLink (fifth generation) fabric error",
            "WORKFLOW_NVLINK5_ERR",
            True,
        )
        for code, unit in zip(
            range(144, 151), ("SAW", "RLW", "TLW", "TREX", "NVLPW_CTRL", "NETIR", "MSE")
        )
    }
)
XIDS.update(
    {
        code: Xid(mnemonic, _MEDIA, "RESTART_APP")
        for code, mnemonic in {
            68: "ROBUST_CHANNEL_NVDEC0_ERROR",
            82: "ROBUST_CHANNEL_NVJPG0_ERROR",
            83: "ROBUST_CHANNEL_NVDEC1_ERROR",
            84: "ROBUST_CHANNEL_NVDEC2_ERROR",
            86: "ROBUST_CHANNEL_OFA0_ERROR",
            88: "ROBUST_CHANNEL_NVDEC3_ERROR",
            89: "ROBUST_CHANNEL_NVDEC4_ERROR",
            139: "ROBUST_CHANNEL_OFA1_ERROR",
            **{code: f"ROBUST_CHANNEL_NVDEC{n}_ERROR" for n, code in ((5, 96), (6, 97), (7, 98))},
            **{
                code: f"ROBUST_CHANNEL_NVJPG{n}_ERROR"
                for n, code in enumerate(range(99, 106), start=1)
            },
        }.items()
    }
)

#: Codes meaning the GPU is lost or must be reset (or the node rebooted): the alert's default.
NEEDS_RESET: tuple[int, ...] = tuple(sorted(code for code, xid in XIDS.items() if xid.needs_reset))


def describe(code: int) -> Xid:
    """The table's entry for ``code``, or one saying where to look it up."""
    return XIDS.get(code) or Xid(
        "UNKNOWN", f"Xid {code} is not in traintel's table: see NVIDIA's Xid catalog", "UNKNOWN"
    )


def level(xid: Xid) -> Level:
    """The run-event level of an Xid: critical when the GPU needs a reset, warning when NVIDIA
    says it can be ignored, error otherwise (the application must restart, or look closer)."""
    if xid.needs_reset:
        return "critical"
    return "warning" if xid.action == "IGNORE" else "error"


#: nvmlEventData_t's instance ids when an Xid is not attributable to one MIG instance.
NO_INSTANCE = 0xFFFFFFFF
#: Events read per sample at most, so that an Xid storm cannot hold the sampler thread.
MAX_EVENTS_PER_SAMPLE = 64


def address(handle: Any) -> Any:
    """What identifies an NVML device handle (a ctypes pointer) when it comes back in an event."""
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value
    except (TypeError, ctypes.ArgumentError):
        return handle


class XidWatcher:
    """One NVML event set for Xid errors on the GPUs being sampled, polled without waiting."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self.event_set: Any = None
        #: handle address -> what the sampler calls that GPU (its index)
        self.registered: dict[Any, int] = {}

    def register(self, index: int, handle: Any) -> None:
        """Watch ``handle``'s Xids; raises the bindings' NVMLError where that cannot be done (the
        caller drops the field), NOT_SUPPORTED where the GPU does not report Xid events."""
        nvml = self.nvml
        if not hasattr(nvml, "nvmlEventSetCreate"):
            raise nvml.NVMLError(nvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        if not nvml.nvmlDeviceGetSupportedEventTypes(handle) & nvml.nvmlEventTypeXidCriticalError:
            raise nvml.NVMLError(nvml.NVML_ERROR_NOT_SUPPORTED)
        if self.event_set is None:
            self.event_set = nvml.nvmlEventSetCreate()
        nvml.nvmlDeviceRegisterEvents(handle, nvml.nvmlEventTypeXidCriticalError, self.event_set)
        self.registered[address(handle)] = index

    def poll(self) -> list[tuple[int, int, int]]:
        """(GPU index, Xid code, GPU instance id or NO_INSTANCE) of each event waiting now.

        A zero timeout: NVML answers at once, with an event or NVML_ERROR_TIMEOUT. Other errors
        are raised (the sampler counts them like any field's failure)."""
        found: list[tuple[int, int, int]] = []
        if self.event_set is None:
            return found
        nvml = self.nvml
        for _ in range(MAX_EVENTS_PER_SAMPLE):
            try:
                data = nvml.nvmlEventSetWait_v2(self.event_set, 0)
            except nvml.NVMLError as exc:
                if getattr(exc, "value", None) == nvml.NVML_ERROR_TIMEOUT:
                    break
                raise
            if not data.eventType & nvml.nvmlEventTypeXidCriticalError:
                continue
            index = self.registered.get(address(data.device))
            if index is not None:
                found.append((index, int(data.eventData), int(data.gpuInstanceId)))
        return found

    def close(self) -> None:
        event_set, self.event_set = self.event_set, None
        if event_set is not None:
            try:
                self.nvml.nvmlEventSetFree(event_set)
            except Exception:
                log.debug("freeing the NVML event set failed", exc_info=True)
