"""The samplers against a real NVIDIA GPU (NVML and the torch CUDA allocator); skipped elsewhere."""

from __future__ import annotations

import json

import pytest

from traintel import catalog


def _gpu_present() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
        import torch

        return count > 0 and torch.cuda.is_available()
    except Exception:
        return False


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _gpu_present(), reason="no NVIDIA GPU: nvidia-smi/NVML unavailable"),
]

GiB = 1024**3


@pytest.fixture(scope="module")
def torch():
    import torch

    torch.zeros(1, device="cuda:0")  # create the context first: it takes memory of its own
    torch.cuda.synchronize()
    return torch


def _gpu0_readings(torch, sampler):
    """Readings of the GPU torch calls cuda:0 (matched by UUID; the only one if UUIDs differ)."""
    readings = sampler.sample()
    uuid = str(getattr(torch.cuda.get_device_properties(0), "uuid", ""))
    gpus = {labels["gpu_uuid"] for _, _, labels in readings}
    mine = {u for u in gpus if uuid and u.endswith(uuid)} or gpus
    assert len(mine) == 1, gpus
    return {(name, labels.get("reason") or labels.get("direction")): value
            for name, value, labels in readings if labels["gpu_uuid"] in mine}


def test_nvml_values_plausible(torch):
    from traintel.samplers.gpu import gpu_sampler

    sampler = gpu_sampler(local_rank=None)
    assert sampler is not None
    try:
        torch.cuda.empty_cache()  # so that the next allocation is a fresh cudaMalloc
        before = _gpu0_readings(torch, sampler)
        block = torch.empty(GiB, dtype=torch.uint8, device="cuda:0")
        torch.cuda.synchronize()
        after = _gpu0_readings(torch, sampler)
    finally:
        sampler.close()
    print(json.dumps({f"{n}{'{' + k + '}' if k else ''}": v for (n, k), v in after.items()},
                     indent=1))
    used = "traintel_gpu_memory_used_bytes", None
    total = after["traintel_gpu_memory_total_bytes", None]
    assert after[used] - before[used] >= 0.9 * GiB
    # NVML counts memory the driver reserves; CUDA (torch) does not: a few hundred MiB apart.
    torch_total = torch.cuda.get_device_properties(0).total_memory
    assert abs(total - torch_total) <= max(GiB, 0.02 * torch_total), (total, torch_total)
    assert 0 <= after["traintel_gpu_utilization_ratio", None] <= 1
    assert 0 <= after["traintel_gpu_memory_utilization_ratio", None] <= 1
    assert 10 < after["traintel_gpu_power_watts", None] <= after[
        "traintel_gpu_power_limit_watts", None] * 1.2
    assert 10 < after["traintel_gpu_temperature_celsius", None] < 100
    assert 1e8 < after["traintel_gpu_sm_clock_hertz", None] < 4e9
    names = {name for name, _ in after}
    missing = {m.name for m in catalog.METRICS if m.group == "gpu"} - names
    print("GPU fields this driver/GPU does not report:", sorted(missing))
    del block


def test_allocator_figures_match_torch(torch):
    from traintel.samplers.cuda import CudaSampler

    block = torch.empty(256 * 1024**2, dtype=torch.uint8, device="cuda:0")
    readings = CudaSampler().sample()
    got = {name: value for name, value, labels in readings if labels["device"] == "0"}
    assert got["traintel_cuda_memory_allocated_bytes"] == torch.cuda.memory_allocated(0)
    assert got["traintel_cuda_memory_reserved_bytes"] == torch.cuda.memory_reserved(0)
    assert got["traintel_cuda_memory_peak_allocated_bytes"] >= torch.cuda.memory_allocated(0)
    assert got["traintel_cuda_memory_reserved_unallocated_bytes"] == \
        torch.cuda.memory_reserved(0) - torch.cuda.memory_allocated(0)
    for name, _, labels in readings:
        assert set(labels) == set(catalog.BY_NAME[name].labels)
    del block


def test_provoked_oom_details(torch):
    from traintel.samplers.cuda import oom_details

    capacity = torch.cuda.get_device_properties(0).total_memory
    try:
        torch.empty(2 * capacity, dtype=torch.uint8, device="cuda:0")
    except torch.cuda.OutOfMemoryError as exc:
        details = oom_details(exc)
    else:
        pytest.fail("allocating twice the card's memory did not raise")
    print(json.dumps(details, indent=1))
    assert all(value is not None for value in details.values()), details
    assert details["device"] == 0
    assert abs(details["requested_bytes"] - 2 * capacity) <= 0.01 * capacity  # "x.xx GiB"
    assert details["capacity_bytes"] == capacity
    assert 0 < details["free_bytes"] <= capacity
    assert details["num_ooms"] >= 1
    assert details["reserved_bytes"] >= details["allocated_bytes"]
    assert 0 < len(details["memory_summary"].splitlines()) <= 40
    assert details["hints"]
