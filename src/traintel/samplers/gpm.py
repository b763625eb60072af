"""Profiling activity through NVML GPM (GPU Performance Monitoring; Hopper and newer): SM
active, SM occupancy, tensor-pipe active, DRAM active, graphics engine active.

GPM metrics are computed by NVML between two samples. Each read takes a new sample and returns
the metrics over the interval since the previous read, so a value is the mean over the whole
sampling interval (5 s by default), like DCGM's profiling fields; the first read returns nothing.
For a MIG instance the samples are taken per GPU instance (``nvmlGpmMigSampleGet``).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("traintel.samplers")

#: catalog metric -> NVML GPM metric (a percentage, 0-100)
ACTIVITY: dict[str, str] = {
    "traintel_gpu_engine_active_ratio": "NVML_GPM_METRIC_GRAPHICS_UTIL",
    "traintel_gpu_sm_active_ratio": "NVML_GPM_METRIC_SM_UTIL",
    "traintel_gpu_sm_occupancy_ratio": "NVML_GPM_METRIC_SM_OCCUPANCY",
    "traintel_gpu_tensor_active_ratio": "NVML_GPM_METRIC_ANY_TENSOR_UTIL",
    "traintel_gpu_dram_active_ratio": "NVML_GPM_METRIC_DRAM_BW_UTIL",
}
#: what is read for one MIG instance
MIG_ACTIVITY: dict[str, str] = {
    "traintel_gpu_mig_engine_active_ratio": "NVML_GPM_METRIC_GRAPHICS_UTIL",
}


class GpmReader:
    """Two GPM sample buffers of one GPU (or GPU instance), alternated between reads.

    Construction raises the bindings' NVMLError: NOT_SUPPORTED where the GPU has no GPM,
    FUNCTION_NOT_FOUND where the bindings or the driver are too old.
    """

    def __init__(
        self, nvml: Any, handle: Any, metrics: dict[str, str], gpu_instance: int | None = None
    ) -> None:
        self.nvml = nvml
        self.handle = handle
        self.gpu_instance = gpu_instance
        if not all(
            hasattr(nvml, name)
            for name in (
                "nvmlGpmQueryDeviceSupport",
                "nvmlGpmSampleAlloc",
                "nvmlGpmMetricsGet",
                "c_nvmlGpmMetricsGet_t",
            )
        ):
            raise nvml.NVMLError(nvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        if not nvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice:
            raise nvml.NVMLError(nvml.NVML_ERROR_NOT_SUPPORTED)
        #: catalog metric -> GPM metric id, for the metrics this GPU answers
        self.metrics = {
            metric: getattr(nvml, name) for metric, name in metrics.items() if hasattr(nvml, name)
        }
        #: metrics NVML refused for this GPU (not asked again), with its return code
        self.refused: dict[str, int] = {}
        self.samples: list[Any] = []
        try:
            self.samples = [nvml.nvmlGpmSampleAlloc(), nvml.nvmlGpmSampleAlloc()]
        except Exception:
            self.close()
            raise
        self.primed = False

    def _take(self, sample: Any) -> None:
        if self.gpu_instance is None:
            self.nvml.nvmlGpmSampleGet(self.handle, sample)
        else:
            self.nvml.nvmlGpmMigSampleGet(self.handle, self.gpu_instance, sample)

    def read(self) -> list[tuple[str, float]]:
        """(catalog metric, 0-1 ratio) over the interval since the last read."""
        previous, current = self.samples
        self._take(current)
        self.samples.reverse()  # this sample is the next read's first
        if not self.primed:
            self.primed = True
            return []
        nvml = self.nvml
        query = nvml.c_nvmlGpmMetricsGet_t()
        query.version = nvml.NVML_GPM_METRICS_GET_VERSION
        query.sample1, query.sample2 = previous, current
        asked = list(self.metrics.items())
        query.numMetrics = len(asked)
        for slot, (_, metric_id) in zip(query.metrics, asked):
            slot.metricId = metric_id
        nvml.nvmlGpmMetricsGet(query)
        out = []
        for slot, (metric, _) in zip(query.metrics, asked):
            if slot.nvmlReturn == nvml.NVML_SUCCESS:
                out.append((metric, min(max(slot.value / 100.0, 0.0), 1.0)))
            else:
                self.refused[metric] = int(slot.nvmlReturn)
                del self.metrics[metric]
        return out

    def close(self) -> None:
        samples, self.samples = self.samples, []
        for sample in samples:
            try:
                self.nvml.nvmlGpmSampleFree(sample)
            except Exception:
                log.debug("freeing a GPM sample failed", exc_info=True)
