"""Run settings: ``traintel.init`` keyword arguments over environment defaults, validated in one
place.

Each option is a field of :class:`Settings` with its meaning (``docs/configuration.md`` is rendered
from them and from ``traintel.core.env``); :class:`InitOptions` types the same options for users' type
checkers. Environment variables are read through ``traintel.core.env``.
"""

from __future__ import annotations

import difflib
import logging
import os
import socket
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Literal, TypedDict

from traintel.core import env
from traintel.core.validate import (
    check_choice,
    check_label,
    check_name,
    check_run_id,
    check_tags,
    shown,
)
from traintel.record.format import ExportMode, Goal

log = logging.getLogger("traintel.run")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

ProgressMode = Literal["auto", "bar", "lines", "off"]
PROGRESS_MODES: tuple[ProgressMode, ...] = ("auto", "bar", "lines", "off")
SigtermMode = Literal["exit", "flag"]
ReinitMode = Literal["finish_previous", "create_new"]
ResumeMode = bool | Literal["allow", "must", "never"] | None
Mode = Literal["online", "offline"]
MODES: tuple[Mode, ...] = ("online", "offline")


def _option(default: Any, doc: str, variable: env.Variable | None = None) -> Any:
    """A settings field with its documentation and, if any, the variable it defaults from."""
    meta = {"doc": doc, "env": variable}
    if isinstance(default, (dict, list)):
        return field(default_factory=type(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Settings:
    project: str = _option("default", "Groups runs; a label on every series.", env.TRAINTEL_PROJECT)
    name: str | None = _option(None, "A name for people (default: the run id).")
    config: dict[str, Any] = _option(
        {},
        "The run's configuration: a dict, dataclass or argparse.Namespace; recorded with "
        "secrets redacted, hashed, its `seed` kept.",
    )
    total_epochs: int | None = _option(None, "Planned epochs (`run.epochs()` iterates them).")
    total_steps: int | None = _option(
        None,
        "Planned steps: progress, ETA, milestones (learned from `len(loader)` when "
        "`total_epochs` is given).",
    )
    initial_step: int | None = _option(
        None,
        "The step the loop starts after (0 for a loop counting its steps from 1; the "
        "restored step of a checkpoint): the first step line at `k` then stands for "
        "`k - initial_step` steps. None: unknown, the first line counts once. A resumed "
        "run starts after the record's last step instead.",
    )
    seed: int | None = _option(None, "The run's seed (default: `config['seed']`).")
    run_id: str | None = _option(
        None, "The run id (default: the launcher's shared id, else a new one)."
    )
    dir: str = _option(
        "traintel-runs", "Where run records go: `<dir>/<run-id>/`.", env.TRAINTEL_DIR
    )
    mode: Mode = _option(
        "online",
        "`online`: export over OTLP as the run goes; `offline`: record everything "
        "(spans and trace ids included), export nothing; `traintel sync` sends the "
        "record later (docs/offline.md).",
        env.TRAINTEL_MODE,
    )
    otlp: bool | None = _option(
        None,
        "Export over OTLP (None: as `mode` says, unless OTEL_SDK_DISABLED=true; False is "
        "`mode='offline'`).",
    )
    http_port: int | None = _option(
        None,
        "Serve /metrics, /healthz, /status, /events on this port (0: any free port; None: off).",
        env.TRAINTEL_HTTP_PORT,
    )
    http_host: str = _option("127.0.0.1", "The address the endpoint binds.")
    allow_remote_http: bool = _option(
        False, "Allow an `http_host` beyond loopback (the endpoint switches debug logging)."
    )
    step_span_every: int = _option(100, "One span every N steps (0: no step spans).")
    sample_interval: float = _option(
        5.0, "Seconds between GPU, CUDA and system samples (0: off).", env.TRAINTEL_SAMPLE_INTERVAL
    )
    all_gpus: bool = _option(False, "Sample every GPU of the host, not only this process's.")
    progress: ProgressMode = _option(
        "auto",
        "auto (a bar on a terminal, lines otherwise), bar, lines or off.",
        env.TRAINTEL_PROGRESS,
    )
    progress_interval: float = _option(30.0, "Seconds between plain progress lines.")
    flush_interval: float = _option(1.0, "Seconds between writes of the run record.")
    max_record_bytes: int = _option(
        256 * 1024 * 1024, "Rotate events.jsonl past this size (bytes)."
    )
    shutdown_timeout: float = _option(
        2.0, "Upper bound in seconds on exporting the last telemetry at the end of a run."
    )
    max_metric_names: int = _option(
        256, "How many distinct metric, event and instrument names a run may create."
    )
    log_level: str = _option("INFO", "Level of traintel's own logs.", env.TRAINTEL_LOG_LEVEL)
    console_logs: bool = _option(True, "Print traintel's logs on the console.")
    rank: int | None = _option(None, "This process's rank (None: from torchrun, SLURM or MPI).")
    local_rank: int | None = _option(None, "The rank on this node (None: from the launcher).")
    world_size: int | None = _option(None, "The number of ranks (None: from the launcher).")
    handle_signals: bool = _option(
        True,
        "Record SIGTERM (preemption) and act on it (`sigterm`); SIGUSR1 toggles debug logging.",
    )
    sigterm: SigtermMode = _option(
        "exit",
        "What SIGTERM does when no handler of yours decides: `exit` finishes the run "
        "(`preempted`) and exits 143; `flag` only sets `run.stop_requested`, so that "
        "the loop can checkpoint and stop.",
    )
    resume: ResumeMode = _option(
        None,
        "Continue the record of `run_id`: True/`allow` (continue or start), `must` "
        "(continue, else refuse), False/`never` (refuse an existing record); None "
        "continues an existing one with a warning.",
    )
    reinit: ReinitMode = _option(
        "finish_previous",
        "A live run in this process when `init` is called again: "
        "`finish_previous` finishes it (with a warning), `create_new` keeps "
        "both.",
    )
    tags: list[str] = _option(
        [],
        "Tags (recorded, in summary.json, a `traintel_run_info` label, filterable with "
        "`traintel status --tag`).",
    )
    notes: str | None = _option(None, "Free text about the run (recorded, in summary.json).")
    group: str | None = _option(
        None, "A group of related runs (a sweep, a job's restarts): recorded, exported, filterable."
    )
    goals: dict[str, Goal] = _option(
        {},
        "Which way each eval metric improves, e.g. `{'bleu': 'max'}` (default: from the "
        "metric's name; unknown names get no best).",
    )
    halt_on_nonfinite: bool = _option(
        False, "Stop the run with `NonFiniteLossError` at the first NaN/Inf loss."
    )
    capture_logs: bool = _option(
        True,
        "Take the script's own `logging` lines into the record and OTLP logs: WARNING "
        "and above from every logger, INFO from `__main__` and `log_loggers` (the user's "
        "handlers are left as they are).",
    )
    log_loggers: list[str] = _option(
        [],
        "More loggers (and their children) whose INFO lines reach the record, e.g. "
        "`['mytrainer']`.",
    )
    loss: str | None = _option(
        None,
        "The name of the training loss among the values `run.log` gets (summary, "
        "progress, `traintel_loss`, non-finite handling); default: the first of `loss`, "
        "`train/loss`, `train_loss`, `training_loss`, `loss/train`, ... a step logs.",
    )
    strict: bool = _option(
        False,
        "Raise what a run refuses (a value that is not a number, a name beyond the rules "
        "or the budget, ...) instead of warning once and counting it: for your own "
        "tests. `traintel.testing.capture()` runs are strict.",
    )
    grafana_annotations: bool = _option(
        False,
        "Mark run events as annotations in the Grafana at GRAFANA_URL (token in "
        "GRAFANA_TOKEN; the `traintel[grafana]` extra), posted off the training thread.",
        env.TRAINTEL_GRAFANA_ANNOTATIONS,
    )
    tensorboard: bool = _option(
        False,
        "Write TensorBoard event files into `<run dir>/tensorboard/` as the run goes, "
        "from its record, off the training thread (the `traintel[tensorboard]` extra); "
        "`tensorboard --logdir traintel-runs` shows every run.",
    )

    def __post_init__(self) -> None:
        """Every option checked against its range; a refusal names the option, the range, the
        value given and the fix."""
        self.project = check_label("traintel.init: project", self.project)
        if self.name is not None:
            self.name = check_label("traintel.init: name", self.name)
        if self.run_id is not None:
            check_run_id("traintel.init: run_id", self.run_id)
        for key, low in (
            ("total_epochs", 1),
            ("total_steps", 1),
            ("initial_step", 0),
            ("world_size", 1),
            ("rank", 0),
            ("local_rank", 0),
            ("http_port", 0),
            ("seed", None),
        ):
            value = getattr(self, key)
            if value is not None:
                _whole(key, value, low, 65535 if key == "http_port" else None)
        _whole("step_span_every", self.step_span_every, 0, None, "(0 turns step spans off)")
        _whole(
            "max_record_bytes",
            self.max_record_bytes,
            1024,
            None,
            "(events.jsonl rotates past this size; 256 MiB by default)",
        )
        _whole(
            "max_metric_names",
            self.max_metric_names,
            1,
            1_000_000,
            "(each name is a series on every export path)",
        )
        _seconds(
            "flush_interval",
            self.flush_interval,
            0.01,
            3600.0,
            "(0 would keep the record writer spinning)",
        )
        _seconds(
            "shutdown_timeout",
            self.shutdown_timeout,
            0.0,
            600.0,
            "(the longest finish() may wait for the last export)",
        )
        _seconds("progress_interval", self.progress_interval, 0.0, 86400.0, "")
        if self.sample_interval != 0:
            _seconds(
                "sample_interval", self.sample_interval, 0.01, 3600.0, "(0 turns sampling off)"
            )
        for key in (
            "allow_remote_http",
            "all_gpus",
            "console_logs",
            "handle_signals",
            "halt_on_nonfinite",
            "tensorboard",
            "capture_logs",
            "strict",
        ):
            if not isinstance(getattr(self, key), bool):
                raise TypeError(
                    f"traintel.init: {key} must be True or False, got {shown(getattr(self, key))}"
                )
        if self.otlp is not None and not isinstance(self.otlp, bool):
            raise TypeError(
                f"traintel.init: otlp must be True, False or None, got {shown(self.otlp)}"
            )
        check_choice("traintel.init: mode", self.mode, MODES)
        if self.mode == "offline" and self.otlp:
            raise ValueError(
                "traintel.init: mode='offline' exports nothing, but otlp=True asks "
                "for export; pass one of them"
            )
        check_choice("traintel.init: progress", self.progress, PROGRESS_MODES)
        check_choice("traintel.init: sigterm", self.sigterm, ("exit", "flag"))
        check_choice("traintel.init: reinit", self.reinit, ("finish_previous", "create_new"))
        check_choice(
            "traintel.init: resume", self.resume, (True, False, "allow", "must", "never", None)
        )
        self.tags = check_tags("traintel.init", self.tags)
        if self.group is not None:
            self.group = check_label("traintel.init: group", self.group)
        if self.notes is not None and (not isinstance(self.notes, str) or len(self.notes) > 10_000):
            raise TypeError(
                f"traintel.init: notes must be a string of at most 10,000 "
                f"characters, got {shown(self.notes)}"
            )
        if not isinstance(self.log_loggers, list) or not all(
            isinstance(n, str) and n for n in self.log_loggers
        ):
            raise TypeError(
                f"traintel.init: log_loggers must be a list of logger names, e.g. "
                f"['mytrainer'], got {shown(self.log_loggers)}"
            )
        if self.loss is not None and (not isinstance(self.loss, str) or not self.loss):
            raise TypeError(
                f"traintel.init: loss must be the name the loss is logged under, "
                f"e.g. loss='train/loss', got {shown(self.loss)}"
            )
        if self.loss is not None:  # a name run.log would refuse could never be the loss
            check_name("traintel.init: loss", self.loss)
        if not isinstance(self.goals, dict):
            raise TypeError(
                f"traintel.init: goals must be a dict like {{'bleu': 'max'}}, got "
                f"{shown(self.goals)}"
            )
        self.log_level = check_choice(
            "traintel.init: log_level", str(self.log_level).upper(), _LOG_LEVELS
        )
        if not isinstance(self.dir, (str, os.PathLike)) or not str(self.dir):
            raise TypeError(f"traintel.init: dir must be a path, got {shown(self.dir)}")
        if (
            self.http_host not in _LOOPBACK
            and not self.allow_remote_http
            and self.http_host == env.OTEL_EXPORTER_PROMETHEUS_HOST.get()
        ):
            logging.getLogger("traintel").warning(
                "traintel.init: environment variable OTEL_EXPORTER_PROMETHEUS_HOST=%s would expose "
                "the run's status and debug controls beyond this machine: /metrics binds "
                "127.0.0.1. Pass allow_remote_http=True to traintel.init if you mean it",
                self.http_host,
            )
            self.http_host = "127.0.0.1"
        if self.http_host not in _LOOPBACK and not self.allow_remote_http:
            raise ValueError(
                f"traintel.init: http_host={self.http_host!r} would expose the run's status and "
                "debug controls beyond this machine; pass allow_remote_http=True if you mean it"
            )

    @property
    def export_mode(self) -> ExportMode:
        """``otlp`` (live export), ``offline`` (spans recorded, nothing exported: sync later) or
        ``disabled`` (OTEL_SDK_DISABLED=true: no OpenTelemetry, as the specification says, unless
        ``otlp=True`` asks for export in so many words)."""
        if self.otlp:
            return "otlp"
        if env.OTEL_SDK_DISABLED.is_true():
            return "disabled"
        if self.mode == "offline" or self.otlp is False:
            return "offline"
        return "otlp"


class InitOptions(TypedDict, total=False):
    """``traintel.init``'s keyword options, for type checkers (``**options: Unpack[InitOptions]``).
    Each is a :class:`Settings` field; None means "not given": the environment or the default
    applies. A test keeps the two in step."""

    total_epochs: int | None
    total_steps: int | None
    initial_step: int | None
    seed: int | None
    run_id: str | None
    dir: str | None
    mode: Mode | None
    otlp: bool | None
    http_port: int | None
    http_host: str | None
    allow_remote_http: bool | None
    step_span_every: int | None
    sample_interval: float | None
    all_gpus: bool | None
    progress: ProgressMode | None
    progress_interval: float | None
    flush_interval: float | None
    max_record_bytes: int | None
    shutdown_timeout: float | None
    max_metric_names: int | None
    log_level: str | None
    console_logs: bool | None
    rank: int | None
    local_rank: int | None
    world_size: int | None
    handle_signals: bool | None
    sigterm: SigtermMode | None
    resume: ResumeMode
    reinit: ReinitMode | None
    tags: list[str] | None
    notes: str | None
    group: str | None
    goals: dict[str, Goal] | None
    halt_on_nonfinite: bool | None
    loss: str | None
    capture_logs: bool | None
    log_loggers: list[str] | None
    strict: bool | None
    grafana_annotations: bool | None
    tensorboard: bool | None


def settings_from(kwargs: dict[str, Any]) -> Settings:
    """Build settings from ``init`` keyword arguments over environment defaults; unknown keys get
    a clear error with the closest valid name."""
    known = {f.name for f in fields(Settings)}
    for key in kwargs:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"traintel.init got an unknown keyword argument {key!r}{hint} "
                f"Valid arguments: {', '.join(sorted(known))}"
            )
    given = {k: v for k, v in kwargs.items() if v is not None}
    sources: dict[str, str] = {}
    chosen = {k: v for k, v in _from_environment(sources).items() if k not in given}
    if chosen:
        # settings from the environment never stop a run: each is checked with the arguments
        # given (whose own errors are the caller's), and a bad one is its default, warned
        Settings(**given)
        for key in list(chosen):
            try:
                Settings(**given, **{key: chosen[key]})
            except (TypeError, ValueError) as error:
                name, value = sources.get(key, key), chosen.pop(key)
                text = env.BY_NAME[name].get() if name in env.BY_NAME else None
                # the reason speaks of the variable, not of an argument the user never passed
                _ignore(name, text or str(value), str(error).replace(key, "the value"))
    return Settings(**given, **chosen)


def _ignore(variable: str, text: str, why: str) -> None:
    """A bad value of an environment variable: its default applies, with one warning naming
    the variable (and no ``traintel.init`` argument, which the user never passed)."""
    why = why.replace("traintel.init: ", "").replace(f"environment variable {variable}=", "")
    log.warning(
        "traintel: environment variable %s=%r is ignored (%s); using the default",
        variable,
        text,
        why.rstrip("."),
    )


#: the options whose variable names one of a few values (any case, as OTel reads enumerations)
_CHOICES: dict[str, tuple[str, ...]] = {
    "mode": MODES,
    "progress": PROGRESS_MODES,
    "log_level": _LOG_LEVELS,
}


def _from_environment(sources: dict[str, str] | None = None) -> dict[str, Any]:
    """Options from the environment; ``sources`` gets the variable of each. A value that cannot
    be read is left out (its default applies), with a warning naming the variable."""
    out: dict[str, Any] = {}
    sources = {} if sources is None else sources
    for option in fields(Settings):
        variable: env.Variable | None = option.metadata.get("env")
        if variable is None or variable.get() is None:
            continue
        sources[option.name] = variable.name
        try:
            if option.name == "http_port":
                out[option.name] = variable.integer()
            elif option.name == "sample_interval":
                out[option.name] = variable.real()
            elif option.name in _CHOICES:
                out[option.name] = variable.choice(_CHOICES[option.name])
            elif option.name == "grafana_annotations":
                out[option.name] = variable.is_true()
            else:
                out[option.name] = variable.get()
        except ValueError as error:
            _ignore(variable.name, variable.get() or "", str(error))
    out.update(_distributed_environment())
    if "http_port" not in out and "prometheus" in [
        name.strip().lower() for name in (env.OTEL_METRICS_EXPORTER.get() or "").split(",")
    ]:
        # the specification's Prometheus exporter is traintel's own /metrics (the pull path)
        try:
            out["http_port"] = env.OTEL_EXPORTER_PROMETHEUS_PORT.integer() or 9464
            sources["http_port"] = env.OTEL_EXPORTER_PROMETHEUS_PORT.name
        except ValueError as error:
            _ignore(
                env.OTEL_EXPORTER_PROMETHEUS_PORT.name,
                env.OTEL_EXPORTER_PROMETHEUS_PORT.get() or "",
                str(error),
            )
            out["http_port"] = 9464
        host = env.OTEL_EXPORTER_PROMETHEUS_HOST.get() or "localhost"
        out["http_host"] = "127.0.0.1" if host == "localhost" else host
        sources["http_host"] = env.OTEL_EXPORTER_PROMETHEUS_HOST.name
    return out


#: (rank, local rank, world size) as each launcher publishes them, first match wins
_LAUNCHERS = (
    (env.RANK, env.LOCAL_RANK, env.WORLD_SIZE),
    (env.SLURM_PROCID, env.SLURM_LOCALID, env.SLURM_NTASKS),
    (env.OMPI_COMM_WORLD_RANK, env.OMPI_COMM_WORLD_LOCAL_RANK, env.OMPI_COMM_WORLD_SIZE),
    (env.PMI_RANK, env.MPI_LOCALRANKID, env.PMI_SIZE),
)


def _distributed_environment() -> dict[str, Any]:
    """Rank, local rank and world size as torchrun, SLURM or MPI publish them."""
    for rank, local, world in _LAUNCHERS:
        if (rank.get() or "").isdigit():
            return {
                "rank": _digits(rank),
                "local_rank": _digits(local),
                "world_size": _digits(world),
            }
    return {}


def _digits(variable: env.Variable) -> int | None:
    value = variable.get() or ""
    return int(value) if value.isdigit() else None


def hostname() -> str:
    return socket.gethostname()


def _whole(key: str, value: object, low: int | None, high: int | None, why: str = "") -> None:
    """An int option in [low, high]: refused with the range, the value given and the fix."""
    bounds = (
        f"from {low} to {high}"
        if low is not None and high is not None
        else f"of at least {low}"
        if low is not None
        else ""
    )
    rule = " ".join(filter(None, (f"traintel.init: {key} must be an int", bounds, why)))
    if not isinstance(value, int) or isinstance(value, bool):
        example = (
            f" (pass {key}={int(value)})" if isinstance(value, str) and value.isdigit() else ""
        )
        raise TypeError(f"{rule}, got {type(value).__name__} {shown(value)}{example}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{rule}, got {shown(value)}")


def _seconds(key: str, value: object, low: float, high: float, why: str) -> None:
    """A number of seconds in [low, high]: refused with the range, the value and the fix."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        rule = " ".join(
            filter(
                None,
                (f"traintel.init: {key} must be a number of seconds from {low:g} to {high:g}", why),
            )
        )
        raise ValueError(f"{rule}, got {shown(value)}")


def _default_text(option: Field[Any]) -> str:
    if option.default is not MISSING:
        return f"`{option.default!r}`"
    factory: Any = option.default_factory  # a dict or a list
    return f"`{factory()!r}`"


def render_markdown() -> str:
    """docs/configuration.md: every ``traintel.init`` option and every environment variable,
    generated from :class:`Settings` and ``traintel.core.env`` so that the page cannot drift."""
    lines = [
        "# Configuration",
        "",
        "Generated from `src/traintel/run/settings.py` and `src/traintel/core/env.py` by "
        "`traintel docs configuration`; do not edit.",
        "",
        "## `traintel.init` options",
        "",
        "Keyword arguments win over the environment; an unknown one is refused with the "
        "closest valid name.",
        "",
        "| option | default | environment | meaning |",
        "|---|---|---|---|",
    ]
    for option in fields(Settings):
        variable = option.metadata["env"]
        lines.append(
            f"| `{option.name}` | {_default_text(option)} | "
            f"{f'`{variable.name}`' if variable else '-'} | {option.metadata['doc']} |"
        )
    lines += ["", "## Environment variables", "", env.variables_markdown()]
    return "\n".join(lines)
