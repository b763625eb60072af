"""Samplers on a CPU machine: the real system sampler and torch, NVML through a stand-in."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time

import pynvml as real_nvml
import pytest

from traintel import catalog
from traintel.samplers import LOCK_WAIT_S, MAX_FAILURES, SamplerThread, default_samplers
from traintel.samplers.cuda import CudaSampler, cuda_sampler, oom_details, readings_from_stats
from traintel.samplers.gpu import (MAX_FIELD_FAILURES, THROTTLE_REASONS, decode_throttle,
                                   gpu_sampler, select_gpus)
from traintel.samplers.system import SystemSampler

GiB = 1024**3
UUIDS = ["GPU-aaaa1111-0000", "GPU-bbbb2222-0000", "GPU-cccc3333-0000", "GPU-dddd4444-0000"]


def assert_catalog(readings):
    """Every reading is a catalog metric with exactly its extra labels (the core adds the base)."""
    assert readings
    for name, value, labels in readings:
        metric = catalog.BY_NAME[name]
        assert set(labels) == set(metric.all_labels) - set(catalog.BASE_LABELS), name
        assert isinstance(value, float) and all(isinstance(v, str) for v in labels.values())


# --- NVML through a stand-in ---------------------------------------------------------------


class FakeNvml:
    """Stand-in for the pynvml module (NVML cannot run without a GPU: see test_gpu_real.py).

    Raw values in NVML's own units; ``errors`` maps (gpu index, field name) to the NVML error
    code its read fails with, raised as the real bindings' error; ``calls`` counts calls per field.
    """

    NVMLError = real_nvml.NVMLError
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    NVML_PCIE_UTIL_TX_BYTES = 0
    NVML_PCIE_UTIL_RX_BYTES = 1

    def __init__(self, count=4, throttle=0x4 | 0x1):
        self.count, self.throttle = count, throttle
        self.errors: dict[tuple[int, str], int] = {}
        self.calls: dict[str, int] = {}
        self.initialised = 0

    def __getattr__(self, name):
        if name.startswith("NVML_ERROR_"):  # the error codes, as the bindings define them
            return getattr(real_nvml, name)
        raise AttributeError(name)

    def _read(self, name, handle, value):
        self.calls[name] = self.calls.get(name, 0) + 1
        if (handle, name) in self.errors:
            raise real_nvml.NVMLError(self.errors[handle, name])  # builds the code's subclass
        return value

    def nvmlInit(self):
        self.initialised += 1

    def nvmlShutdown(self):
        self.initialised -= 1

    def nvmlDeviceGetCount(self):
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetUUID(self, handle):
        return UUIDS[handle].encode()  # pynvml returns bytes here

    def nvmlDeviceGetName(self, handle):
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, handle):
        return self._read("memory", handle, type("Mem", (), {"used": 2 * GiB, "total": 80 * GiB}))

    def nvmlDeviceGetUtilizationRates(self, handle):
        return self._read("utilization", handle, type("Util", (), {"gpu": 50, "memory": 20}))

    def nvmlDeviceGetPowerUsage(self, handle):
        return self._read("power", handle, 300_000)  # mW

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return self._read("power_limit", handle, 700_000)  # mW

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        return self._read("energy", handle, 5_000_000)  # mJ

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return self._read("temperature", handle, 45)

    def nvmlDeviceGetClockInfo(self, handle, clock):
        return self._read("sm_clock", handle, 1980)  # MHz

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return self._read("throttle", handle, self.throttle)

    def nvmlDeviceGetTotalEccErrors(self, handle, error_type, counter):
        return self._read("ecc", handle, 0)

    def nvmlDeviceGetPcieThroughput(self, handle, counter):
        return self._read("pcie", handle, 1000 if counter == self.NVML_PCIE_UTIL_TX_BYTES else 2000)


@pytest.fixture
def nvml(monkeypatch):
    """A FakeNvml installed as ``pynvml`` (no GPU on this machine)."""
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return fake


def by_name(readings, gpu="0"):
    return {(n, labels.get("reason") or labels.get("direction")): v
            for n, v, labels in readings if labels["gpu"] == gpu}


def test_nvml_readings_units_labels_and_catalog(nvml):
    # NVML stand-in: no GPU here.
    sampler = gpu_sampler(local_rank=None)
    readings = sampler.sample()
    assert_catalog(readings)
    assert {labels["gpu"] for _, _, labels in readings} == {"0", "1", "2", "3"}
    assert readings[0][2]["gpu_uuid"] == UUIDS[0]
    assert readings[0][2]["gpu_name"] == "NVIDIA H100 80GB HBM3"
    got = by_name(readings)
    assert got[("traintel_gpu_memory_used_bytes", None)] == 2 * GiB
    assert got[("traintel_gpu_utilization_ratio", None)] == 0.5
    assert got[("traintel_gpu_memory_utilization_ratio", None)] == 0.2
    assert got[("traintel_gpu_power_watts", None)] == 300.0
    assert got[("traintel_gpu_power_limit_watts", None)] == 700.0
    assert got[("traintel_gpu_energy_joules_total", None)] == 5000.0
    assert got[("traintel_gpu_temperature_celsius", None)] == 45.0
    assert got[("traintel_gpu_sm_clock_hertz", None)] == 1.98e9
    assert got[("traintel_gpu_throttled", "sw_power_cap")] == 1.0
    assert got[("traintel_gpu_throttled", "hw_thermal")] == 0.0
    assert got[("traintel_gpu_pcie_bytes_per_second", "tx")] == 1000 * 1024.0
    assert got[("traintel_gpu_pcie_bytes_per_second", "rx")] == 2000 * 1024.0
    gpu_metrics = {m.name for m in catalog.METRICS if m.group == "gpu"}
    assert {name for name, _ in got} == gpu_metrics
    sampler.close()
    assert nvml.initialised == 0


def test_nvml_unsupported_field_dropped_for_that_gpu_only_and_not_retried(nvml):
    # NVML stand-in: no GPU here.
    nvml.errors = {(1, "power"): real_nvml.NVML_ERROR_NOT_SUPPORTED,
                   (1, "ecc"): real_nvml.NVML_ERROR_NO_PERMISSION}
    sampler = gpu_sampler(local_rank=None)
    for _ in range(3):
        readings = sampler.sample()
    assert ("traintel_gpu_power_watts", None) not in by_name(readings, "1")
    assert ("traintel_gpu_ecc_errors_uncorrected_total", None) not in by_name(readings, "1")
    assert ("traintel_gpu_power_limit_watts", None) in by_name(readings, "1")
    assert ("traintel_gpu_power_watts", None) in by_name(readings, "0")
    assert nvml.calls["power"] == 3 * 3 + 1  # three healthy GPUs every time, GPU 1 once
    assert nvml.calls["temperature"] == 4 * 3


def test_nvml_passing_failure_skips_one_sample_and_repeated_ones_drop_the_field(nvml):
    # NVML stand-in: no GPU here.
    sampler = gpu_sampler(local_rank=None)
    nvml.errors = {(0, "temperature"): real_nvml.NVML_ERROR_TIMEOUT}
    assert ("traintel_gpu_temperature_celsius", None) not in by_name(sampler.sample())
    nvml.errors = {}
    assert ("traintel_gpu_temperature_celsius", None) in by_name(sampler.sample())  # retried
    nvml.errors = {(0, "temperature"): real_nvml.NVML_ERROR_UNKNOWN}
    for _ in range(MAX_FIELD_FAILURES + 2):
        sampler.sample()
    calls = nvml.calls["temperature"]
    nvml.errors = {}
    assert ("traintel_gpu_temperature_celsius", None) not in by_name(sampler.sample())
    assert nvml.calls["temperature"] == calls + 3  # the three other GPUs only: GPU 0's dropped
    # one success between failures starts the count again
    nvml.errors = {(1, "sm_clock"): real_nvml.NVML_ERROR_TIMEOUT}
    for _ in range(MAX_FIELD_FAILURES - 1):
        sampler.sample()
    nvml.errors = {}
    sampler.sample()
    nvml.errors = {(1, "sm_clock"): real_nvml.NVML_ERROR_TIMEOUT}
    sampler.sample()
    nvml.errors = {}
    assert ("traintel_gpu_sm_clock_hertz", None) in by_name(sampler.sample(), "1")


def test_a_lost_gpu_is_one_warning_and_no_longer_sampled(nvml, caplog):
    # NVML stand-in: no GPU here.
    sampler = gpu_sampler(local_rank=None)
    nvml.errors = {(2, "utilization"): real_nvml.NVML_ERROR_GPU_IS_LOST}
    with caplog.at_level(logging.DEBUG, "traintel.samplers"):
        first = sampler.sample()
        calls = dict(nvml.calls)
        second = sampler.sample()
    assert by_name(first, "2") == {("traintel_gpu_memory_used_bytes", None): 2 * GiB,
                                   ("traintel_gpu_memory_total_bytes", None): 80 * GiB}
    assert not by_name(second, "2") and by_name(second, "3")
    assert nvml.calls["memory"] == calls["memory"] + 3
    (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.getMessage().startswith(f"GPU 2 (NVIDIA H100 80GB HBM3, {UUIDS[2]}) is lost")
    assert "Xid" in warning.getMessage()


def test_no_nvml_library_is_one_info_line(caplog):
    # Real pynvml against this machine, which has no NVIDIA driver.
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("an NVIDIA driver is present here")
    with caplog.at_level(logging.INFO, "traintel.samplers"):
        assert gpu_sampler(local_rank=None) is None
    assert [r.getMessage() for r in caplog.records] == \
        ["no NVIDIA driver: GPU metrics off (NVML Shared Library Not Found)"]


def test_nvidia_ml_py_missing_is_one_info_line(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with caplog.at_level(logging.INFO, "traintel.samplers"):
        assert gpu_sampler(local_rank=None) is None
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage().startswith("no NVIDIA driver: GPU metrics off")


@pytest.mark.parametrize("visible, local_rank, expected", [
    (None, None, [0, 1, 2, 3]),
    ("2,0", None, [2, 0]),
    ("", None, []),
    ("-1", None, []),
    ("1,7,2", None, [1]),  # as in CUDA, an entry naming no GPU ends the list
    ("GPU-cccc3333-0000", None, [2]),
    ("GPU-dddd,bbbb2222", None, [3, 1]),  # unique prefixes, with or without GPU-
    ("GPU-", None, []),  # ambiguous prefix
    ("MIG-0f9e8d7c-1234,3", None, [3]),  # MIG instances are not sampled
    (" 1 , 3 ", None, [1, 3]),
    (None, 2, [2]),
    ("3,1", 1, [1]),  # the local_rank-th visible GPU, as cuda:<local_rank>
    ("3", 1, [3]),  # one visible GPU: it is this rank's whatever the rank
    (None, 9, [0, 1, 2, 3]),  # rank beyond the visible GPUs: report them all
])
def test_select_gpus(visible, local_rank, expected):
    assert select_gpus(UUIDS, visible, local_rank) == expected


def test_select_all_gpus_overrides_visibility_and_rank():
    assert select_gpus(UUIDS, "1", 0, all_gpus=True) == [0, 1, 2, 3]


def test_cuda_visible_devices_and_local_rank_pick_the_labelled_gpu(nvml, monkeypatch, caplog):
    # NVML stand-in: no GPU here.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-dddd4444-0000,GPU-bbbb2222-0000")
    readings = gpu_sampler(local_rank=1).sample()
    assert {(labels["gpu"], labels["gpu_uuid"]) for _, _, labels in readings} == \
        {("1", UUIDS[1])}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with caplog.at_level(logging.INFO, "traintel.samplers"):
        assert gpu_sampler(local_rank=None) is None
    assert "no NVIDIA GPU for this process" in caplog.records[-1].getMessage()
    assert nvml.initialised == 1  # the first sampler still open; the refused one shut down


def test_throttle_reasons():
    reasons = decode_throttle(0x1 | 0x4 | 0x40)
    assert "idle" not in reasons and len(reasons) == len(THROTTLE_REASONS) + 1
    assert {r for r, active in reasons.items() if active} == {"sw_power_cap", "hw_thermal"}
    assert decode_throttle(0x1) == dict.fromkeys(reasons, 0.0)  # idle alone is not throttling
    assert decode_throttle(0x10000)["other"] == 1.0


def test_throttle_reads_the_deprecated_call_on_old_bindings(nvml):
    # NVML stand-in: no GPU here.
    nvml.nvmlDeviceGetCurrentClocksEventReasons = None  # bindings older than driver 535
    nvml.nvmlDeviceGetCurrentClocksThrottleReasons = lambda handle: 0x20
    got = by_name(gpu_sampler(local_rank=0).sample())
    assert got[("traintel_gpu_throttled", "sw_thermal")] == 1.0


# --- the sampler thread ---------------------------------------------------------------------


class Counting:
    name = "counting"

    def __init__(self):
        self.calls = 0
        self.closed = False

    def sample(self):
        self.calls += 1
        return [("traintel_dataloader_workers", float(self.calls), {})]

    def close(self):
        self.closed = True


class Failing(Counting):
    name = "failing"

    def __init__(self, pattern="x" * 100):
        super().__init__()
        self.pattern = pattern  # "x" fails, "." succeeds, one character per call

    def sample(self):
        self.calls += 1
        if self.pattern[self.calls - 1] == "x":
            raise OSError("sensor gone")
        return []


def test_failing_sampler_logged_once_disabled_after_n_thread_survives(caplog):
    good, bad = Counting(), Failing()
    batches = []
    thread = SamplerThread([bad, good], interval_s=0.01, on_readings=batches.append)
    with caplog.at_level(logging.WARNING, "traintel.samplers"):
        thread.start()
        deadline = time.monotonic() + 5
        while len(batches) < MAX_FAILURES + 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        thread.stop()
    assert bad.calls == MAX_FAILURES and bad.closed
    assert good.calls >= MAX_FAILURES + 5 and all(batches)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["traintel sampler 'failing' failed (logged once)",
                        "traintel sampler 'failing' failed 3 times in a row: disabled for this run"]
    assert caplog.records[0].exc_info is not None


def test_failures_must_be_consecutive_to_disable():
    flaky = Failing("xx.xx.xx.")
    thread = SamplerThread([flaky])
    for _ in range(9):
        thread.sample_now()
    assert flaky.calls == 9 and not flaky.closed


def test_callback_failure_logged_once_and_thread_goes_on(caplog):
    calls = []

    def explode(readings):
        calls.append(readings)
        raise ValueError("exporter broke")

    thread = SamplerThread([Counting()], interval_s=0.01, on_readings=explode)
    with caplog.at_level(logging.WARNING, "traintel.samplers"):
        thread.start()
        deadline = time.monotonic() + 5
        while len(calls) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        alive = thread._thread.is_alive()
        thread.stop()
    assert len(calls) >= 5 and alive
    assert [r.getMessage() for r in caplog.records] == \
        ["traintel sampler callback failed (logged once)"]


def test_stop_returns_at_once_and_closes_samplers():
    sampler = Counting()
    thread = SamplerThread([sampler], interval_s=60.0)
    thread.start()
    while sampler.calls == 0:
        time.sleep(0.001)
    start = time.monotonic()
    thread.stop()
    assert time.monotonic() - start < 0.5
    assert not thread._thread.is_alive() and sampler.closed
    assert thread.sample_now() == []
    assert not any(t.name == "traintel-samplers" for t in threading.enumerate())


def test_stop_gives_up_on_a_stuck_sampler_without_closing_it():
    release = threading.Event()

    class Stuck(Counting):
        def sample(self):
            release.wait(5)
            return []

    stuck = Stuck()
    thread = SamplerThread([stuck])
    thread.start()
    start = time.monotonic()
    thread.stop(timeout=0.1)
    assert time.monotonic() - start < 0.5 and not stuck.closed
    start = time.monotonic()
    assert thread.sample_now() == []  # a crash report does not hang behind it either
    assert time.monotonic() - start < LOCK_WAIT_S + 0.5
    release.set()


# --- system sampler (real psutil) -----------------------------------------------------------


def test_system_sampler_plausible_real_values(tmp_path):
    sampler = SystemSampler(str(tmp_path / "not-yet-created" / "run"))
    sum(i * i for i in range(300_000))  # some CPU between construction and the sample
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        readings = sampler.sample()
    finally:
        child.kill()
        child.wait()
    assert_catalog(readings)
    got = {name: value for name, value, _ in readings}
    assert 0 < got["traintel_process_cpu_utilization_ratio"] < 64
    assert 0 <= got["traintel_host_cpu_utilization_ratio"] <= 1
    assert 10 * 1024**2 < got["traintel_process_memory_rss_bytes"] < got[
        "traintel_host_memory_total_bytes"]
    assert 0 < got["traintel_host_memory_used_bytes"] <= got["traintel_host_memory_total_bytes"]
    assert 0 < got["traintel_disk_used_bytes"] <= got["traintel_disk_total_bytes"]
    assert got["traintel_dataloader_workers"] >= 1
    assert {name for name, _, _ in readings} == \
        {m.name for m in catalog.METRICS if m.group == "system"}
    assert {n: v for n, v, _ in sampler.sample()}["traintel_dataloader_workers"] == \
        got["traintel_dataloader_workers"] - 1


# --- CUDA allocator (real torch, no GPU) ----------------------------------------------------

def test_allocator_readings_from_stats():
    stats = {"allocated_bytes.all.current": 3 * GiB, "reserved_bytes.all.current": 4 * GiB,
             "allocated_bytes.all.peak": 5 * GiB, "num_alloc_retries": 2, "num_ooms": 1}
    readings = readings_from_stats(1, stats, peak=6 * GiB)
    assert_catalog(readings)
    got = {name: value for name, value, _ in readings}
    assert got == {
        "traintel_cuda_memory_allocated_bytes": 3 * GiB,
        "traintel_cuda_memory_reserved_bytes": 4 * GiB,
        "traintel_cuda_memory_peak_allocated_bytes": 6 * GiB,
        "traintel_cuda_memory_reserved_unallocated_bytes": 1 * GiB,
        "traintel_cuda_alloc_retries_total": 2.0,
        "traintel_cuda_ooms_total": 1.0,
    }
    assert {labels["device"] for _, _, labels in readings} == {"1"}
    assert {name for name in got} == {m.name for m in catalog.METRICS if m.group == "cuda"}


def test_cuda_sampler_is_silent_and_side_effect_free_until_cuda_is_initialised():
    import torch

    sampler = cuda_sampler()
    if not torch.backends.cuda.is_built():
        assert sampler is None
        return
    assert sampler.sample() == []
    assert not torch.cuda.is_initialized()


def test_cuda_sampler_without_torch_imported_does_not_import_it():
    code = ("import sys; from traintel.samplers.cuda import CudaSampler; "
            "assert CudaSampler().sample() == []; assert 'torch' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_default_samplers_here(tmp_path):
    names = [s.name for s in default_samplers(str(tmp_path), local_rank=None)]
    assert names[0] == "system"
    assert set(names) <= {"system", "gpu", "cuda"}


OOM_MESSAGE = (
    "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 1 has a total capacity of 79.19 GiB of "
    "which 3.94 GiB is free. Including non-PyTorch memory, this process has 75.24 GiB memory in "
    "use. Of the allocated memory 74.50 GiB is allocated by PyTorch, and 120.00 MiB is reserved "
    "by PyTorch but unallocated."
)


def test_oom_details_from_message_without_a_cuda_device():
    details = oom_details(RuntimeError(OOM_MESSAGE))
    assert details["requested_bytes"] == 20 * GiB
    assert details["device"] == 1
    assert details["capacity_bytes"] is None  # CUDA not initialised here
    assert any("expandable_segments:True" in hint for hint in details["hints"])
    assert any("empty_cache" in hint for hint in details["hints"])


@pytest.mark.parametrize("size, expected", [
    ("512 bytes", 512), ("2.00 MiB", 2 * 1024**2), ("1.50 KiB", 1536), ("0.50 GiB", GiB // 2),
])
def test_oom_requested_size_units(size, expected):
    message = f"CUDA out of memory. Tried to allocate {size}. GPU 0 has a total capacity of"
    assert oom_details(RuntimeError(message))["requested_bytes"] == expected


def test_oom_details_recognises_the_torch_type_and_causes():
    import torch

    typed = torch.cuda.OutOfMemoryError("Tried to allocate 1.00 GiB")
    assert oom_details(typed)["requested_bytes"] == GiB
    try:
        try:
            raise typed
        except Exception as exc:
            raise ValueError("step failed") from exc
    except ValueError as wrapped:
        assert oom_details(wrapped, device=0)["device"] == 0


def test_oom_details_other_errors_and_never_raises():
    assert oom_details(ValueError("shape mismatch")) is None

    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no")

    assert oom_details(Unprintable()) is None
