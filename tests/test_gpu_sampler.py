"""The NVML sampler on a CPU machine: NVML through a stand-in (tests/fake_nvml.py) that raises
the real bindings' errors and answers with their structures; the no-driver path against the real
pynvml. The same sampler on a real GPU: test_gpu_real.py."""

from __future__ import annotations

import logging
import socket
import sys
import time

import pynvml as real_nvml
import pytest

import traintel
from fake_nvml import GPM_VALUES, NAME, UUIDS, FakeNvml, GiB
from traintel.core import catalog
from traintel.samplers import SamplerThread
from traintel.samplers.base import SamplerEvent
from traintel.samplers.gpu import (
    FIELDS,
    MAX_FIELD_FAILURES,
    THROTTLE_REASONS,
    decode_throttle,
    gpu_sampler,
    select_gpus,
)
from traintel.samplers.nvml_fields import FIELD_VALUES
from traintel.samplers.xid import NEEDS_RESET, XIDS, describe, level
from traintel.testing import capture

GPU_METRICS = {m.name for m in catalog.METRICS if m.group == "gpu"}
MIG_METRICS = {name for name in GPU_METRICS if name.startswith("traintel_gpu_mig_")}


@pytest.fixture
def nvml(monkeypatch):
    """A FakeNvml installed as ``pynvml`` (no GPU on this machine)."""
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return fake


def by_name(readings, gpu="0"):
    """(metric, its one distinguishing extra label value or None) -> value, for one GPU."""
    naming = set(catalog.MIG_LABELS)
    out = {}
    for name, value, labels in readings:
        if labels["gpu"] == gpu and "gpu_i_id" not in labels:
            extra = [v for k, v in labels.items() if k not in naming and k != "driver_version"]
            out[name, extra[0] if extra else None] = value
    return out


def info_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]


# --- every field, its unit and labels ---------------------------------------------------------


def test_every_field_units_labels_and_catalog(nvml, assert_catalog):
    # NVML stand-in: no GPU here.
    sampler = gpu_sampler(local_rank=None)
    sampler.sample()  # GPM measures between two samples
    nvml.xid(0, 13)
    readings = sampler.sample()
    assert_catalog(readings)
    assert {labels["gpu"] for _, _, labels in readings} == {"0", "1", "2", "3"}
    labels = readings[0][2]
    assert {k: labels[k] for k in catalog.GPU_LABELS} == {
        "gpu": "0",
        "uuid": UUIDS[0],
        "model_name": NAME,
        "pci_bus_id": "00000000:18:00.0",
        "hostname": socket.gethostname(),
    }
    got = by_name(readings)
    assert got == {
        ("traintel_gpu_info", None): 1.0,
        ("traintel_gpu_memory_used_bytes", None): 2 * GiB,
        ("traintel_gpu_memory_total_bytes", None): 80 * GiB,
        ("traintel_gpu_utilization_ratio", None): 0.5,
        ("traintel_gpu_memory_controller_utilization_ratio", None): 0.2,
        ("traintel_gpu_power_watts", None): 300.0,
        ("traintel_gpu_power_limit_watts", None): 700.0,
        ("traintel_gpu_energy_joules_total", None): 5000.0,
        ("traintel_gpu_temperature_celsius", None): 45.0,
        ("traintel_gpu_memory_temperature_celsius", None): 52.0,
        ("traintel_gpu_sm_clock_hertz", None): 1.98e9,
        ("traintel_gpu_memory_clock_hertz", None): 2.619e9,
        **{
            ("traintel_gpu_throttled", reason): float(reason == "sw_power_cap")
            for reason in [*THROTTLE_REASONS.values(), "other"]
        },
        ("traintel_gpu_ecc_errors_uncorrected_total", None): 0.0,
        ("traintel_gpu_remapped_rows_total", "correctable"): 2.0,
        ("traintel_gpu_remapped_rows_total", "uncorrectable"): 1.0,
        ("traintel_gpu_row_remap_pending", None): 1.0,
        ("traintel_gpu_row_remap_failed", None): 0.0,
        ("traintel_gpu_recovery_action", None): 0.0,
        ("traintel_gpu_xid_errors_total", "13"): 1.0,
        ("traintel_gpu_pcie_bytes_per_second", "tx"): 1000 * 1024.0,
        ("traintel_gpu_pcie_bytes_per_second", "rx"): 2000 * 1024.0,
        ("traintel_gpu_pcie_replays_total", None): 3.0,
        ("traintel_gpu_nvlink_bytes_total", "tx"): 4000 * 1024.0,
        ("traintel_gpu_nvlink_bytes_total", "rx"): 5000 * 1024.0,
        ("traintel_gpu_nvlink_errors_total", "crc_flit"): 7.0,
        ("traintel_gpu_nvlink_errors_total", "crc_data"): 8.0,
        ("traintel_gpu_nvlink_errors_total", "replay"): 9.0,
        ("traintel_gpu_nvlink_errors_total", "recovery"): 10.0,
        ("traintel_gpu_engine_active_ratio", None): 0.9,
        ("traintel_gpu_sm_active_ratio", None): 0.8,
        ("traintel_gpu_sm_occupancy_ratio", None): 0.4,
        ("traintel_gpu_tensor_active_ratio", None): 0.6,
        ("traintel_gpu_dram_active_ratio", None): 0.3,
    }
    assert {name for name, _ in got} == GPU_METRICS - MIG_METRICS
    info = next(labels for name, _, labels in readings if name == "traintel_gpu_info")
    assert info["driver_version"] == "570.86.15"
    sampler.close()
    assert nvml.initialised == 0 and nvml.event_sets == 0 and not nvml.gpm_samples


def test_field_values_are_one_nvml_call_per_gpu_and_sample(nvml):
    # NVML stand-in: no GPU here.
    sampler = gpu_sampler(local_rank=0)
    for _ in range(3):
        sampler.sample()
    assert nvml.calls["field_values"] == 3
    assert len(FIELD_VALUES) > 5


def test_every_gpu_metric_names_its_dcgm_field_and_semantic_convention():
    for metric in catalog.METRICS:
        if metric.group == "gpu":
            assert metric.dcgm and metric.semconv, metric.name
            assert set(catalog.GPU_LABELS) <= set(metric.labels), metric.name


# --- what a GPU or driver does not give -------------------------------------------------------


def test_unsupported_field_dropped_for_that_gpu_only_with_one_note(nvml, caplog):
    # NVML stand-in: no GPU here.
    nvml.errors = {
        (1, "power"): real_nvml.NVML_ERROR_NOT_SUPPORTED,
        (1, "ecc"): real_nvml.NVML_ERROR_NO_PERMISSION,
    }
    nvml.field_errors = {(1, real_nvml.NVML_FI_DEV_MEMORY_TEMP): real_nvml.NVML_ERROR_NOT_SUPPORTED}
    sampler = gpu_sampler(local_rank=None)
    with caplog.at_level(logging.INFO, "traintel.samplers"):
        for _ in range(3):
            readings = sampler.sample()
    gpu1 = by_name(readings, "1")
    assert ("traintel_gpu_power_watts", None) not in gpu1
    assert ("traintel_gpu_ecc_errors_uncorrected_total", None) not in gpu1
    assert ("traintel_gpu_memory_temperature_celsius", None) not in gpu1
    assert ("traintel_gpu_pcie_replays_total", None) in gpu1  # same NVML call, other field
    assert ("traintel_gpu_power_limit_watts", None) in gpu1
    assert ("traintel_gpu_power_watts", None) in by_name(readings, "0")
    assert ("traintel_gpu_memory_temperature_celsius", None) in by_name(readings, "0")
    assert nvml.calls["power"] == 3 * 3 + 1  # three healthy GPUs every time, GPU 1 once
    assert nvml.calls["temperature"] == 4 * 3
    assert info_lines(caplog) == [
        f"GPU 1 ({NAME}, {UUIDS[1]}): not reported by this GPU or driver: power (Not Supported), "
        "ecc (Insufficient Permissions), memory_temperature (Not Supported)"
    ]


def test_no_gpm_no_nvlink_no_xid_events_each_noted_once(nvml, caplog):
    # NVML stand-in: no GPU here. A PCIe card before Hopper, in a container without event rights.
    nvml.gpm_supported = False
    nvml.xid_supported = False
    nvml.field_errors = {
        (0, getattr(real_nvml, value.field_id)): real_nvml.NVML_ERROR_NOT_SUPPORTED
        for name, values in FIELD_VALUES.items()
        if name.startswith("nvlink")
        for value in values
    }
    with caplog.at_level(logging.INFO, "traintel.samplers"):
        sampler = gpu_sampler(local_rank=0)
        for _ in range(3):
            readings = sampler.sample()
    got = {name for name, _ in by_name(readings)}
    assert not got & {
        "traintel_gpu_nvlink_bytes_total",
        "traintel_gpu_nvlink_errors_total",
        "traintel_gpu_sm_active_ratio",
        "traintel_gpu_tensor_active_ratio",
    }
    assert "traintel_gpu_memory_temperature_celsius" in got
    assert nvml.calls["gpm_support"] == 1 and nvml.event_sets == 0
    (note,) = info_lines(caplog)
    assert note.startswith(
        f"GPU 0 ({NAME}, {UUIDS[0]}): not reported by this GPU or driver: "
        "xid_events (Not Supported), nvlink_bytes (Not Supported), "
    )
    assert note.endswith("activity (Not Supported)")


def test_old_driver_without_field_values_drops_them_all_after_one_call(nvml, caplog):
    # NVML stand-in: no GPU here.
    nvml.errors = {(0, "field_values"): real_nvml.NVML_ERROR_FUNCTION_NOT_FOUND}
    sampler = gpu_sampler(local_rank=0)
    with caplog.at_level(logging.INFO, "traintel.samplers"):
        for _ in range(3):
            readings = sampler.sample()
    assert nvml.calls["field_values"] == 1
    assert ("traintel_gpu_memory_temperature_celsius", None) not in by_name(readings)
    assert ("traintel_gpu_memory_clock_hertz", None) in by_name(readings)
    (note,) = info_lines(caplog)
    assert all(f"{name} (Function Not Found)" in note for name in FIELD_VALUES)


def test_bindings_without_a_field_constant_drop_that_field(nvml, monkeypatch):
    # NVML stand-in: no GPU here. Bindings older than NVML_FI_DEV_GET_GPU_RECOVERY_ACTION.
    original = FakeNvml.__getattr__

    def older(self, name):
        if name == "NVML_FI_DEV_GET_GPU_RECOVERY_ACTION":
            raise AttributeError(name)
        return original(self, name)

    monkeypatch.setattr(FakeNvml, "__getattr__", older)
    sampler = gpu_sampler(local_rank=0)
    got = by_name(sampler.sample())
    assert ("traintel_gpu_recovery_action", None) not in got
    assert ("traintel_gpu_row_remap_failed", None) in got


def test_passing_failure_skips_one_sample_and_repeated_ones_drop_the_field(nvml, caplog):
    # NVML stand-in: no GPU here.
    sampler = gpu_sampler(local_rank=None)
    nvml.errors = {(0, "temperature"): real_nvml.NVML_ERROR_TIMEOUT}
    assert ("traintel_gpu_temperature_celsius", None) not in by_name(sampler.sample())
    nvml.errors = {}
    assert ("traintel_gpu_temperature_celsius", None) in by_name(sampler.sample())  # retried
    nvml.errors = {(0, "temperature"): real_nvml.NVML_ERROR_UNKNOWN}
    with caplog.at_level(logging.INFO, "traintel.samplers"):
        for _ in range(MAX_FIELD_FAILURES + 2):
            sampler.sample()
    assert info_lines(caplog) == [
        f"GPU 0 ({NAME}, {UUIDS[0]}): temperature failed 3 times in a "
        "row (Unknown Error): no longer read"
    ]
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


def test_a_field_value_timing_out_is_a_passing_failure(nvml):
    # NVML stand-in: no GPU here.
    sampler = gpu_sampler(local_rank=0)
    nvml.field_errors = {
        (0, real_nvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER): real_nvml.NVML_ERROR_TIMEOUT
    }
    got = by_name(sampler.sample())
    assert ("traintel_gpu_pcie_replays_total", None) not in got
    assert ("traintel_gpu_memory_temperature_celsius", None) in got
    nvml.field_errors = {}
    assert ("traintel_gpu_pcie_replays_total", None) in by_name(sampler.sample())


@pytest.mark.parametrize("how", ["read", "field value"])
def test_a_lost_gpu_is_one_warning_and_no_longer_sampled(nvml, caplog, how):
    # NVML stand-in: no GPU here.
    sampler = gpu_sampler(local_rank=None)
    nvml.xid(2, 79)
    if how == "read":
        nvml.errors = {(2, "utilization"): real_nvml.NVML_ERROR_GPU_IS_LOST}
    else:
        nvml.field_errors = {
            (2, real_nvml.NVML_FI_DEV_MEMORY_TEMP): real_nvml.NVML_ERROR_GPU_IS_LOST
        }
    with caplog.at_level(logging.WARNING, "traintel.samplers"):
        first = sampler.sample()
        calls = dict(nvml.calls)
        second = sampler.sample()
    assert by_name(first, "2")[("traintel_gpu_memory_used_bytes", None)] == 2 * GiB
    assert ("traintel_gpu_xid_errors_total", "79") in by_name(second, "2")  # the count stays
    assert {name for name, _ in by_name(second, "2")} == {"traintel_gpu_xid_errors_total"}
    assert by_name(second, "3")
    assert nvml.calls["memory"] == calls["memory"] + 3
    (warning,) = caplog.records
    assert warning.getMessage().startswith(f"GPU 2 ({NAME}, {UUIDS[2]}) is lost")
    assert "Xid seen: 79." in warning.getMessage()
    assert [e.fields["xid"] for e in sampler.events()] == [79]


# --- Xid errors -------------------------------------------------------------------------------


def test_xid_events_code_meaning_level_and_counter(nvml):
    # NVML stand-in: no GPU here.
    nvml.mig = {}
    sampler = gpu_sampler(local_rank=None)
    assert set(nvml.registered) == {0, 1, 2, 3}
    assert sampler.events() == []
    nvml.xid(1, 79)
    nvml.xid(1, 13)
    nvml.xid(1, 13)
    nvml.xid(3, 999)
    readings = sampler.sample()
    events = sampler.events()
    assert sampler.events() == []  # handed over once
    labels = {k: v for k, v in by_labels(readings, "1").items() if k in catalog.GPU_LABELS}
    assert events[0] == SamplerEvent(
        "gpu_xid",
        "critical",
        {
            "xid": 79,
            "meaning": "GPU has fallen off the bus",
            "action": "RESTART_BM",
            "mnemonic": "ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS",
            **labels,
        },
    )
    assert [(e.fields["xid"], e.level) for e in events] == [
        (79, "critical"),
        (13, "error"),
        (13, "error"),
        (999, "error"),
    ]
    assert (
        events[3].fields["meaning"]
        == "Xid 999 is not in traintel's table: see NVIDIA's Xid catalog"
    )
    assert by_name(readings, "1")[("traintel_gpu_xid_errors_total", "13")] == 2.0
    assert by_name(readings, "1")[("traintel_gpu_xid_errors_total", "79")] == 1.0
    assert by_name(readings, "3")[("traintel_gpu_xid_errors_total", "999")] == 1.0
    assert ("traintel_gpu_xid_errors_total", "13") not in by_name(readings, "0")
    assert nvml.calls["event_wait"] == 5  # four events, then "timeout" at once


def by_labels(readings, gpu):
    return next(labels for _, _, labels in readings if labels["gpu"] == gpu)


def test_xids_of_gpus_this_process_does_not_use_are_not_reported(nvml, monkeypatch):
    # NVML stand-in: no GPU here.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    sampler = gpu_sampler(local_rank=0)
    nvml.xid(0, 79)
    nvml.xid(2, 48)
    sampler.sample()
    assert set(nvml.registered) == {2}
    assert [(e.fields["gpu"], e.fields["xid"]) for e in sampler.events()] == [("2", 48)]


def test_an_xid_of_a_mig_instance_names_the_instance(monkeypatch):
    fake = FakeNvml(mig={1: [3]})
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-10eeeeee")
    sampler = gpu_sampler(local_rank=0)
    fake.xid(1, 94, gpu_instance=3)
    sampler.sample()
    (event,) = sampler.events()
    assert (event.fields["gpu"], event.fields["gpu_i_id"], event.level) == ("1", "3", "error")


def test_xid_polling_that_keeps_failing_stops_with_one_note(nvml, caplog):
    # NVML stand-in: no GPU here.
    sampler = gpu_sampler(local_rank=0)
    nvml.errors = {("events", "wait"): real_nvml.NVML_ERROR_UNKNOWN}
    with caplog.at_level(logging.INFO, "traintel.samplers"):
        for _ in range(MAX_FIELD_FAILURES + 2):
            readings = sampler.sample()
    assert nvml.calls["event_wait"] == MAX_FIELD_FAILURES and nvml.event_sets == 0
    assert by_name(readings)[("traintel_gpu_power_watts", None)] == 300.0
    assert info_lines(caplog) == [
        "NVML Xid events failed 3 times in a row (Unknown Error): Xid "
        "errors are no longer watched; see `dmesg | grep -i xid`"
    ]


def test_xid_table():
    assert describe(79).needs_reset and describe(48).needs_reset and describe(95).needs_reset
    assert not describe(13).needs_reset and not describe(94).needs_reset
    assert not describe(63).needs_reset  # recorded; applied at the next reset
    assert {level(describe(c)) for c in (79, 48, 64)} == {"critical"}
    assert level(describe(92)) == "warning" and level(describe(31)) == "error"
    assert NEEDS_RESET == tuple(sorted(c for c, x in XIDS.items() if x.needs_reset))
    assert describe(40).mnemonic == "ROBUST_CHANNEL_CE1_ERROR"
    assert describe(135).mnemonic == "ROBUST_CHANNEL_CE19_ERROR"
    assert describe(105).mnemonic == "ROBUST_CHANNEL_NVJPG7_ERROR"
    assert describe(150).mnemonic == "NVLINK_MSE_ERROR"


def test_xid_reaches_the_record_the_logs_and_the_counter(nvml, tmp_path, quiet, recorded):
    # NVML stand-in: no GPU here; the rest is a real run.
    with capture() as telemetry:
        with traintel.init(
            project="t", dir=str(tmp_path), **{**quiet, "otlp": True, "sample_interval": 0.02}
        ) as run:
            nvml.xid(0, 79)
            deadline = time.monotonic() + 10
            while not run.state.events.get("gpu_xid") and time.monotonic() < deadline:
                time.sleep(0.02)
            telemetry.collect()
    (line,) = recorded(run.dir).of("event", "gpu_xid")
    assert line["level"] == "critical"
    assert line["fields"]["xid"] == 79 and line["fields"]["uuid"] == UUIDS[0]
    assert line["fields"]["meaning"] == "GPU has fallen off the bus"
    (log,) = [r for r in telemetry.log_records() if "gpu_xid" in str(r.body)]
    assert str(log.body).startswith(
        "gpu_xid xid=79 meaning=GPU has fallen off the bus action=RESTART_BM"
    )
    assert log.severity_text == "CRITICAL"
    (count,) = [
        p.value
        for attrs, p in telemetry.points("traintel_gpu_xid_errors_total")
        if attrs["xid"] == "79"
    ]
    assert count == 1


# --- profiling activity (GPM) -----------------------------------------------------------------


def test_gpm_measures_between_consecutive_samples(nvml):
    # NVML stand-in: no GPU here.
    sampler = gpu_sampler(local_rank=0)
    first = by_name(sampler.sample())
    assert ("traintel_gpu_tensor_active_ratio", None) not in first  # one sample: no interval
    for _ in range(3):
        got = by_name(sampler.sample())
        assert (
            got[("traintel_gpu_tensor_active_ratio", None)]
            == GPM_VALUES[real_nvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL] / 100
        )
    assert nvml.gpm_queries == [(1, 2), (2, 3), (3, 4)]  # each interval once, oldest first
    assert len(nvml.gpm_samples) == 2
    sampler.close()
    assert not nvml.gpm_samples


def test_a_gpm_metric_the_gpu_refuses_is_dropped_with_a_note(nvml, caplog):
    # NVML stand-in: no GPU here.
    nvml.field_errors = {
        ("gpm", real_nvml.NVML_GPM_METRIC_SM_OCCUPANCY): real_nvml.NVML_ERROR_NOT_SUPPORTED
    }
    sampler = gpu_sampler(local_rank=0)
    with caplog.at_level(logging.INFO, "traintel.samplers"):
        for _ in range(3):
            got = by_name(sampler.sample())
    assert ("traintel_gpu_sm_occupancy_ratio", None) not in got
    assert ("traintel_gpu_sm_active_ratio", None) in got
    assert info_lines(caplog) == [
        f"GPU 0 ({NAME}, {UUIDS[0]}): GPM does not measure "
        "traintel_gpu_sm_occupancy_ratio (NVML return 3) here"
    ]


def test_bindings_without_gpm_drop_activity(nvml, monkeypatch):
    # NVML stand-in: no GPU here. nvidia-ml-py older than GPM.
    monkeypatch.delattr(FakeNvml, "nvmlGpmSampleAlloc")
    sampler = gpu_sampler(local_rank=0)
    sampler.sample()
    got = by_name(sampler.sample())
    assert ("traintel_gpu_sm_active_ratio", None) not in got
    assert sampler.devices[0].unsupported["activity"] == "Function Not Found"


# --- MIG --------------------------------------------------------------------------------------


def mig_labels(readings):
    return {
        (name, labels["gpu_i_id"]): value
        for name, value, labels in readings
        if "gpu_i_id" in labels
    }


def test_a_mig_instance_in_cuda_visible_devices(monkeypatch, caplog, assert_catalog):
    # NVML stand-in: no GPU here. GPU 1 in MIG mode with GPU instances 3 and 5.
    fake = FakeNvml(mig={1: [3, 5]})
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-11eeeeee")
    with caplog.at_level(logging.INFO, "traintel.samplers"):
        sampler = gpu_sampler(local_rank=0)
        sampler.sample()
        readings = sampler.sample()
    assert_catalog(readings)
    assert mig_labels(readings) == {
        ("traintel_gpu_mig_info", "5"): 1.0,
        ("traintel_gpu_mig_memory_used_bytes", "5"): 3 * GiB,
        ("traintel_gpu_mig_memory_total_bytes", "5"): 10 * GiB,
        ("traintel_gpu_mig_engine_active_ratio", "5"): 0.9,
    }
    instance = next(labels for _, _, labels in readings if "gpu_i_id" in labels)
    assert instance["gpu_i_profile"] == "1g.10gb" and instance["uuid"] == UUIDS[1]
    gpu = by_name(readings, "1")  # the instance's GPU, for what only the whole GPU has
    assert gpu[("traintel_gpu_power_watts", None)] == 300.0
    assert ("traintel_gpu_info", None) not in gpu  # not used whole
    assert ("traintel_gpu_utilization_ratio", None) not in gpu
    assert {labels["gpu"] for _, _, labels in readings} == {"1"}
    assert fake.calls["gpm_mig_sample"] == 2
    assert any(
        line.startswith(
            f"GPU 1 ({NAME}, {UUIDS[1]}): not reported by this GPU or "
            "driver: utilization (Not Supported)"
        )
        for line in info_lines(caplog)
    )


def test_every_mig_instance_of_a_mig_gpu_without_cuda_visible_devices(monkeypatch):
    # NVML stand-in: no GPU here.
    fake = FakeNvml(count=2, mig={1: [3, 5]})
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    readings = gpu_sampler(local_rank=None).sample()
    assert {key for key in mig_labels(readings) if key[0] == "traintel_gpu_mig_info"} == {
        ("traintel_gpu_mig_info", "3"),
        ("traintel_gpu_mig_info", "5"),
    }
    assert ("traintel_gpu_info", None) in by_name(readings, "0")
    assert ("traintel_gpu_info", None) not in by_name(readings, "1")


# --- which devices ----------------------------------------------------------------------------

MIGS = {"MIG-1a2b3c4d-0000": 1, "MIG-1a2b9999-0000": 1, "MIG-77778888-0000": 3}


@pytest.mark.parametrize(
    "visible, local_rank, expected",
    [
        (None, None, [0, 1, 2, 3]),
        ("2,0", None, [2, 0]),
        ("", None, []),
        ("-1", None, []),
        ("1,7,2", None, [1]),  # as in CUDA, an entry naming no GPU ends the list
        ("GPU-cccc3333-0000", None, [2]),
        ("GPU-dddd,bbbb2222", None, [3, 1]),  # unique prefixes, with or without GPU-
        ("GPU-", None, []),  # ambiguous prefix
        ("MIG-77778888-0000,3", None, ["MIG-77778888-0000", 3]),
        ("MIG-1a2b3c", None, ["MIG-1a2b3c4d-0000"]),  # a unique prefix
        ("MIG-1a2b,0", None, []),  # ambiguous: ends the list
        ("MIG-GPU-aaaa1111-0000/1/0", None, []),  # the pre-R470 form names no instance now
        ("0,MIG-1a2b9999-0000", 1, ["MIG-1a2b9999-0000"]),  # the rank's device is an instance
        (" 1 , 3 ", None, [1, 3]),
        (None, 2, [2]),
        ("3,1", 1, [1]),  # the local_rank-th visible GPU, as cuda:<local_rank>
        ("3", 1, [3]),  # one visible GPU: it is this rank's whatever the rank
        (None, 9, [0, 1, 2, 3]),  # rank beyond the visible GPUs: report them all
    ],
)
def test_select_gpus(visible, local_rank, expected):
    assert select_gpus(UUIDS, visible, local_rank, migs=MIGS) == expected


def test_select_all_gpus_overrides_visibility_and_rank():
    assert select_gpus(UUIDS, "1", 0, all_gpus=True) == [0, 1, 2, 3]


def test_cuda_visible_devices_and_local_rank_pick_the_labelled_gpu(nvml, monkeypatch, caplog):
    # NVML stand-in: no GPU here.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-dddd4444-0000,GPU-bbbb2222-0000")
    readings = gpu_sampler(local_rank=1).sample()
    assert {(labels["gpu"], labels["uuid"]) for _, _, labels in readings} == {("1", UUIDS[1])}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with caplog.at_level(logging.INFO, "traintel.samplers"):
        assert gpu_sampler(local_rank=None) is None
    assert "no NVIDIA GPU for this process" in caplog.records[-1].getMessage()
    assert nvml.initialised == 1  # the first sampler still open; the refused one shut down


# --- no driver, old bindings, throttling ------------------------------------------------------


def test_no_nvml_library_is_one_info_line(caplog):
    # Real pynvml against this machine, which has no NVIDIA driver.
    try:
        real_nvml.nvmlInit()
    except real_nvml.NVMLError_LibraryNotFound:
        pass
    else:
        real_nvml.nvmlShutdown()
        pytest.skip("an NVIDIA driver is present here")
    with caplog.at_level(logging.INFO, "traintel.samplers"):
        assert gpu_sampler(local_rank=None) is None
    assert [r.getMessage() for r in caplog.records] == [
        "no NVIDIA driver: GPU metrics off (NVML Shared Library Not Found)"
    ]


def test_nvidia_ml_py_missing_is_one_info_line(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with caplog.at_level(logging.INFO, "traintel.samplers"):
        assert gpu_sampler(local_rank=None) is None
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage().startswith("no NVIDIA driver: GPU metrics off")


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


def test_every_nvml_name_the_sampler_uses_exists_in_the_pinned_bindings():
    """The stand-in forwards constants and structures to the real module; functions it defines
    itself must exist there too, with NVML's names."""
    own = {name for name in vars(FakeNvml) if name.startswith("nvml")}
    assert own - set(dir(real_nvml)) == set()
    assert "activity" in FIELDS


def test_sampler_thread_hands_xid_events_to_its_callback(nvml):
    # NVML stand-in: no GPU here.
    got = []
    thread = SamplerThread([gpu_sampler(local_rank=0)], interval_s=0.01, on_events=got.extend)
    nvml.xid(0, 48)
    thread.start()
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    thread.stop()
    assert [(e.name, e.fields["xid"]) for e in got] == [("gpu_xid", 48)]
