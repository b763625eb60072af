"""A multi-process job's figures over its ranks: ``<dir>/<run-id>/summary.json`` next to the
ranks' ``rank-N/`` records, and what ``traintel logs summary`` says of a job.

Every rank writes its own summary.json as it ends; then it folds every rank summary present
into the job's (under a lock, so that ranks ending together do not lose each other's), so the
last rank to end leaves the whole job's. Throughput is the job's: samples and tokens per second
are the sum over the ranks (each rank processes its own share of the data), steps per second the
mean (data-parallel ranks take the same steps); ``by_rank`` keeps each rank's own figures, where
a straggler shows.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

from traintel.record import safe
from traintel.record.files import read_json, write_json
from traintel.record.format import RecordStatus
from traintel.record.summary import Throughput

log = logging.getLogger("traintel.record")

#: the job's summary, in the run's directory above the ranks' records
JOB_SUMMARY = "summary.json"
#: worst first: the job's status is its worst rank's
STATUS_ORDER: tuple[RecordStatus, ...] = (
    "failed",
    "crashed",
    "interrupted",
    "preempted",
    "empty",
    "stale",
    "running",
    "stopped",
    "pruned",
    "finished",
)


class RankFigures(TypedDict):
    status: str
    steps: int
    samples: int
    tokens: int
    throughput: Throughput
    step_time_mean_s: float | None
    errors: int


class JobSummary(TypedDict):
    """``<dir>/<run-id>/summary.json`` of a multi-process run (docs/record-format.md)."""

    run: str
    project: str
    name: str
    world_size: int
    #: the ranks whose summary.json was there when this was written (all of them: complete)
    ranks: list[int]
    complete: bool
    status: str
    steps: int
    samples: int
    tokens: int
    throughput: Throughput
    errors: int
    #: the rank whose first error came first, as torchrun's "Root Cause" names it, with that
    #: error (``ts``, ``error_type``, ``exc_type``, ``step``); None when no rank failed
    root_cause: dict[str, Any] | None
    by_rank: dict[str, RankFigures]


def job_throughput(by_rank: Mapping[int, Throughput]) -> Throughput:
    """The job's rates from each rank's: samples and tokens per second added up, steps per
    second averaged over the ranks that have one."""
    steps = [t["steps_per_s"] for t in by_rank.values() if t["steps_per_s"] is not None]
    samples = [t["samples_per_s"] for t in by_rank.values() if t["samples_per_s"] is not None]
    tokens = [t["tokens_per_s"] for t in by_rank.values() if t["tokens_per_s"] is not None]
    return {
        "steps_per_s": sum(steps) / len(steps) if steps else None,
        "samples_per_s": sum(samples) if samples else None,
        "tokens_per_s": sum(tokens) if tokens else None,
    }


def job_summary(ranks: Mapping[int, Mapping[str, Any]]) -> JobSummary:
    """The job's summary from its ranks' summary.json documents."""
    first = ranks[min(ranks)]
    world_size = int(first.get("world_size") or len(ranks))
    by_rank: dict[str, RankFigures] = {
        str(rank): {
            "status": str(s.get("status")),
            "steps": int(s.get("steps") or 0),
            "samples": int(s.get("samples") or 0),
            "tokens": int(s.get("tokens") or 0),
            "throughput": _throughput(s.get("throughput")),
            "step_time_mean_s": (s.get("step_time") or {}).get("mean_s"),
            "errors": int((s.get("errors") or {}).get("total") or 0),
        }
        for rank, s in sorted(ranks.items())
    }
    statuses = {figures["status"] for figures in by_rank.values()}
    return {
        "run": str(first.get("run")),
        "project": str(first.get("project")),
        "name": str(first.get("name")),
        "world_size": world_size,
        "ranks": sorted(ranks),
        "complete": len(ranks) >= world_size,
        "status": next((s for s in STATUS_ORDER if s in statuses), "running"),
        "steps": max(f["steps"] for f in by_rank.values()),
        "samples": sum(f["samples"] for f in by_rank.values()),
        "tokens": sum(f["tokens"] for f in by_rank.values()),
        "throughput": job_throughput({int(r): f["throughput"] for r, f in by_rank.items()}),
        "errors": sum(f["errors"] for f in by_rank.values()),
        "root_cause": root_cause(
            {rank: (s.get("errors") or {}).get("first") for rank, s in ranks.items()}
        ),
        "by_rank": by_rank,
    }


def root_cause(first_errors: Mapping[int, object]) -> dict[str, Any] | None:
    """The rank whose first error came first (the others' often follow from it: a collective
    that timed out, a peer that went away), with that error; None when none has one."""
    found = [
        (first["ts"], rank, first)
        for rank, first in first_errors.items()
        if isinstance(first, Mapping) and isinstance(first.get("ts"), (int, float))
    ]
    if not found:
        return None
    _, rank, first = min(found, key=lambda item: (item[0], item[1]))
    return {"rank": rank, **first}


def _throughput(value: object) -> Throughput:
    rates = value if isinstance(value, dict) else {}

    def rate(key: str) -> float | None:
        found = rates.get(key)
        return float(found) if isinstance(found, (int, float)) else None

    return {
        "steps_per_s": rate("steps_per_s"),
        "samples_per_s": rate("samples_per_s"),
        "tokens_per_s": rate("tokens_per_s"),
    }


def write_job_summary(run_dir: Path) -> JobSummary | None:
    """Fold every ``rank-N/summary.json`` under ``run_dir`` into ``run_dir/summary.json``, under
    a lock shared by the ranks of this host (an unlocked filesystem: the last writer wins)."""
    lock_path = run_dir / ".summary.lock"
    try:
        handle = safe.open_lock(lock_path)  # not a planted link or directory
    except OSError as exc:
        log.warning("traintel could not write the job summary in %s: %s", run_dir, exc)
        return None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            pass
        ranks: dict[int, Mapping[str, Any]] = {}
        for path in run_dir.glob("rank-*/summary.json"):
            rank = path.parent.name.removeprefix("rank-")
            found = read_json(path)
            if rank.isdigit() and isinstance(found, dict):
                ranks[int(rank)] = found
        if not ranks:
            return None
        summary = job_summary(ranks)
        write_json(run_dir / JOB_SUMMARY, summary)
        return summary
    finally:
        os.close(handle)  # closing drops the lock
