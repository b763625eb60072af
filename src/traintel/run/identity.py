"""Who a run is: its id, names, rank and host, the directory it records to, and the labels and
resource attributes every exported series and signal carries."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from traintel.core.redact import Redactor
from traintel.core.state import RunState, nonfinite_text
from traintel.core.validate import check_run_id, clean_text
from traintel.record.format import RunStatus, Whose
from traintel.record.summary import ExportFigures, RunAbout, export_figures
from traintel.run.distributed import agree_run_id, new_run_id
from traintel.run.settings import Settings, hostname


class NonFiniteStatus(TypedDict):
    count: int
    first_step: int
    last_step: int


class LiveStatus(TypedDict):
    """A running run as ``/status`` serves it and ``traintel status --url`` prints it. Values
    are as logged: a NaN is ``"nan"`` (JSON has none), as in the record."""

    run: str
    project: str
    name: str
    rank: int
    status: RunStatus
    stop_requested: bool
    tags: list[str]
    group: str | None
    epoch: int
    total_epochs: int | None
    step: int
    steps: int
    total_steps: int | None
    progress: float | None
    eta_s: float | None
    rates: dict[str, float]
    latest: dict[str, float | str]
    nonfinite: dict[str, NonFiniteStatus]
    eval_best: dict[str, float]
    #: error counts by "error_type/severity"
    errors: dict[str, int]
    #: record lines that could not be written
    record_dropped: int
    #: inputs refused by reason (``traintel.core.refusals``)
    refused: dict[str, int]
    export: ExportFigures
    dir: str
    started: float


@dataclass(frozen=True)
class RunIdentity:
    id: str
    project: str
    name: str
    rank: int
    local_rank: int | None
    world_size: int
    host: str
    #: where the record goes: ``<dir>/<run-id>/``, or ``.../rank-<N>/`` when there are ranks
    dir: Path
    tags: tuple[str, ...] = ()
    group: str | None = None
    notes: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RunIdentity:
        world_size = settings.world_size or 1
        run_id = settings.run_id or _launchers_run_id(world_size)
        rank = settings.rank or 0
        base = Path(settings.dir) / run_id
        return cls(
            id=run_id,
            project=settings.project,
            name=settings.name or run_id,
            rank=rank,
            local_rank=settings.local_rank,
            world_size=world_size,
            host=hostname(),
            dir=base / f"rank-{rank}" if world_size > 1 else base,
            tags=tuple(settings.tags),
            group=settings.group,
            notes=settings.notes,
        )

    @property
    def labels(self) -> dict[str, str]:
        """The labels of every series: project, run, rank (encodable: a name from non-UTF-8
        argv would break every scrape)."""
        return {
            "project": clean_text(self.project),
            "run": clean_text(self.id),
            "rank": str(self.rank),
        }

    @property
    def info(self) -> dict[str, str]:
        """What ``traintel_run_info`` says besides the labels (tags comma-joined), encodable:
        one tag with a lone surrogate (from non-UTF-8 argv) closed every /metrics scrape."""
        return {
            key: clean_text(value)
            for key, value in {
                "run_name": self.name,
                "hostname": self.host,
                "world_size": str(self.world_size),
                "group": self.group or "",
                "tags": ",".join(self.tags),
            }.items()
        }

    def about(self, config_hash: str) -> RunAbout:
        """What summary.json says about the run itself."""
        return {
            "run": self.id,
            "project": self.project,
            "name": self.name,
            "rank": self.rank,
            "world_size": self.world_size,
            "config_hash": config_hash,
            "tags": list(self.tags),
            "notes": self.notes,
            "group": self.group,
        }

    @property
    def record_fields(self) -> Whose:
        """What every record line says about whose it is."""
        return {"run": self.id, "rank": self.rank}

    def status(
        self,
        state: RunState,
        total_epochs: int | None,
        redactor: Redactor,
        stop_requested: bool = False,
    ) -> LiveStatus:
        """The run now, from its state, redacted as every exit is."""
        status: LiveStatus = redactor.deep(
            {
                "run": self.id,
                "project": self.project,
                "name": self.name,
                "rank": self.rank,
                "status": state.status,
                "stop_requested": stop_requested,
                "tags": list(self.tags),
                "group": self.group,
                "epoch": state.epoch,
                "total_epochs": total_epochs,
                "step": state.step,
                "steps": state.steps_taken,
                "total_steps": state.total_steps,
                "progress": state.progress(),
                "eta_s": state.eta_seconds(),
                "rates": dict(state.rates),
                "latest": {
                    k: v if v - v == 0 else nonfinite_text(v) for k, v in list(state.latest.items())
                },
                "nonfinite": {
                    k: {"count": n.count, "first_step": n.first_step, "last_step": n.last_step}
                    for k, n in list(state.nonfinite.items())
                },
                "eval_best": dict(state.eval_best),
                "errors": {f"{t}/{s}": n for (t, s), n in state.errors.items()},
                "record_dropped": state.dropped,
                "refused": dict(state.refused),
                "export": export_figures(state),
                "dir": str(self.dir),
                "started": state.start_ts,
            }
        )
        return status


def _launchers_run_id(world_size: int) -> str:
    """The run id the launcher shares (TRAINTEL_RUN_ID, TORCHELASTIC_RUN_ID, SLURM_JOB_ID), else
    a new one. One that is not a run id (a path: ``../../outside``) never names a directory, and
    never stops the run either: settings from the environment are refused with a warning naming
    them, and this process records under a new id of its own."""
    what = "the launcher's run id (TRAINTEL_RUN_ID, TORCHELASTIC_RUN_ID or SLURM_JOB_ID)"
    try:
        return check_run_id(what, agree_run_id(new_run_id(), world_size))
    except (TypeError, ValueError) as error:
        run_id = new_run_id()
        logging.getLogger("traintel.run").warning(
            "traintel: %s; it is ignored, and this process records as run %s", error, run_id
        )
        return run_id
