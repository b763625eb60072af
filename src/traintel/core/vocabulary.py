"""The words every layer shares: how a run ends, levels, severities, goals, signals.

They are the record's vocabulary (``traintel.record.format`` builds its lines from them) and also
what the hot-path state, error classification and samplers speak, which sit below the record:
so they live here, at the bottom, and the record re-exports them.
"""

from __future__ import annotations

from typing import Literal

RunStatus = Literal[
    "running", "finished", "failed", "preempted", "interrupted", "pruned", "stopped"
]
#: how a run ends: ``preempted`` after SIGTERM (a scheduler's preemption or time limit, the
#: signal a resumable run expects), ``interrupted`` by Ctrl-C or an exit code, ``failed`` by an
#: exception, ``pruned`` / ``stopped`` by a hyperparameter search that ended the trial early
#: (Optuna's ``TrialPruned``, Ray Tune's stop: ``traintel.run.sweeps``; no failure), else ``finished``
EndStatus = Literal["finished", "failed", "preempted", "interrupted", "pruned", "stopped"]
#: every status, in the order the ``traintel_run_status`` state set exports them
STATUSES: tuple[RunStatus, ...] = (
    "running",
    "finished",
    "failed",
    "preempted",
    "interrupted",
    "pruned",
    "stopped",
)
#: the statuses a run ends with, worst first (a multi-rank run's status is its worst rank's)
END_STATUSES: tuple[EndStatus, ...] = (
    "failed",
    "interrupted",
    "preempted",
    "stopped",
    "pruned",
    "finished",
)

#: what a reader says of a run from its record (one vocabulary for every command): how it ended,
#: ``running``, ``crashed`` (its process is gone without saying how: SIGKILL, the OOM killer, a
#: lost node) or ``stale`` (no line for a long time, from a process this host cannot check)
RecordStatus = Literal[
    "running",
    "finished",
    "failed",
    "preempted",
    "interrupted",
    "crashed",
    "stale",
    "pruned",
    "stopped",
    "empty",
]

#: the direction of an eval metric for best-so-far
Goal = Literal["min", "max"]

Level = Literal["debug", "info", "warning", "error", "critical"]
LEVELS: tuple[Level, ...] = ("debug", "info", "warning", "error", "critical")

Severity = Literal["critical", "high", "medium", "low"]
SEVERITIES: tuple[Severity, ...] = ("critical", "high", "medium", "low")
ErrorType = Literal[
    "oom",
    "cuda",
    "distributed",
    "nonfinite_loss",
    "data",
    "config",
    "model_loading",
    "network",
    "checkpoint_io",
    "interrupted",
    "other",
]

InstrumentKind = Literal["counter", "gauge", "histogram", "timer", "operation"]
#: the kinds of observation the record writer folds (and exports as histograms)
ObservationKind = Literal["histogram", "timer", "operation"]

#: what a run did with its telemetry besides the record: ``otlp`` exported it live (and notes
#: each export's outcome in ``export`` lines), ``offline`` exported nothing (``traintel sync``
#: sends it later), ``disabled``: ``OTEL_SDK_DISABLED=true``, no OpenTelemetry at all (no spans,
#: no trace ids)
ExportMode = Literal["otlp", "offline", "disabled"]
#: the signals an ``export`` line speaks of (OpenTelemetry's names)
Signal = Literal["metrics", "logs", "traces"]
SpanStatus = Literal["unset", "ok", "error"]
