"""A multi-process job's summary (traintel.record.job): samples and tokens per second summed over
the ranks, steps per second averaged, each rank's figures kept; written by every rank as it
ends, complete once the last has; the same figures in ``traintel logs summary``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import get_type_hints

import pytest

from traintel.record.job import JobSummary, job_summary, job_throughput
from traintel.record.reader import Records
from traintel.reports.analysis import summarize


def test_throughput_is_summed_over_ranks_and_steps_averaged() -> None:
    rates = {
        0: {"steps_per_s": 10.0, "samples_per_s": 320.0, "tokens_per_s": None},
        1: {"steps_per_s": 8.0, "samples_per_s": 256.0, "tokens_per_s": None},
    }
    assert job_throughput(rates) == {
        "steps_per_s": 9.0,
        "samples_per_s": 576.0,
        "tokens_per_s": None,
    }


def test_the_job_summary_says_which_ranks_it_covers() -> None:
    def rank(n: int, status: str) -> dict:
        return {
            "run": "r",
            "project": "p",
            "name": "n",
            "world_size": 3,
            "status": status,
            "steps": 10,
            "samples": 80,
            "tokens": 0,
            "errors": {"total": n},
            "throughput": {"steps_per_s": 5.0, "samples_per_s": 40.0, "tokens_per_s": None},
            "step_time": {"mean_s": 0.2},
        }

    summary = job_summary({0: rank(0, "finished"), 2: rank(1, "failed")})
    assert (summary["ranks"], summary["complete"], summary["status"]) == ([0, 2], False, "failed")
    assert (summary["samples"], summary["errors"]) == (160, 1)
    assert summary["throughput"]["samples_per_s"] == 80.0
    assert summary["by_rank"]["2"]["status"] == "failed"


def test_every_rank_ending_writes_the_jobs_summary(tmp_path: Path, quiet) -> None:
    """Two ranks of one job in one process (rank, world size and run id given): each writes
    its summary.json, then the job's next to them; the last one to end leaves it complete."""
    import traintel

    for rank, samples in ((0, 8), (1, 4)):
        with traintel.init(
            project="job", dir=str(tmp_path), run_id="job-1", rank=rank, world_size=2, **quiet
        ) as run:
            for step in range(1, 11):
                run.log(step=step, loss=1.0, samples=samples)
        job = json.loads((tmp_path / "job-1" / "summary.json").read_text())
        assert job["ranks"] == list(range(rank + 1))
    assert job["complete"] and job["samples"] == 120
    ranks = [
        json.loads((tmp_path / "job-1" / f"rank-{r}" / "summary.json").read_text()) for r in (0, 1)
    ]
    assert job["throughput"]["samples_per_s"] == pytest.approx(
        sum(r["throughput"]["samples_per_s"] for r in ranks)
    )
    shown = summarize(Records(tmp_path / "job-1"))
    assert shown["throughput"]["samples_per_s"] == pytest.approx(job["throughput"]["samples_per_s"])
    assert shown["throughput_by_rank"]["1"]["samples_per_s"] == pytest.approx(
        ranks[1]["throughput"]["samples_per_s"]
    )


def test_the_documented_job_summary_is_what_is_written() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "record-format.md").read_text()
    table = doc.split("## The job's `summary.json`")[1]
    names = {
        name.split(".")[0]
        for row in re.findall(r"^\| (.*?) \|", table, re.M)
        for name in re.findall(r"`([^`]+)`", row)
    }
    assert names == set(get_type_hints(JobSummary))


def test_the_first_failing_rank_is_named_root_cause(tmp_path: Path, quiet) -> None:
    """Issue 29 finding 10: rank 1 raises, then rank 0 fails on the collective it no longer
    answers; both are failed with one error each, and the job names rank 1 as torchrun's
    "Root Cause" does, in summary.json and in traintel logs summary."""
    import traintel

    for rank, error in (
        (1, ValueError("corrupt sample in shard 7")),
        (0, RuntimeError("Connection closed by peer [127.0.0.1]:29500")),
    ):
        with pytest.raises(type(error)):
            with traintel.init(
                project="job", dir=str(tmp_path), run_id="job-2", rank=rank, world_size=2, **quiet
            ) as run:
                for step in range(1, 4):
                    run.log(step=step, loss=1.0)
                raise error
    job = json.loads((tmp_path / "job-2" / "summary.json").read_text())
    assert job["status"] == "failed" and job["errors"] == 2
    cause = job["root_cause"]
    assert (cause["rank"], cause["exc_type"], cause["step"]) == (1, "ValueError", 3)
    shown = summarize(Records(tmp_path / "job-2"))
    assert shown["root_cause"]["rank"] == 1 and shown["root_cause"]["ts"] == cause["ts"]
    from click.testing import CliRunner

    from traintel.cli.logs import logs

    text = CliRunner().invoke(logs, ["summary", str(tmp_path / "job-2")]).output
    assert "root cause" in text and "rank 1" in text
