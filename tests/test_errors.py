"""Errors provoked for real inside runs: classification, the record line, the
``traintel_errors_total`` counter, span status and events, OTLP logs, and the crash report.

OOM and CUDA errors need an NVIDIA GPU and skip without one. An interrupted run (Ctrl-C,
SIGTERM) is not a crash: it gets summary.json with status "interrupted" and no crash report.
"""

from __future__ import annotations

import datetime
import gc
import json
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from traintel.cli import main
from traintel.core.errors import HINTS, classify
from traintel.testing import capture

no_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no NVIDIA GPU")


class _Images(torch.utils.data.Dataset):
    """A dataset whose third file is missing, as on a half-synced disk."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        if index == 2:
            open(f"/nonexistent/images/{index}.jpg", "rb")
        return torch.zeros(3)


def _loader_worker_fails(run):
    for _ in run.track(torch.utils.data.DataLoader(_Images(), batch_size=1, num_workers=1)):
        run.log(loss=1.0)


class _Labels(torch.utils.data.Dataset):
    """A dataset with a label its own check refuses, as a corrupt annotation file makes."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        if index == 2:
            raise ValueError(f"label -1 of sample {index} is not a class")
        return index


def _dataset_refuses_a_sample(run):
    """A framework's own loop (the Trainer, Lightning, Accelerate) iterates the loader: no
    run.track says that the batch failed; the traceback does."""
    for _ in torch.utils.data.DataLoader(_Labels(), batch_size=1):
        run.log(loss=1.0)


def _undecodable_text(run):
    b"caf\xe9 \xff\xfe".decode("utf-8")


def _shape_mismatch(run):
    with run.span("forward"):
        torch.nn.Linear(3, 2)(torch.zeros(4, 5))


def _dtype_mismatch(run):
    torch.nn.Linear(3, 2)(torch.zeros(4, 3, dtype=torch.float64))


def _nan_loss(run):
    run.check_finite(torch.log(torch.tensor(-1.0)))


def _missing_config_key(run):
    config = {"lr": 0.1}
    with run.span("load_config"):
        config["optimizer"]


def _wrong_checkpoint(run):
    checkpoint = torch.nn.Linear(4, 2).state_dict()
    torch.nn.Linear(3, 2).load_state_dict(checkpoint)


def _unwritable_checkpoint(run):
    with run.span("save_checkpoint"):
        torch.save({"step": 1}, "/nonexistent/checkpoints/step-1.pt")


def _connection_refused(run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    urllib.request.urlopen(f"http://127.0.0.1:{port}/dataset.tar", timeout=5)


def _lost_rank(run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=0,
        world_size=2,
        timeout=datetime.timedelta(seconds=1),
    )


def _bug(run):
    return 1 / 0


def _cuda_oom(run):
    torch.empty(1 << 45, dtype=torch.uint8, device="cuda")


def _bad_device(run):
    torch.zeros(1, device=f"cuda:{torch.cuda.device_count() + 7}")


@pytest.fixture(autouse=True)
def _reap_data_loader_workers():
    """A failed DataLoader iterator lives on in its traceback until garbage collection, and its
    __del__ joins the worker processes: collect it here, not inside a later test's run."""
    yield
    gc.collect()


CASES = [  # provoke, error type, severity, operation
    pytest.param(_loader_worker_fails, "data", "medium", "data_loading", id="data_loader"),
    pytest.param(
        _dataset_refuses_a_sample,
        "data",
        "medium",
        "data_loading",
        id="dataset_in_a_framework_loop",
    ),
    pytest.param(_undecodable_text, "data", "medium", None, id="decode"),
    pytest.param(_shape_mismatch, "data", "medium", "forward", id="shape"),
    pytest.param(_dtype_mismatch, "data", "medium", None, id="dtype"),
    pytest.param(_nan_loss, "nonfinite_loss", "high", "check_finite", id="nonfinite_loss"),
    pytest.param(_missing_config_key, "config", "medium", "load_config", id="config"),
    pytest.param(_wrong_checkpoint, "model_loading", "high", None, id="model_loading"),
    pytest.param(
        _unwritable_checkpoint, "checkpoint_io", "high", "save_checkpoint", id="checkpoint_io"
    ),
    pytest.param(_connection_refused, "network", "medium", None, id="network"),
    pytest.param(_lost_rank, "distributed", "high", None, id="distributed"),
    pytest.param(_bug, "other", "medium", None, id="other"),
    pytest.param(_cuda_oom, "oom", "critical", None, id="oom", marks=(pytest.mark.gpu, no_gpu)),
    pytest.param(_bad_device, "cuda", "critical", None, id="cuda", marks=(pytest.mark.gpu, no_gpu)),
]


@pytest.mark.parametrize("provoke, error_type, severity, operation", CASES)
def test_a_real_failure_is_classified_and_reaches_every_output(
    provoke, error_type, severity, operation, quiet_run, recorded
):
    with capture() as telemetry:
        with pytest.raises(Exception) as raised:
            with quiet_run(config={"lr": 0.1, "api_key": "sk-very-secret-123"}) as run:
                run.log(loss=1.0)
                provoke(run)
    assert run.state.status == "failed"

    (line,) = recorded(run.dir).of("error")
    assert (line["error_type"], line["severity"], line["operation"]) == (
        error_type,
        severity,
        operation,
    )
    assert line["exc_type"] == type(raised.value).__name__
    assert line["hints"] == list(HINTS[error_type])
    assert type(raised.value).__name__ in line["traceback"]

    assert telemetry.metric("traintel_errors_total") == [1]
    ((attributes, _),) = telemetry.points("traintel_errors_total")
    assert (attributes["error_type"], attributes["severity"]) == (error_type, severity)

    spans = {span.name: span for span in telemetry.spans.get_finished_spans()}
    # run.span makes a span of its own; run.track's loader errors land on the run's span
    failed = spans[
        "training_run" if operation in (None, "data_loading", "check_finite") else operation
    ]
    assert not failed.status.is_ok
    (event,) = [e for e in failed.events if e.name == "exception"]
    assert event.attributes["error_type"] == error_type
    assert event.attributes["exception.type"].endswith(type(raised.value).__name__)
    assert line["trace_id"] == format(failed.context.trace_id, "032x")
    assert not spans["training_run"].status.is_ok

    (log,) = [r for r in telemetry.log_records() if r.attributes.get("type") == "error"]
    assert log.attributes["error_type"] == error_type
    assert format(log.trace_id, "032x") == line["trace_id"]

    crash = json.loads((run.dir / "crash-report.json").read_text())
    assert [e["error_type"] for e in crash["errors"]] == [error_type]
    assert crash["config"] == {"lr": 0.1, "api_key": "[REDACTED]"}
    assert crash["last_events"][-1]["type"] == "run_end"
    assert crash["last_events"][-1]["status"] == "failed"


@pytest.mark.gpu
@no_gpu
def test_oom_error_carries_allocator_figures(quiet_run, recorded):
    with pytest.raises(torch.OutOfMemoryError):
        with quiet_run() as run:
            _cuda_oom(run)
    (line,) = recorded(run.dir).of("error")
    assert line["error_type"] == "oom" and line["context"]
    crash = json.loads((run.dir / "crash-report.json").read_text())
    assert crash["memory"]["cuda"] and crash["gpus"]


def test_an_oom_in_the_loop_is_recorded_with_its_details_and_re_raised(quiet_run, recorded):
    """torch's own exception type and message, raised by hand: no GPU here to run out of."""
    oom = torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.10 GiB "
        "of which 1.06 GiB is free. Of the allocated memory 76.02 GiB is allocated by PyTorch, "
        "and 1.20 GiB is reserved by PyTorch but unallocated."
    )
    with pytest.raises(torch.OutOfMemoryError) as raised:
        with quiet_run() as run:
            for _ in run.track(range(3)):
                run.log(loss=1.0)
                if run.state.step == 1:
                    raise oom
    assert raised.value is oom
    (line,) = recorded(run.dir).of("error")
    # the second step failed: it was logged before the error, so it is counted and named
    assert (line["error_type"], line["severity"], line["step"]) == ("oom", "critical", 2)
    assert line["hints"] == list(HINTS["oom"])
    context = line["context"]
    assert (context["requested_bytes"], context["device"]) == (20 * 1024**3, 0)
    assert set(context) >= {
        "capacity_bytes",
        "free_bytes",
        "allocated_bytes",
        "reserved_bytes",
        "reserved_unallocated_bytes",
        "peak_allocated_since_start_bytes",
        "num_alloc_retries",
        "num_ooms",
        "memory_summary",
    }
    assert any("expandable_segments" in hint for hint in context["hints"])
    crash = json.loads((run.dir / "crash-report.json").read_text())
    assert [e["error_type"] for e in crash["errors"]] == ["oom"]


@pytest.mark.parametrize(
    "message, error_type",
    [
        # what failures that cannot be provoked on one CPU machine say, word for word
        ("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.10 GiB total capacity)", "oom"),
        (
            "[Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=12, "
            "OpType=ALLREDUCE) ran for 600000 milliseconds before timing out.",
            "distributed",
        ),
        ("NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled system error", "distributed"),
        ("CUDA error: device-side assert triggered", "cuda"),
        ("CUDA error: an illegal memory access was encountered", "cuda"),
        ("DataLoader worker (pid(s) 4242) exited unexpectedly", "data"),
    ],
)
def test_messages_of_failures_that_need_hardware(message, error_type):
    assert classify(RuntimeError(message)).error_type == error_type


@pytest.fixture
def ctrl_c_raises():
    """Python's own SIGINT handler, also where the suite runs as a shell's background job
    (such a job starts with SIGINT ignored, and raise_signal would then do nothing)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_keyboard_interrupt_is_interrupted_without_a_crash_report(
    quiet_run, recorded, ctrl_c_raises
):
    with capture() as telemetry:
        with pytest.raises(KeyboardInterrupt):
            with quiet_run() as run:
                run.log(loss=1.0)
                signal.raise_signal(signal.SIGINT)  # what Ctrl-C does
    (line,) = recorded(run.dir).of("error")
    assert (line["error_type"], line["severity"]) == ("interrupted", "low")
    assert json.loads((run.dir / "summary.json").read_text())["status"] == "interrupted"
    assert not (run.dir / "crash-report.json").exists()
    ((attributes, _),) = telemetry.points("traintel_errors_total")
    assert attributes["error_type"] == "interrupted"
    run_span = next(s for s in telemetry.spans.get_finished_spans() if s.name == "training_run")
    assert not run_span.status.is_ok and run_span.attributes["status"] == "interrupted"


def test_sigterm_preempts_a_real_run_in_a_subprocess(tmp_path, recorded):
    script = textwrap.dedent(f"""
        import itertools, time, traintel
        with traintel.init(project="t", dir={str(tmp_path)!r}, progress="off", otlp=False,
                           sample_interval=0, console_logs=False) as run:
            for step in run.track(itertools.count()):
                run.log(loss=1.0 / (step + 1))
                if step == 20:
                    print(run.dir, flush=True)
                time.sleep(0.002)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    run_dir = Path(proc.stdout.readline().strip())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM, proc.stderr.read()

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "preempted" and summary["steps"] >= 20
    assert summary["errors"] == {"total": 0, "by_type": {}, "first": None}  # no error
    lines = recorded(run_dir)
    (line,) = lines.of("event", "signal")
    assert line["level"] == "warning" and line["fields"]["signal"] == "SIGTERM"
    assert lines[-1]["type"] == "run_end" and lines[-1]["status"] == "preempted"
    assert not (run_dir / "crash-report.json").exists()


def test_crash_report_has_every_section(quiet_run):
    with pytest.raises(ZeroDivisionError):
        with quiet_run(config={"token": "abcdef123456", "layers": 4}) as run:
            for _ in run.track(range(80)):
                run.log(loss=0.5)
            run.error(ValueError("a first, handled problem"))
            1 / 0
    crash = json.loads((run.dir / "crash-report.json").read_text())
    assert set(crash["versions"]) >= {
        "python",
        "traintel",
        "torch",
        "torch_cuda",
        "nvidia_driver",
        "cuda_driver",
    }
    assert crash["versions"]["torch"] == torch.__version__
    assert crash["host"]["hostname"] == socket.gethostname()
    assert isinstance(crash["gpus"], list)
    assert crash["memory"]["process_rss_bytes"] > 0
    assert crash["config"] == {"token": "[REDACTED]", "layers": 4}
    assert crash["run"]["run"] == run.id and crash["summary"]["status"] == "failed"
    assert [e["exc_type"] for e in crash["errors"]] == ["ValueError", "ZeroDivisionError"]
    assert len(crash["last_events"]) == 50
    assert crash["last_events"][-1]["type"] == "run_end"
    assert "abcdef123456" not in (run.dir / "crash-report.json").read_text()


def test_report_command_for_a_run_directory_and_for_this_machine(tmp_path, quiet_run):
    with pytest.raises(ZeroDivisionError):
        with quiet_run(config={"password": "hunter22hunter"}) as run:
            run.log(loss=0.5)
            1 / 0
    crash_id = json.loads((run.dir / "crash-report.json").read_text())["report_id"]
    runner = CliRunner()

    result = runner.invoke(main, ["report", str(run.dir)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["report_id"] != crash_id
    assert report["run"]["type"] == "run_start" and report["summary"]["status"] == "failed"
    assert report["config"] == {"password": "[REDACTED]"}
    assert [e["exc_type"] for e in report["errors"]] == ["ZeroDivisionError"]

    out = tmp_path / "report.md"
    result = runner.invoke(main, ["report", str(run.dir), "--format", "md", "--output", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert text.startswith("# traintel report ")
    for heading in (
        "## Run",
        "## Versions",
        "## GPUs",
        "## Config",
        "## Errors (1)",
        "ZeroDivisionError",
        "## Last ",
    ):
        assert heading in text

    machine = json.loads(runner.invoke(main, ["report"]).output)
    assert "run_dir" not in machine and machine["versions"]["python"]

    missing = runner.invoke(main, ["report", str(tmp_path / "nope")])
    assert missing.exit_code != 0 and "no run record" in missing.output
