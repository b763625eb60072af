"""Run settings: ``traintel.init`` keyword arguments and environment variables, validated in one place.

Environment variables are read here and nowhere else (the OTel SDK reads its own ``OTEL_*``
exporter variables; we read the ones that change what traintel itself does).
"""

from __future__ import annotations

import difflib
import os
import socket
from dataclasses import dataclass, field, fields
from typing import Any

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Settings:
    project: str = "default"
    name: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    total_epochs: int | None = None
    total_steps: int | None = None
    seed: int | None = None
    run_id: str | None = None
    dir: str = "traintel-runs"
    #: export over OTLP (None: yes unless OTEL_SDK_DISABLED=true)
    otlp: bool | None = None
    #: serve /metrics, /healthz, /status, /events on this port (0: any free port; None: off)
    http_port: int | None = None
    http_host: str = "127.0.0.1"
    allow_remote_http: bool = False
    #: one span every N steps (0: no step spans)
    step_span_every: int = 100
    #: background hardware sampling interval in seconds (0: off)
    sample_interval: float = 5.0
    all_gpus: bool = False
    #: progress display: "auto" (bar on a TTY, lines otherwise), "bar", "lines", "off"
    progress: str = "auto"
    progress_interval: float = 30.0
    #: seconds between record flushes
    flush_interval: float = 1.0
    #: rotate events.jsonl past this size
    max_record_bytes: int = 256 * 1024 * 1024
    #: upper bound on shutdown time when the collector is unreachable
    shutdown_timeout: float = 2.0
    #: how many distinct user metric names / label values a run may create
    max_metric_names: int = 256
    log_level: str = "INFO"
    console_logs: bool = True
    #: rank detection (None: from torchrun / SLURM / MPI environment variables)
    rank: int | None = None
    local_rank: int | None = None
    world_size: int | None = None
    handle_signals: bool = True

    def __post_init__(self) -> None:
        _check_str("project", self.project)
        if self.name is not None:
            _check_str("name", self.name)
        for key in ("total_epochs", "total_steps", "seed", "http_port", "rank", "local_rank",
                    "world_size"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise TypeError(f"traintel.init: {key} must be an int or None, got "
                                f"{type(value).__name__} {value!r}")
        for key in ("total_epochs", "total_steps", "world_size"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ValueError(f"traintel.init: {key} must be positive, got {value}")
        for key in ("sample_interval", "progress_interval", "flush_interval", "shutdown_timeout"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"traintel.init: {key} must be a non-negative number of "
                                 f"seconds, got {value!r}")
        if self.progress not in ("auto", "bar", "lines", "off"):
            raise ValueError(f"traintel.init: progress must be one of auto, bar, lines, off; "
                             f"got {self.progress!r}")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise ValueError(f"traintel.init: http_port must be 0-65535, got {self.http_port}")
        if self.http_host not in _LOOPBACK and not self.allow_remote_http:
            raise ValueError(
                f"traintel.init: http_host={self.http_host!r} would expose the run's status and "
                "debug controls beyond this machine; pass allow_remote_http=True if you mean it")
        if self.step_span_every < 0:
            raise ValueError("traintel.init: step_span_every must be >= 0 (0 turns step spans off)")

    @property
    def otlp_enabled(self) -> bool:
        if self.otlp is not None:
            return self.otlp
        return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() != "true"


def settings_from(kwargs: dict[str, Any]) -> Settings:
    """Build settings from ``init`` keyword arguments over environment defaults; unknown keys get
    a clear error with the closest valid name."""
    known = {f.name for f in fields(Settings)}
    for key in kwargs:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"traintel.init got an unknown keyword argument {key!r}{hint} "
                            f"Valid arguments: {', '.join(sorted(known))}")
    merged = _from_environment() | {k: v for k, v in kwargs.items() if v is not None}
    return Settings(**merged)


def _from_environment() -> dict[str, Any]:
    env = os.environ
    out: dict[str, Any] = {}
    if env.get("TRAINTEL_DIR"):
        out["dir"] = env["TRAINTEL_DIR"]
    if env.get("TRAINTEL_PROJECT"):
        out["project"] = env["TRAINTEL_PROJECT"]
    if env.get("TRAINTEL_HTTP_PORT"):
        out["http_port"] = _env_number("TRAINTEL_HTTP_PORT", int)
    if env.get("TRAINTEL_PROGRESS"):
        out["progress"] = env["TRAINTEL_PROGRESS"]
    if env.get("TRAINTEL_SAMPLE_INTERVAL"):
        out["sample_interval"] = _env_number("TRAINTEL_SAMPLE_INTERVAL")
    if env.get("TRAINTEL_LOG_LEVEL"):
        out["log_level"] = env["TRAINTEL_LOG_LEVEL"].upper()
    out.update(_distributed_environment())
    return out


def _distributed_environment() -> dict[str, Any]:
    """Rank, local rank and world size as torchrun, SLURM or Open MPI publish them."""
    env = os.environ
    for rank, local, world in (("RANK", "LOCAL_RANK", "WORLD_SIZE"),
                               ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS"),
                               ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK",
                                "OMPI_COMM_WORLD_SIZE"),
                               ("PMI_RANK", "MPI_LOCALRANKID", "PMI_SIZE")):
        if env.get(rank, "").isdigit():
            return {"rank": int(env[rank]),
                    "local_rank": int(env[local]) if env.get(local, "").isdigit() else None,
                    "world_size": int(env[world]) if env.get(world, "").isdigit() else None}
    return {}


def shared_run_id() -> str | None:
    """A run id every rank of one job agrees on, from the launcher's environment."""
    env = os.environ
    if env.get("TRAINTEL_RUN_ID"):
        return env["TRAINTEL_RUN_ID"]
    if env.get("TORCHELASTIC_RUN_ID", "none") not in ("", "none"):
        return env["TORCHELASTIC_RUN_ID"]
    if env.get("SLURM_JOB_ID"):
        return f"slurm-{env['SLURM_JOB_ID']}-{env.get('SLURM_STEP_ID', '0')}"
    return None


def hostname() -> str:
    return socket.gethostname()


def _check_str(key: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"traintel.init: {key} must be a non-empty string, got {value!r}")
    if len(value) > 200:
        raise ValueError(f"traintel.init: {key} is {len(value)} characters; keep it under 200 "
                         "(it becomes a label on every series)")


def _env_number(name: str, kind: type = float):
    try:
        return kind(os.environ[name])
    except ValueError:
        raise ValueError(f"environment variable {name}={os.environ[name]!r} must be "
                         f"{'an integer' if kind is int else 'a number'}") from None
