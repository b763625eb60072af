"""Multi-process runs: one run id for all ranks, per-rank records and series, real gloo failures,
and the straggler alert on per-rank step times. torchrun runs tests/dist_train.py on CPU."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
import torch.distributed as dist
import yaml

import traintel
from conftest import read_lines
from stack_fixture import eventually, promql
from traintel.core.errors import classify
from traintel.run.distributed import agree_run_id, launcher_run_id
from traintel.stack.native import free_port

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "dist_train.py"
LAUNCHER_IDS = ("TRAINTEL_RUN_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID")
#: the run ids traintel makes (docs/distributed.md): start time and six hex digits
RUN_ID_FORM = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")


def torchrun(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Two ranks of dist_train.py; this checkout's traintel, no launcher run id."""
    environment = {k: v for k, v in os.environ.items() if k not in LAUNCHER_IDS}
    environment.update(
        {
            "TRAINTEL_DIR": str(tmp_path / "runs"),
            "OTEL_SDK_DISABLED": "true",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
            **(env or {}),
        }
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(SCRIPT),
        *args,
    ]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=timeout)


def rank_records(tmp_path: Path) -> dict[int, tuple[str, list[dict]]]:
    """rank -> (run id from the directory, events.jsonl lines)."""
    found = {}
    for events in sorted((tmp_path / "runs").glob("*/rank-*/events.jsonl")):
        found[int(events.parent.name.removeprefix("rank-"))] = (
            events.parent.parent.name,
            read_lines(events.parent),
        )
    return found


# -- agreeing on a run id -------------------------------------------------------------------
def test_the_launchers_run_id_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LAUNCHER_IDS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "rdzv-42")
    assert agree_run_id("mine", world_size=8) == "rdzv-42"
    monkeypatch.setenv("TRAINTEL_RUN_ID", "chosen")
    assert agree_run_id("mine", world_size=8) == "chosen"


def test_slurm_names_the_job_and_torchruns_placeholder_is_no_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in LAUNCHER_IDS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.delenv("SLURM_STEP_ID", raising=False)
    assert launcher_run_id() == "slurm-77-0"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun's placeholder
    assert launcher_run_id() == "slurm-77-0"


def test_torchruns_made_up_uuid_becomes_the_documented_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--standalone's rendezvous id is a random UUID: every rank turns it into the same
    YYYYMMDD-HHMMSS-xxxxxx from it and their parent's (the agent's) start time."""
    for name in LAUNCHER_IDS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "3f2c9a1e-5b7d-4c8e-9f00-1a2b3c4d5e6f")
    started = psutil.Process(os.getppid()).create_time()
    expected = time.strftime("%Y%m%d-%H%M%S", time.localtime(started)) + "-3f2c9a"
    assert launcher_run_id() == expected == launcher_run_id()
    assert RUN_ID_FORM.fullmatch(expected)


def test_without_launcher_or_process_group_ranks_are_warned(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in LAUNCHER_IDS:
        monkeypatch.delenv(name, raising=False)
    with caplog.at_level(logging.WARNING, logger="traintel.run.distributed"):
        assert agree_run_id("mine") == "mine"
        assert not caplog.records
        assert agree_run_id("mine", world_size=4) == "mine"
    assert "no shared run id" in caplog.text


@pytest.mark.slow
def test_torchrun_ranks_share_one_run_id_and_keep_separate_records(tmp_path: Path) -> None:
    result = torchrun(tmp_path, "--steps", "12", "--sync")
    assert result.returncode == 0, result.stderr[-3000:]
    records = rank_records(tmp_path)
    assert sorted(records) == [0, 1]
    (run_id,) = {run_id for run_id, _ in records.values()}
    assert RUN_ID_FORM.fullmatch(run_id)  # rank 0's, broadcast over the process group
    job = json.loads((tmp_path / "runs" / run_id / "summary.json").read_text())
    assert (job["ranks"], job["complete"], job["samples"]) == ([0, 1], True, 2 * 12 * 8)
    assert job["throughput"]["samples_per_s"] == pytest.approx(
        sum(rank["throughput"]["samples_per_s"] for rank in job["by_rank"].values())
    )
    for rank, (_, lines) in records.items():
        assert {line["run"] for line in lines} == {run_id}
        assert {line["rank"] for line in lines} == {rank}
        assert [line["step"] for line in lines if line["type"] == "step"] == list(range(1, 13))
        (start,) = [line for line in lines if line["type"] == "run_start"]
        assert start["world_size"] == 2 and start["local_rank"] == rank
        summary = json.loads(
            (tmp_path / "runs" / run_id / f"rank-{rank}" / "summary.json").read_text()
        )
        assert (summary["run"], summary["rank"], summary["steps"]) == (run_id, rank, 12)
        assert summary["status"] == "finished"


def test_mpi_ranks_agree_on_the_documented_form(tmp_path: Path) -> None:
    """Two processes with Open MPI's environment (a stand-in for mpirun, which this machine does
    not have): ranks from OMPI_COMM_WORLD_*, a gloo group over env://, then traintel.init:
    rank 0's id in the documented form, on both ranks."""
    script = textwrap.dedent("""
        import os, torch.distributed as dist, traintel
        rank, size = int(os.environ["OMPI_COMM_WORLD_RANK"]), int(os.environ["OMPI_COMM_WORLD_SIZE"])
        dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=size)
        with traintel.init(project="mpi", progress="off", sample_interval=0) as run:
            run.log(loss=1.0)
            print(run.id, run.rank, run.world_size)
        dist.destroy_process_group()
    """)
    port = free_port()
    environment = {
        k: v
        for k, v in os.environ.items()
        if k not in LAUNCHER_IDS + ("RANK", "LOCAL_RANK", "WORLD_SIZE")
    }
    environment.update(
        {
            "TRAINTEL_DIR": str(tmp_path / "runs"),
            "OTEL_SDK_DISABLED": "true",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMPI_COMM_WORLD_SIZE": "2",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        }
    )
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={
                **environment,
                "OMPI_COMM_WORLD_RANK": str(rank),
                "OMPI_COMM_WORLD_LOCAL_RANK": str(rank),
            },
        )
        for rank in (0, 1)
    ]
    outputs = [process.communicate(timeout=120) for process in ranks]
    assert all(process.returncode == 0 for process in ranks), outputs
    said = sorted(tuple(out.split()) for out, _ in outputs)
    (run_id,) = {run_id for run_id, _, _ in said}
    assert RUN_ID_FORM.fullmatch(run_id)
    assert [(rank, size) for _, rank, size in said] == [("0", "2"), ("1", "2")]
    assert sorted(p.name for p in (tmp_path / "runs" / run_id).glob("rank-*")) == [
        "rank-0",
        "rank-1",
    ]


# -- real gloo failures ---------------------------------------------------------------------
def test_a_missing_peer_is_a_classified_distributed_error(tmp_path: Path) -> None:
    store = dist.TCPStore(
        "127.0.0.1",
        0,
        world_size=2,
        is_master=True,
        wait_for_workers=False,
        timeout=timedelta(seconds=1),
    )
    with traintel.init(
        project="dist",
        dir=str(tmp_path),
        otlp=False,
        progress="off",
        sample_interval=0,
        console_logs=False,
    ) as run:
        with pytest.raises(dist.DistError) as failure:
            with run.span("init_process_group"):
                dist.ProcessGroupGloo(store, 0, 2, timedelta(seconds=1))  # rank 1 never comes
    assert classify(failure.value).error_type == "distributed"
    (error,) = run.errors
    assert (error["error_type"], error["severity"], error["operation"]) == (
        "distributed",
        "high",
        "init_process_group",
    )


@pytest.mark.slow
def test_a_rank_that_never_joins_times_out_the_collective(tmp_path: Path) -> None:
    result = torchrun(tmp_path, "--steps", "5", "--hang-rank", "1", "--timeout", "3")
    assert result.returncode != 0
    records = rank_records(tmp_path)
    (error,) = [line for line in records[0][1] if line["type"] == "error"]
    assert (error["error_type"], error["severity"]) == ("distributed", "high")
    assert "Timed out" in error["traceback"] and "gloo" in error["traceback"]
    assert [line["status"] for line in records[0][1] if line["type"] == "run_end"] == ["failed"]
    # torchrun stops the rank that hung with SIGTERM when the other fails: ended by SIGTERM
    assert [line["status"] for line in records[1][1] if line["type"] == "run_end"] == ["preempted"]


# -- through the stack ----------------------------------------------------------------------
def straggler_expr() -> str:
    rules = yaml.safe_load((ROOT / "prometheus" / "rules" / "alerts.yml").read_text())
    (expr,) = [
        rule["expr"]
        for group in rules["groups"]
        for rule in group["rules"]
        if rule.get("alert") == "StragglerRank"
    ]
    return expr


@pytest.mark.slow
@pytest.mark.stack
def test_per_rank_series_and_the_straggler_alert(stack, tmp_path: Path) -> None:
    """Rank 1 sleeps 40 ms more per step than rank 0 (no per-step collective: in synchronous
    data parallelism the collective makes every rank's step as slow as the slowest)."""
    project = f"straggler{os.getpid()}"
    result = torchrun(
        tmp_path,
        "--project",
        project,
        "--seconds",
        "15",
        "--step-sleep",
        "0.01",
        "--slow-rank",
        "1",
        "--slow-sleep",
        "0.04",
        timeout=180,
        env={
            "OTEL_SDK_DISABLED": "false",
            "OTEL_EXPORTER_OTLP_ENDPOINT": stack.endpoints["otlp_http"],
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        },
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_id,) = {run_id for run_id, _ in rank_records(tmp_path).values()}

    def both_ranks():
        series = promql(stack, f'traintel_steps_total{{project="{project}", run="{run_id}"}}')
        return series if len(series) == 2 else None

    steps = eventually(both_ranks, what="traintel_steps_total of both ranks")
    assert sorted(s["metric"]["rank"] for s in steps) == ["0", "1"]

    # the recording rules the expression reads are evaluated every 15 s
    stragglers = eventually(
        lambda: [
            s for s in promql(stack, straggler_expr()) if s["metric"].get("project") == project
        ],
        120,
        2,
        what="a StragglerRank result",
    )
    assert [s["metric"]["rank"] for s in stragglers] == ["1"]
    assert float(stragglers[0]["value"][1]) > 1.25
