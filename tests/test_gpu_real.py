"""The samplers against a real NVIDIA GPU (NVML and the torch CUDA allocator); skipped elsewhere."""

from __future__ import annotations

import json
import re
import statistics
import time

import pytest

from traintel.core import catalog


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
    gpus = {labels["uuid"] for name, _, labels in readings if "gpu_i_id" not in labels}
    mine = {u for u in gpus if uuid and u.endswith(uuid)} or gpus
    assert len(mine) == 1, gpus
    naming = set(catalog.GPU_LABELS) | {"driver_version"}
    return {
        (name, next((v for k, v in labels.items() if k not in naming), None)): value
        for name, value, labels in readings
        if labels["uuid"] in mine and "gpu_i_id" not in labels
    }


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
    print(
        json.dumps({f"{n}{'{' + k + '}' if k else ''}": v for (n, k), v in after.items()}, indent=1)
    )
    used = "traintel_gpu_memory_used_bytes", None
    total = after["traintel_gpu_memory_total_bytes", None]
    assert after[used] - before[used] >= 0.9 * GiB
    # NVML counts memory the driver reserves; CUDA (torch) does not: a few hundred MiB apart.
    torch_total = torch.cuda.get_device_properties(0).total_memory
    assert abs(total - torch_total) <= max(GiB, 0.02 * torch_total), (total, torch_total)
    assert 0 <= after["traintel_gpu_utilization_ratio", None] <= 1
    assert 0 <= after["traintel_gpu_memory_controller_utilization_ratio", None] <= 1
    assert (
        10
        < after["traintel_gpu_power_watts", None]
        <= after["traintel_gpu_power_limit_watts", None] * 1.2
    )
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
    assert got["traintel_cuda_memory_reserved_unallocated_bytes"] == torch.cuda.memory_reserved(
        0
    ) - torch.cuda.memory_allocated(0)
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


def _busy(torch, seconds: float) -> None:
    """Matrix multiplications on cuda:0 for about ``seconds`` (bf16 where the GPU has it)."""
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    a = torch.randn(8192, 8192, device="cuda:0", dtype=dtype)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(20):
            a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()


def test_added_fields_plausible_under_load(torch):
    """Memory clock and temperature, PCIe replays, remapped rows, recovery action, NVLink, Xid
    registration and GPM activity (Hopper and newer), read while the GPU multiplies matrices."""
    from traintel.samplers.gpu import gpu_sampler

    sampler = gpu_sampler(local_rank=None)
    assert sampler is not None
    try:
        _gpu0_readings(torch, sampler)  # GPM's first sample
        _busy(torch, 3.0)
        got = _gpu0_readings(torch, sampler)
        devices = [d for d in sampler.devices if d.parent is None]
        notes = {d.labels["uuid"]: d.unsupported for d in devices}
        xid_watched = sampler.watcher.event_set is not None
        assert sampler.events() == []  # no Xid is expected on a healthy GPU
    finally:
        sampler.close()
    print(
        json.dumps({f"{n}{'{' + k + '}' if k else ''}": v for (n, k), v in got.items()}, indent=1)
    )
    print("not reported by this GPU or driver:", json.dumps(notes, indent=1))
    print("Xid events watched:", xid_watched)
    labels = {k: v for k, v in devices[0].labels.items()}
    print("labels:", labels)
    props = torch.cuda.get_device_properties(0)
    assert re.fullmatch(r"[0-9A-F]{8}:[0-9A-F]{2}:[0-9A-F]{2}\.[0-9A-F]", labels["pci_bus_id"])
    if len(devices) == 1:
        assert int(labels["pci_bus_id"].split(":")[1], 16) == props.pci_bus_id
    assert 1e8 < got["traintel_gpu_memory_clock_hertz", None] < 2e10
    if ("traintel_gpu_memory_temperature_celsius", None) in got:
        assert 10 < got["traintel_gpu_memory_temperature_celsius", None] < 110
    for name, key in got:
        if name.endswith("_total") or name in (
            "traintel_gpu_row_remap_pending",
            "traintel_gpu_row_remap_failed",
        ):
            assert got[name, key] >= 0, (name, key)
    if ("traintel_gpu_recovery_action", None) in got:
        assert got["traintel_gpu_recovery_action", None] in (0, 1, 2, 3, 4)
    if props.major >= 9:  # Hopper and newer have GPM
        assert got["traintel_gpu_tensor_active_ratio", None] > 0.05, got
        assert got["traintel_gpu_sm_active_ratio", None] > 0.05, got
        assert got["traintel_gpu_engine_active_ratio", None] > 0.2, got
    else:
        print(f"compute capability {props.major}.{props.minor}: no GPM (Hopper and newer)")


def test_mig_instances_where_the_gpu_is_in_mig_mode(torch):
    import pynvml

    from traintel.samplers.gpu import gpu_sampler

    pynvml.nvmlInit()
    try:
        modes = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            try:
                modes.append(
                    pynvml.nvmlDeviceGetMigMode(pynvml.nvmlDeviceGetHandleByIndex(index))[0]
                )
            except pynvml.NVMLError:
                modes.append(None)
    finally:
        pynvml.nvmlShutdown()
    if pynvml.NVML_DEVICE_MIG_ENABLE not in modes:
        pytest.skip(f"no GPU in MIG mode here (MIG modes by GPU: {modes})")
    sampler = gpu_sampler(local_rank=None, all_gpus=True)
    try:
        sampler.sample()
        time.sleep(1)
        readings = sampler.sample()
    finally:
        sampler.close()
    mig = [(n, v, labels) for n, v, labels in readings if "gpu_i_id" in labels]
    print(json.dumps(mig, indent=1))
    assert {n for n, _, _ in mig} >= {
        "traintel_gpu_mig_info",
        "traintel_gpu_mig_memory_used_bytes",
        "traintel_gpu_mig_memory_total_bytes",
    }


def test_cost_of_each_nvml_field(torch):
    """Wall time of each field's NVML calls on this GPU (medians of 20), printed for the closing
    note and docs/gpu.md: what one sample costs the sampler thread, GPM included."""
    from traintel.samplers.gpu import gpu_sampler

    sampler = gpu_sampler(local_rank=0)
    assert sampler is not None
    try:
        device = next(d for d in sampler.devices if d.parent is None)
        costs = {}
        for name, read in device.fields.items():
            times = []
            for _ in range(20):
                device.values = None  # each round pays for its field values call
                start = time.perf_counter()
                try:
                    read(sampler.nvml, device)
                except sampler.nvml.NVMLError as exc:
                    times = [str(exc)]
                    break
                times.append(time.perf_counter() - start)
            costs[name] = (
                times[0] if isinstance(times[0], str) else round(statistics.median(times) * 1e3, 3)
            )
        whole = []
        for _ in range(20):
            start, cpu = time.perf_counter(), time.thread_time()
            sampler.sample()
            whole.append((time.perf_counter() - start, time.thread_time() - cpu))
    finally:
        sampler.close()
    print("median ms per field (or why it is not read):", json.dumps(costs, indent=1))
    print(
        f"one whole sample: {statistics.median(w for w, _ in whole) * 1e3:.2f} ms wall, "
        f"{statistics.median(c for _, c in whole) * 1e3:.2f} ms CPU (median of 20)"
    )
