"""Samplers on a CPU machine: the sampler thread, the real system sampler and torch (the NVML
sampler: test_gpu_sampler.py)."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time

import pytest

from traintel.core import catalog
from traintel.samplers import LOCK_WAIT_S, MAX_FAILURES, SamplerThread, default_samplers
from traintel.samplers.cuda import cuda_sampler, oom_details, readings_from_stats
from traintel.samplers.system import SystemSampler

GiB = 1024**3


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
    assert messages == [
        "traintel sampler 'failing' failed (logged once)",
        "traintel sampler 'failing' failed 3 times in a row: disabled for this run",
    ]
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
    assert [r.getMessage() for r in caplog.records] == [
        "traintel sampler callback failed (logged once)"
    ]


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


def test_system_sampler_plausible_real_values(tmp_path, assert_catalog):
    sampler = SystemSampler(str(tmp_path / "not-yet-created" / "run"))
    started = time.process_time()
    while time.process_time() - started < 0.05:  # CPU the sample must see: 5 clock ticks
        sum(i * i for i in range(10_000))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        readings = sampler.sample()
    finally:
        child.kill()
        child.wait()
    assert_catalog(readings)
    got = {name: value for name, value, _ in readings}
    assert 0 < got["traintel_process_cpu_utilization_ratio"] <= 1  # over the usable CPUs
    assert 0 <= got["traintel_host_cpu_utilization_ratio"] <= 1
    assert (
        10 * 1024**2
        < got["traintel_process_memory_rss_bytes"]
        < got["traintel_host_memory_total_bytes"]
    )
    assert 0 < got["traintel_host_memory_used_bytes"] <= got["traintel_host_memory_total_bytes"]
    assert 0 < got["traintel_disk_used_bytes"] <= got["traintel_disk_total_bytes"]
    assert got["traintel_dataloader_workers"] >= 1
    assert {name for name, _, _ in readings} == {
        m.name for m in catalog.METRICS if m.group == "system"
    }
    assert {n: v for n, v, _ in sampler.sample()}["traintel_dataloader_workers"] == got[
        "traintel_dataloader_workers"
    ] - 1


# --- CUDA allocator (real torch, no GPU) ----------------------------------------------------


def test_allocator_readings_from_stats(assert_catalog):
    stats = {
        "allocated_bytes.all.current": 3 * GiB,
        "reserved_bytes.all.current": 4 * GiB,
        "allocated_bytes.all.peak": 5 * GiB,
        "num_alloc_retries": 2,
        "num_ooms": 1,
    }
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
    code = (
        "import sys; from traintel.samplers.cuda import CudaSampler; "
        "assert CudaSampler().sample() == []; assert 'torch' not in sys.modules"
    )
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


@pytest.mark.parametrize(
    "size, expected",
    [
        ("512 bytes", 512),
        ("2.00 MiB", 2 * 1024**2),
        ("1.50 KiB", 1536),
        ("0.50 GiB", GiB // 2),
    ],
)
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
