"""The run record's format as types: every line a TypedDict, statuses and levels Literals.

``docs/record-format.md`` describes the same lines for people. The writer side builds these
types; what a reader gets back from a file is a :data:`RawLine` (anything a crashed or foreign
writer may have left), which readers check key by key.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

from traintel.core.stats import Statistics
from traintel.core.vocabulary import (
    END_STATUSES as END_STATUSES,
)
from traintel.core.vocabulary import (
    LEVELS as LEVELS,
)
from traintel.core.vocabulary import (
    SEVERITIES as SEVERITIES,
)
from traintel.core.vocabulary import (
    STATUSES as STATUSES,
)
from traintel.core.vocabulary import (
    EndStatus as EndStatus,
)
from traintel.core.vocabulary import (
    ErrorType as ErrorType,
)
from traintel.core.vocabulary import (
    ExportMode as ExportMode,
)
from traintel.core.vocabulary import (
    Goal as Goal,
)
from traintel.core.vocabulary import (
    InstrumentKind as InstrumentKind,
)
from traintel.core.vocabulary import (
    Level as Level,
)
from traintel.core.vocabulary import (
    ObservationKind as ObservationKind,
)
from traintel.core.vocabulary import (
    RecordStatus as RecordStatus,
)

# the shared vocabulary, re-exported: readers and writers of the record import it from here
from traintel.core.vocabulary import (
    RunStatus as RunStatus,
)
from traintel.core.vocabulary import (
    Severity as Severity,
)
from traintel.core.vocabulary import (
    Signal as Signal,
)
from traintel.core.vocabulary import (
    SpanStatus as SpanStatus,
)

#: the live file of a record (rotated ones are ``events.jsonl.1``, ``.2``, ...)
EVENTS_FILE = "events.jsonl"
#: the longest line a writer writes and a reader reads: a longer one is replaced by a line saying
#: what was dropped (writer), or skipped and counted (reader), never held whole in memory
MAX_LINE_BYTES = 16 * 1024 * 1024

#: a step's metrics: numbers, and "nan"/"inf"/"-inf" text for non-finite values (JSON has none)
Metrics = dict[str, float | int | str]
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


class Whose(TypedDict):
    """Whose a line is: every line carries it (the pipeline stamps it, the writer puts it on the
    step lines it builds)."""

    run: str
    rank: int


class RunTelemetry(TypedDict):
    """What a run did with its telemetry, in its ``run_start`` line (``traintel sync`` reads
    it)."""

    export: ExportMode
    #: seconds between metric exports (live), or between the points a sync sends (offline)
    export_interval_s: float
    #: the level of traintel's logs: lines below it reached the record alone, not OTLP
    log_level: str
    #: the OpenTelemetry resource the run's telemetry carries (or would have carried)
    resource: dict[str, Any]


class RunStartLine(_Stamped, RunTelemetry):
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
    #: ``traintel.init(loss=...)``: the name of the training loss, None: by its name
    loss_key: str | None
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


class _Joined(TypedDict, total=False):
    #: the keys that came from ``run.log(..., commit=False)`` calls (absent when none)
    uncommitted: list[str]


class StepLine(_Stamped, _Joined):
    type: Literal["step"]
    step: int
    epoch: int
    step_s: float | None
    data_wait_s: float | None
    metrics: Metrics


class ValuesLine(_Stamped, _Joined):
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
    #: the run ended inside it (an exception, a signal): the epoch did not end
    cut: bool


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
    #: the step a line of the user's own loggers was logged at (``capture_logs``)
    step: int


class LogLine(_Stamped, _LogFields):
    type: Literal["log"]
    logger: str


class InstrumentLine(_Stamped, Statistics):
    type: Literal["instrument"]
    kind: InstrumentKind
    name: str


class SpanEvent(TypedDict):
    """An event on a span (an exception, recorded with its scrubbed text)."""

    name: str
    time_ns: int
    attributes: dict[str, Any]


class SpanLine(_Stamped):
    """A span that ended (its own ``trace_id`` and ``span_id`` are the stamped ones): what
    ``traintel sync`` sends to Tempo for a run that did not export it live."""

    type: Literal["span"]
    name: str
    parent_span_id: str | None
    kind: str
    start_ns: int
    end_ns: int
    status: SpanStatus
    status_message: str | None
    attributes: dict[str, Any]
    events: list[SpanEvent]


class ExportLine(_Stamped):
    """One live export's outcome, so that ``traintel sync`` sends only what never arrived:
    for metrics the time their points were collected (``at``), for logs the timestamps (ns) of
    the log records delivered, for spans their ids."""

    type: Literal["export"]
    signal: Signal
    ok: bool
    count: int
    at: float | None
    delivered: list[int] | list[str]


class RunEndLine(_Stamped):
    """The end of a segment: its status, duration, the steps it took and its last step."""

    type: Literal["run_end"]
    status: EndStatus
    duration_s: float
    steps: int
    last_step: int


RecordLine = (
    RunStartLine
    | ConfigLine
    | StepLine
    | ValuesLine
    | EvalLine
    | EpochLine
    | EventLine
    | MilestoneLine
    | ErrorLine
    | LogLine
    | InstrumentLine
    | SpanLine
    | ExportLine
    | RunEndLine
)
