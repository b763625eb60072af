"""One run id for every rank of a multi-process job, in the form traintel documents.

Each rank writes its own record (``<dir>/<run-id>/rank-N/``) and labels its series with its rank;
the run id is what ties them together, so all ranks must agree on it before the run starts.

A launcher's own id wins when someone chose it: ``TRAINTEL_RUN_ID``, torchrun's ``--rdzv-id``,
SLURM's job and step (``slurm-<job>-<step>``). torchrun's ``--standalone`` (and a one-node run
without ``--master-port``) makes up a random UUID as its rendezvous id; that is no name for
people, so the ranks derive traintel's own form from it without talking to each other: the
start time of the torchrun agent that spawned them (their common parent) and six hex digits of
the UUID, ``20261130-094108-6dc28f``. Without a launcher id, rank 0's id is broadcast over the
default process group when it is initialised. That is a collective: every rank must call
``traintel.init`` (each rank records its own steps anyway), and with NCCL each rank must have
called ``torch.cuda.set_device`` first, as DDP scripts do.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import sys
import time
from typing import Any

from traintel.core import env

log = logging.getLogger("traintel.distributed")

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def new_run_id(started: float | None = None, suffix: str | None = None) -> str:
    """A run id that sorts by start time: ``20261130-094108-6dc28f``."""
    return (
        time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
        + "-"
        + (suffix or secrets.token_hex(3))
    )


def launcher_run_id() -> str | None:
    """The run id every rank of one job agrees on without a collective, from the launcher's
    environment: ``TRAINTEL_RUN_ID``; torchrun's ``--rdzv-id`` (its made-up UUID turned into
    traintel's form); ``slurm-<job>-<step>``. None when the launcher says nothing shared."""
    if env.TRAINTEL_RUN_ID.get():
        return env.TRAINTEL_RUN_ID.get()
    torchelastic = env.TORCHELASTIC_RUN_ID.get()
    if torchelastic not in (None, "none"):
        return _torchrun_id(torchelastic) if _UUID.fullmatch(torchelastic) else torchelastic
    if env.SLURM_JOB_ID.get():
        return f"slurm-{env.SLURM_JOB_ID.get()}-{env.SLURM_STEP_ID.get() or '0'}"
    return None


def _torchrun_id(rendezvous: str) -> str:
    """traintel's form for torchrun's random rendezvous id: the ranks of a one-node torchrun
    share their parent, the agent, so its start time and the UUID name the job alike on every
    rank (and again after an elastic restart, which the agent runs: the record continues)."""
    import psutil  # only under torchrun

    try:
        started = psutil.Process(os.getppid()).create_time()
    except psutil.Error:  # no parent to ask: the UUID alone still names the job
        started = 0.0
    return new_run_id(started, rendezvous.replace("-", "")[:6])


def agree_run_id(candidate: str, world_size: int = 1) -> str:
    """The run id all ranks share: the launcher's, else rank 0's ``candidate`` broadcast over the
    initialised process group, else ``candidate`` (with a warning when ``world_size`` says other
    ranks exist that will not get the same id)."""
    launcher = launcher_run_id()
    if launcher:
        return launcher
    dist = _process_group()
    if dist is not None:
        box = [candidate]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    if world_size > 1:
        log.warning(
            "traintel: %d ranks but no shared run id: each rank records under its own id. "
            "Call torch.distributed.init_process_group() before traintel.init(), or set "
            "TRAINTEL_RUN_ID (torchrun: --rdzv-id; SLURM sets it)",
            world_size,
        )
    return candidate


def _process_group() -> Any:
    """``torch.distributed`` when a default group of more than one process is up; torch is not
    imported for this (a process group means the user imported it)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    dist = torch.distributed
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    return dist
