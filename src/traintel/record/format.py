"""The run record's format as types: every line a TypedDict, statuses and levels Literals.

``docs/record-format.md`` describes the same lines for people. The writer side builds these
types; what a reader gets back from a file is a :data:`RawLine` (anything a crashed or foreign
writer may have left), which readers check key by key.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict, Union

from ..stats import Statistics

#: the live file of a record (rotated ones are ``events.jsonl.1``, ``.2``, ...)
EVENTS_FILE = "events.jsonl"
#: the longest line a writer writes and a reader reads: a longer one is replaced by a line saying
#: what was dropped (writer), or skipped and counted (reader), never held whole in memory
MAX_LINE_BYTES = 16 * 1024 * 1024

RunStatus = Literal["running", "finished", "failed", "preempted", "interrupted"]
#: how a run ends: ``preempted`` after SIGTERM (a scheduler's preemption or time limit, the
#: signal a resumable run expects), ``interrupted`` by Ctrl-C or an exit code, ``failed`` by an
#: exception, else ``finished``
EndStatus = Literal["finished", "failed", "preempted", "interrupted"]
#: every status, in the order the ``traintel_run_status`` state set exports them
STATUSES: tuple[RunStatus, ...] = ("running", "finished", "failed", "preempted", "interrupted")
#: the statuses a run ends with, worst first (a multi-rank run's status is its worst rank's)
END_STATUSES: tuple[EndStatus, ...] = ("failed", "interrupted", "preempted", "finished")

#: what a reader says of a run from its record (one vocabulary for every command): how it ended,
#: ``running``, ``crashed`` (its process is gone without saying how: SIGKILL, the OOM killer, a
#: lost node) or ``stale`` (no line for a long time, from a process this host cannot check)
RecordStatus = Literal["running", "finished", "failed", "preempted", "interrupted", "crashed",
                       "stale"]

#: the direction of an eval metric for best-so-far
Goal = Literal["min", "max"]

Level = Literal["debug", "info", "warning", "error", "critical"]
LEVELS: tuple[Level, ...] = ("debug", "info", "warning", "error", "critical")

Severity = Literal["critical", "high", "medium", "low"]
SEVERITIES: tuple[Severity, ...] = ("critical", "high", "medium", "low")
ErrorType = Literal["oom", "cuda", "distributed", "nonfinite_loss", "data", "config",
                    "model_loading", "network", "checkpoint_io", "interrupted", "other"]

InstrumentKind = Literal["counter", "gauge", "histogram", "timer", "operation"]
#: the kinds of observation the record writer folds (and exports as histograms)
ObservationKind = Literal["histogram", "timer", "operation"]

LineType = Literal["run_start", "config", "step", "values", "eval", "epoch", "event", "milestone",
                   "error", "log", "instrument", "run_end"]

#: a step's metrics: numbers, and "nan"/"inf"/"-inf" text for non-finite values (JSON has none)
Metrics = dict[str, Union[float, int, str]]
#: a line as read back from a file: whatever is there, checked by its readers
RawLine = dict[str, Any]
#: a line while the event pipeline's processors work on it (structlog's ``EventDict``)
EventDict = dict[str, Any]


class _Stamped(TypedDict, total=False):
    """Keys the event pipeline adds to every line (the writer adds ts, level, run and rank to
    step lines itself); ``message`` where there is text for people."""

    ts: float
    level: Level
    run: str
    rank: int
    message: str
    trace_id: str | None
    span_id: str | None


class RunStartLine(_Stamped):
    """The start of a segment: a run's first, or a resumed run's next (``segment`` counts from
    1; ``resumed`` says whether ``resume=`` asked for it)."""

    type: Literal["run_start"]
    project: str
    name: str
    host: str
    pid: int
    world_size: int
    local_rank: int | None
    traintel_version: str
    total_epochs: int | None
    total_steps: int | None
    #: the step this segment's steps begin after (``initial_step=``; on resume the record's last
    #: step), None when unknown: then its first step line counts once
    initial_step: int | None
    segment: int
    resumed: bool
    tags: list[str]
    notes: str | None
    group: str | None


ConfigReason = Literal["start", "resume", "update"]


class ConfigLine(_Stamped):
    """The whole configuration: at start, on resume and after ``run.config.update``;
    ``changed`` names the keys whose values differ from the configuration before."""

    type: Literal["config"]
    config: dict[str, Any]
    config_hash: str
    seed: int | None
    reason: ConfigReason
    changed: list[str]


class StepLine(_Stamped):
    type: Literal["step"]
    step: int
    epoch: int
    step_s: float | None
    data_wait_s: float | None
    metrics: Metrics


class ValuesLine(_Stamped):
    """Values that are not a step: ``run.log_values`` (epoch-level figures) and values logged
    for a step already written. They neither count nor time a step."""

    type: Literal["values"]
    step: int
    epoch: int
    metrics: Metrics


class EvalLine(_Stamped):
    type: Literal["eval"]
    step: int
    epoch: int
    metrics: Metrics
    is_best: dict[str, bool]
    best: dict[str, float | None]
    best_step: dict[str, int | None]
    #: the direction each metric's best is taken in; None: unknown, no best is claimed
    mode: dict[str, Goal | None]


class EpochLine(_Stamped):
    type: Literal["epoch"]
    epoch: int
    step: int
    steps: int
    duration_s: float


class EventLine(_Stamped):
    type: Literal["event"]
    event: str
    fields: dict[str, Any]
    step: int
    epoch: int


class MilestoneLine(_Stamped):
    type: Literal["milestone"]
    percent: int
    step: int
    elapsed_s: float
    eta_s: float | None


class ErrorLine(_Stamped):
    type: Literal["error"]
    error_type: ErrorType
    severity: Severity
    exc_type: str
    operation: str | None
    traceback: str
    context: dict[str, object]
    hints: list[str]
    step: int
    epoch: int


class _LogFields(TypedDict, total=False):
    #: the ``extra`` a component log call passed (secrets scrubbed)
    fields: dict[str, Any]


class LogLine(_Stamped, _LogFields):
    type: Literal["log"]
    logger: str


class InstrumentLine(_Stamped, Statistics):
    type: Literal["instrument"]
    kind: InstrumentKind
    name: str


class RunEndLine(_Stamped):
    """The end of a segment: its status, duration, the steps it took and its last step."""

    type: Literal["run_end"]
    status: EndStatus
    duration_s: float
    steps: int
    last_step: int


RecordLine = Union[RunStartLine, ConfigLine, StepLine, ValuesLine, EvalLine, EpochLine,
                   EventLine, MilestoneLine, ErrorLine, LogLine, InstrumentLine, RunEndLine]
