"""One run id for every rank of a multi-process job.

Each rank writes its own record (``<dir>/<run-id>/rank-N/``) and labels its series with its rank;
the run id is what ties them together, so all ranks must agree on it before the run starts. The
launcher's id wins (``TRAINTEL_RUN_ID``, torchrun's ``--rdzv-id``, the SLURM job and step); without
one, rank 0's id is broadcast over the default process group when it is initialised. That is a
collective: every rank must call ``traintel.init`` (each rank records its own steps anyway), and
with NCCL each rank must have called ``torch.cuda.set_device`` first, as DDP scripts do.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from .settings import shared_run_id

log = logging.getLogger("traintel.distributed")


def agree_run_id(candidate: str, world_size: int = 1) -> str:
    """The run id all ranks share: the launcher's, else rank 0's ``candidate`` broadcast over the
    initialised process group, else ``candidate`` (with a warning when ``world_size`` says other
    ranks exist that will not get the same id)."""
    launcher = shared_run_id()
    if launcher:
        return launcher
    dist = _process_group()
    if dist is not None:
        box = [candidate]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    if world_size > 1:
        log.warning("traintel: %d ranks but no shared run id: each rank records under its own id. "
                    "Call torch.distributed.init_process_group() before traintel.init(), or set "
                    "TRAINTEL_RUN_ID (torchrun: --rdzv-id; SLURM sets it)", world_size)
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
