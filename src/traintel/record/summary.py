"""A run's figures, computed one way: ``summary.json`` and ``traintel logs summary`` both fold
step lines with :class:`StepFigures`, the writer as it writes them and the reader as it reads
them, so the two always agree.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any, Literal, TypedDict

from traintel.core.state import RunState, find_loss, nonfinite_text
from traintel.core.stats import RunningStats, Statistics
from traintel.record.format import (
    END_STATUSES,
    EndStatus,
    Goal,
    InstrumentKind,
    Metrics,
    ObservationKind,
    RawLine,
    RunStatus,
)

#: step lines a fold keeps to take back what a resumed run supersedes (a checkpoint this many
#: logged steps back or nearer is exact; going back further, the older lines stay counted and
#: the loss figures are those before the oldest kept line). Measured: 9.6 MB held at 60,000
#: lines of loss and samples (7.2 MB when only the counts could be taken back)
HISTORY = 50_000

#: a step line as :class:`StepFigures` keeps it to take it back: step, steps it stood for,
#: samples, tokens, its finite loss (None: none; a tuple when ``commit=False`` values that
#: joined it held one too: no tuple per line where one loss is the rule), then the loss
#: figures before it: min, max, last finite, final, non-finite count and the first
#: non-finite step
_Line = tuple[
    int,
    int,
    int,
    int,
    float | tuple[float, ...] | None,
    float,
    float,
    float | None,
    float | str | None,
    int,
    int | None,
]
#: what a step line without values added: no samples, no tokens, no loss
_NONE: tuple[int, int, float | None] = (0, 0, None)


class LossFigures(TypedDict):
    #: the name the loss was logged under (``train/loss``, ...; see ``LOSS_NAMES``)
    key: str | None
    """The training loss. ``final`` is the last value logged, as logged: ``"nan"``, ``"inf"`` or
    ``"-inf"`` when it was not finite (``last_finite`` is the last finite one); the statistics
    cover finite values only, ``nonfinite`` counts the others, from ``first_nonfinite_step``."""

    final: float | str | None
    last_finite: float | None
    best: float | None
    min: float | None
    max: float | None
    mean: float | None
    std: float | None
    count: int
    nonfinite: int
    first_nonfinite_step: int | None


class Throughput(TypedDict):
    steps_per_s: float | None
    samples_per_s: float | None
    tokens_per_s: float | None


class StepTime(TypedDict):
    mean_s: float | None
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    data_wait_fraction: float | None


class StepFigures:
    """Steps, samples, tokens, loss, throughput and step times of one rank, folded step line by
    step line, segment by segment (a resumed run's record holds several).

    A step line ``k`` steps after the previous one of its segment stands for ``k`` steps (a loop
    that logs every ``k`` iterations): steps, samples and tokens count ``k`` times. A run's first
    line counts once (or, when its run_start says ``initial_step``, the steps since that one); a
    resumed segment's first line stands for the steps since the last step
    of the segment before, when it comes after it (else once: the loop went back to a
    checkpoint). Rates are the steps (samples, tokens) inside the timed span over
    its length, summed over segments: from the start of each segment's first timed step to the
    end of its last, so the gaps between segments never count. ``percentiles`` keeps a bounded
    reservoir of step times for p50/p95/p99 (summary.json, the report); without it a step costs
    a few additions, which matters when ``traintel logs`` reads a record of millions of lines.
    Values a record cannot hold as numbers (non-finite ones are text) are counted apart or left
    out, so a foreign or torn record never raises.
    """

    __slots__ = (
        "steps",
        "samples",
        "tokens",
        "first_ts",
        "last_ts",
        "last_step",
        "loss",
        "final_loss",
        "nonfinite_loss",
        "first_nonfinite_step",
        "step_time",
        "data_wait",
        "waited",
        "_base",
        "_timed",
        "_active_before",
        "_segment_start",
        "_covers",
        "loss_key",
        "_history",
        "superseded",
        "epochs",
        "_epoch_ends",
    )

    def __init__(self, percentiles: bool = True, initial_step: int | None = None) -> None:
        self.steps = 0
        self.samples = 0
        self.tokens = 0
        #: when the first step started and the last ended
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        #: the number of the last step line of the segment being folded
        self.last_step: int | None = None
        #: the last step before the segment being folded (in a run's first segment: the
        #: ``initial_step`` it declared, else None)
        self._base: int | None = initial_step
        self.loss = RunningStats(reservoir=0)
        self.final_loss: float | str | None = None
        self.nonfinite_loss = 0
        self.first_nonfinite_step: int | None = None
        self.step_time = RunningStats() if percentiles else RunningStats(reservoir=0)
        self.data_wait = 0.0
        #: step time of the steps whose data wait was measured (``run.track``)
        self.waited = 0.0
        #: steps, samples and tokens inside the timed spans
        self._timed = [0, 0, 0]
        self._active_before = 0.0
        self._segment_start: float | None = None
        #: how many steps the last step line stood for
        self._covers = 1
        #: the name of the loss: declared (the run_start's ``loss_key``), else the first of
        #: ``LOSS_NAMES`` a step line holds, as the run itself picks it (``RunState.is_loss``)
        self.loss_key: str | None = None
        #: the recent step lines, to take back the ones a resumed run supersedes (it went back
        #: to an older checkpoint): each with what it added (``_Line``) and the loss figures
        #: as they stood before it, so that min, max, final and the non-finite count are put
        #: back exactly (the moments are worked back, ``RunningStats.remove``)
        self._history: deque[_Line] = deque(maxlen=HISTORY)
        #: steps counted once and then superseded by a resumed run's going back
        self.superseded = 0
        #: epochs that ended (a cut one is none), and the steps the recent ones ended at: a
        #: resumed run that goes back takes back the epochs after its checkpoint too
        self.epochs = 0
        self._epoch_ends: deque[int] = deque(maxlen=HISTORY)

    def begin_after(self, step: int) -> None:
        """The run's first segment starts after step ``step`` (its ``initial_step``)."""
        if self.last_step is None:
            self._base = step

    def new_segment(self) -> None:
        """A resumed run's next segment begins: its steps number on from wherever it starts."""
        self._active_before = self.active_s()
        self._segment_start = None
        if self.last_step is not None:
            self._base = self.last_step
        self.last_step = None

    def add(
        self,
        ts: float,
        step: int,
        step_s: float | None,
        data_wait_s: float | None,
        metrics: Metrics | None,
    ) -> None:
        last = self.last_step
        if last is None:
            if self.goes_back(step):
                self.supersede(step - 1)  # a resumed run went back to an older checkpoint
            base = self._base
            covers = step - base if base is not None and step > base else 1
        else:
            covers = step - last if step > last else 1
        self.last_step = step
        self._covers = covers
        self.steps += covers
        timed = self._timed
        if self._segment_start is None:
            # a segment's first line is timed only when it says how long its one step took
            counted = step_s is not None and covers == 1
            self._segment_start = ts - step_s if counted and step_s is not None else ts
            if self.first_ts is None:
                self.first_ts = self._segment_start
        else:
            counted = True
        if counted:
            timed[0] += covers
        self.last_ts = ts
        if step_s is not None:
            self.step_time.add(step_s)
            if data_wait_s is not None:
                self.data_wait += data_wait_s
                self.waited += step_s
        loss = self.loss
        low, high, last_finite, final = loss.min, loss.max, loss.last, self.final_loss
        nonfinite, first_nonfinite = self.nonfinite_loss, self.first_nonfinite_step
        samples, tokens, finite = self._fold(step, covers, counted, metrics) if metrics else _NONE
        self._history.append(
            (
                step,
                covers,
                samples,
                tokens,
                finite,
                low,
                high,
                last_finite,
                final,
                nonfinite,
                first_nonfinite,
            )
        )

    def epoch_ended(self, line: Mapping[str, Any]) -> None:
        """An ``epoch`` line: one more epoch, unless the run ended inside it (``cut``)."""
        if line.get("cut") is True:
            return
        self.epochs += 1
        if type(line.get("step")) is int:
            self._epoch_ends.append(line["step"])

    def goes_back(self, step: int) -> bool:
        """Whether a step line at ``step`` goes back to an older checkpoint: the first of a
        resumed segment, not after the step the record had reached."""
        base = self._base
        return self.last_step is None and base is not None and step <= base and bool(self._history)

    def supersede(self, after: int) -> None:
        """A resumed run goes on from step ``after`` (an older checkpoint than the record's
        last step): the steps after it, counted once already, are taken back, so that each
        step counts once: steps, samples, tokens, epochs and the loss (count, mean, std, min,
        max, best, final, last finite, non-finite count), as they stood after step ``after``.
        The record keeps their lines (a ``superseded`` event says which); live counters are
        not taken back.

        The bound: the last :data:`HISTORY` step lines (and epoch ends) are kept. Going back
        further, the lines before those kept stay counted, the loss figures as they stood
        before the oldest kept line."""
        ends = self._epoch_ends
        while ends and ends[-1] > after:  # epochs that ended after the checkpoint: taken back
            ends.pop()
            self.epochs -= 1
        base = self._base
        if base is None or after >= base:
            return
        history, loss = self._history, self.loss
        oldest: _Line | None = None
        while history and history[-1][0] > after:
            oldest = history.pop()
            step, covers, samples, tokens, losses = oldest[:5]
            undone = min(covers, step - after)
            self.steps -= undone
            self.superseded += undone
            self.samples -= samples * undone // covers if covers else 0
            self.tokens -= tokens * undone // covers if covers else 0
            if isinstance(losses, tuple):
                for value in losses:
                    loss.remove(value)
            elif losses is not None:
                loss.remove(losses)
        if oldest is not None:  # the loss figures as they were before the first line taken back
            loss.restore_extremes(oldest[5], oldest[6], oldest[7])
            self.final_loss, self.nonfinite_loss, self.first_nonfinite_step = oldest[8:]
        self._base = after

    def join(self, line: Mapping[str, Any]) -> None:
        """A ``values`` line that holds ``commit=False`` values (``uncommitted``) for the step
        just written: they were that step's (W&B merges them into it), so its loss, samples and
        tokens count as the step's. Any other values line neither counts nor times a step."""
        metrics, step = line.get("metrics"), self.last_step
        if (
            line.get("uncommitted")
            and type(metrics) is dict
            and step is not None
            and (line.get("step") == step)
        ):
            samples, tokens, finite = self._fold(step, self._covers, True, metrics)
            history = self._history
            if history and history[-1][0] == step:  # taken back with its step, if superseded
                entry = history[-1]
                losses = entry[4]
                if finite is not None:
                    losses = (
                        finite
                        if losses is None
                        else (*(losses if isinstance(losses, tuple) else (losses,)), finite)
                    )
                history[-1] = (
                    step,
                    entry[1],
                    entry[2] + samples,
                    entry[3] + tokens,
                    losses,
                    *entry[5:],
                )

    def _fold(
        self, step: int, covers: int, counted: bool, metrics: Metrics
    ) -> tuple[int, int, float | None]:
        """Fold a line's values; returns what it added: samples, tokens, its finite loss."""
        timed = self._timed
        finite: float | None = None
        key = self.loss_key
        if key is None:
            key = self.loss_key = find_loss(metrics)
        loss = None if key is None else metrics.get(key)
        if loss is not None:
            self.final_loss = loss
            if type(loss) is float or type(loss) is int:
                self.loss.add(loss)
                finite = loss
            elif type(loss) is str:  # NaN and infinities are written as text
                self.nonfinite_loss += 1
                if self.first_nonfinite_step is None:
                    self.first_nonfinite_step = step
        samples = _count(metrics.get("samples"), covers)
        if samples:
            self.samples += samples
            if counted:
                timed[1] += samples
        tokens = _count(metrics.get("tokens"), covers)
        if tokens:
            self.tokens += tokens
            if counted:
                timed[2] += tokens
        return samples or 0, tokens or 0, finite

    def active_s(self) -> float:
        """Seconds of training: each segment from the start of its first timed step to the end
        of its last step."""
        if self._segment_start is None or self.last_ts is None:
            return self._active_before
        return self._active_before + self.last_ts - self._segment_start

    def per_second(self, count: float) -> float | None:
        active = self.active_s()
        try:
            return count / active if active > 0 and count else None
        except OverflowError:  # a count beyond float64 (a user's): no rate to say
            return None

    def loss_figures(self) -> LossFigures:
        loss = self.loss
        counted = loss.count > 0
        return {
            "key": self.loss_key,
            "final": self.final_loss,
            "last_finite": loss.last,
            "best": loss.min if counted else None,
            "min": loss.min if counted else None,
            "max": loss.max if counted else None,
            "mean": loss.mean,
            "std": loss.std,
            "count": loss.count,
            "nonfinite": self.nonfinite_loss,
            "first_nonfinite_step": self.first_nonfinite_step,
        }

    def throughput(self) -> Throughput:
        steps, samples, tokens = self._timed
        return {
            "steps_per_s": self.per_second(steps),
            "samples_per_s": self.per_second(samples),
            "tokens_per_s": self.per_second(tokens),
        }

    def step_times(self) -> StepTime:
        times = self.step_time
        quantiles = times.quantiles() if times.count else {}
        return {
            "mean_s": times.mean,
            "p50_s": quantiles.get(50),
            "p95_s": quantiles.get(95),
            "p99_s": quantiles.get(99),
            "data_wait_fraction": self.data_wait / self.waited if self.waited else None,
        }


class EvalFigures(TypedDict):
    """One eval metric: its last value, its best so far and the step of it, and the direction
    the best is taken in (None: unknown from its name and no ``goals=``, so no best)."""

    last: float | str | None
    best: float | None
    best_step: int | None
    mode: Goal | None


class FirstError(TypedDict):
    ts: float
    error_type: str
    exc_type: str
    step: int | None


class ErrorCounts(TypedDict):
    total: int
    by_type: dict[str, int]
    #: the first error of the run (a job's root cause is its rank whose first came first)
    first: FirstError | None


class RecordHealth(TypedDict):
    lines: int
    dropped: int


class ExportFigures(TypedDict):
    """Failed OTLP exports by signal, and the last reason (None: export off or all went out)."""

    failures: dict[str, int]
    last_error: str | None


class NonFiniteFigures(TypedDict):
    count: int
    first_step: int
    last_step: int


class Segment(TypedDict):
    """One process's part of a run (a resumed run has several). ``status`` is None while it
    runs; ``crashed`` for one whose process ended without saying how (SIGKILL, a lost node)."""

    segment: int
    start_ts: float
    end_ts: float | None
    duration_s: float | None
    status: EndStatus | Literal["crashed"] | None
    steps: int
    last_step: int | None


class InstrumentFigures(Statistics):
    """One custom instrument: histograms, timers and operations with their statistics, counters
    by their total, gauges by their last value."""

    kind: InstrumentKind


class _UserFigures(TypedDict, total=False):
    #: ``run.summary``: the user's own figures and the defined metrics (absent when none)
    summary: dict[str, Any]


class RunSummary(_UserFigures):
    """summary.json (docs/record-format.md)."""

    run: str
    project: str
    name: str
    rank: int
    world_size: int
    status: RunStatus
    tags: list[str]
    notes: str | None
    group: str | None
    start_ts: float
    end_ts: float
    duration_s: float
    segments: list[Segment]
    steps: int
    #: steps counted once, then taken back: a resumed run went back to an older checkpoint
    superseded: int
    last_step: int | None
    epoch: int | None
    epochs: int
    samples: int
    tokens: int
    loss: LossFigures
    metrics: dict[str, float | str]
    nonfinite: dict[str, NonFiniteFigures]
    eval: dict[str, EvalFigures]
    throughput: Throughput
    step_time: StepTime
    errors: ErrorCounts
    #: inputs refused by reason (``traintel.core.refusals``), this segment's
    refused: dict[str, int]
    instruments: dict[str, InstrumentFigures]
    record: RecordHealth
    export: ExportFigures
    config_hash: str


class RunAbout(TypedDict):
    """What summary.json says about the run itself."""

    run: str
    project: str
    name: str
    rank: int
    world_size: int
    config_hash: str
    tags: list[str]
    notes: str | None
    group: str | None


def ended(segment: Segment) -> Segment:
    """A segment another one followed (or whose lock a resumed run holds) that never wrote
    its run_end was killed: ``crashed``, lasting from its start to its last line. One rule
    for summary.json and ``traintel logs summary`` (a killed segment said ``running`` there,
    and its gap to the next one counted in the duration)."""
    if segment["status"] is None:
        segment["status"] = "crashed"
    if segment["duration_s"] is None:
        segment["duration_s"] = (segment["end_ts"] or segment["start_ts"]) - segment["start_ts"]
    return segment


class RecordFold:
    """What summary.json says, folded from a record's lines (one rank's): step figures, segments,
    evaluations, errors, events, milestones, non-finite values, configuration, tags. A resumed
    run starts from it; ``traintel logs`` reads a record with it. Lines are checked key by key:
    a torn or foreign line is passed over, never raised on."""

    def __init__(
        self, percentiles: bool = True, defined: Mapping[str, DefinedGoal] | None = None
    ) -> None:
        self.figures = StepFigures(percentiles)
        self.segments: list[Segment] = []
        self.evals: dict[str, EvalFigures] = {}
        #: the recent evaluations (step, metric, its figures before): a resumed run that goes
        #: back takes back those after its checkpoint, as it takes back steps
        self._eval_history: deque[tuple[int, str, EvalFigures | None]] = deque(maxlen=HISTORY)
        #: ``run.define_metric``'s figures, when asked for
        self.defined = DefinedFigures(defined) if defined else None
        #: the last value of every key of step and values lines, as read (``metrics``)
        self._last: dict[str, Any] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self.first_error: FirstError | None = None
        self.events: dict[str, int] = {}
        self.milestones: set[int] = set()
        self.nonfinite: dict[str, NonFiniteFigures] = {}
        self.config: dict[str, Any] | None = None
        self.config_hash: str | None = None
        self.tags: list[str] = []
        self.notes: str | None = None
        self.group: str | None = None
        self.start: RawLine = {}
        #: the latest segment's run_start line
        self.last_start: RawLine = {}
        self.epoch: int | None = None

    @property
    def epochs(self) -> int:
        """Epochs that ended, each once (a resumed run's going back takes some back)."""
        return self.figures.epochs

    def add(self, line: RawLine) -> None:
        kind = line.get("type")
        if kind == "step":
            self._step(line)
        elif kind == "values":
            if type(line.get("metrics")) is dict:
                self._last.update(line["metrics"])
                if "uncommitted" in line:
                    self.figures.join(line)
                if self.defined is not None:
                    self.defined.add(line.get("step"), line["metrics"])
        elif kind == "eval":
            self._eval(line)
            if self.defined is not None and type(line.get("metrics")) is dict:
                self.defined.add(line.get("step"), line["metrics"])
        elif kind == "run_start":
            self._start(line)
        elif kind == "run_end":
            if not self.segments:  # a record without its run_start (cut, or written by hand)
                ts, took = _number(line.get("ts")), _number(line.get("duration_s"))
                if ts is not None:
                    self._start({"ts": ts - (took or 0.0)})
            segment = self.segments[-1] if self.segments else None
            status = line.get("status")
            if segment is not None and status in END_STATUSES:
                segment["status"] = status
                segment["end_ts"] = _number(line.get("ts")) or segment["end_ts"]
                segment["duration_s"] = _number(line.get("duration_s"))
        elif kind == "error":
            key = (str(line.get("error_type") or "other"), str(line.get("severity") or "medium"))
            self.errors[key] = self.errors.get(key, 0) + 1
            ts = line.get("ts")
            if self.first_error is None and (type(ts) is float or type(ts) is int):
                step = line.get("step")
                self.first_error = {
                    "ts": float(ts),
                    "error_type": key[0],
                    "exc_type": str(line.get("exc_type")),
                    "step": step if type(step) is int else None,
                }
        elif kind == "event" and isinstance(line.get("event"), str):
            name = line["event"]
            self.events[name] = self.events.get(name, 0) + 1
            if name in ("nonfinite_loss", "nonfinite_value"):
                self._nonfinite(line)
        elif kind == "milestone" and isinstance(line.get("percent"), int):
            self.milestones.add(line["percent"])
        elif kind == "epoch":
            self.figures.epoch_ended(line)
            if isinstance(line.get("epoch"), int):
                self.epoch = line["epoch"]
        elif kind == "config" and isinstance(line.get("config"), dict):
            self.config, self.config_hash = line["config"], line.get("config_hash")

    def _start(self, line: RawLine) -> None:
        if self.segments:
            self.figures.new_segment()
            ended(self.segments[-1])
        elif type(line.get("initial_step")) is int:
            self.figures.begin_after(line["initial_step"])
        if self.segments and type(line.get("initial_step")) is int:
            self.supersede(line["initial_step"])  # resumed from an older checkpoint
        if isinstance(line.get("loss_key"), str):  # declared: traintel.init(loss=...)
            self.figures.loss_key = line["loss_key"]
        if not self.start:
            self.start = line
        self.last_start = line
        ts = _number(line.get("ts")) or 0.0
        self.segments.append(
            {
                "segment": len(self.segments) + 1,
                "start_ts": ts,
                "end_ts": ts,
                "duration_s": None,
                "status": None,
                "steps": 0,
                "last_step": None,
            }
        )
        tags = line.get("tags")
        if isinstance(tags, list):
            self.tags += [t for t in tags if isinstance(t, str) and t not in self.tags]
        for key in ("notes", "group"):
            if isinstance(line.get(key), str):
                setattr(self, key, line[key])

    def _step(self, line: RawLine) -> None:
        ts, step, metrics = line.get("ts"), line.get("step"), line.get("metrics")
        if type(ts) is not float and type(ts) is not int or type(step) is not int:
            return
        if type(metrics) is not dict:
            metrics = None
        else:
            self._last.update(metrics)  # one C-level update per line: readers fold millions
        figures = self.figures
        if figures.goes_back(step):  # the first step of a resumed run that went back
            self.supersede(step - 1)
        if self.defined is not None and metrics is not None:
            self.defined.add(step, metrics)
        before = figures.steps
        figures.add(
            ts, step, _number(line.get("step_s")), _number(line.get("data_wait_s")), metrics
        )
        if isinstance(line.get("epoch"), int):
            self.epoch = line["epoch"] if self.epoch is None else max(self.epoch, line["epoch"])
        if self.segments:
            segment = self.segments[-1]
            segment["steps"] += figures.steps - before
            segment["last_step"], segment["end_ts"] = step, ts

    def supersede(self, after: int) -> None:
        """A resumed run went back to step ``after``: the steps after it are taken back
        (:meth:`StepFigures.supersede`), and so are the evaluations logged at them and the
        defined metrics' values of them: each figure as it stood after step ``after``."""
        self.figures.supersede(after)
        history, evals = self._eval_history, self.evals
        while history and history[-1][0] > after:
            _step, name, before = history.pop()
            if before is None:
                evals.pop(name, None)
            else:
                evals[name] = before
        if self.defined is not None:
            self.defined.supersede(after)

    def evals_at(self, after: int) -> dict[str, EvalFigures]:
        """The evaluations as they stood after step ``after`` (what :meth:`supersede` would
        leave), without taking anything back: a resumed process starts from them."""
        evals = dict(self.evals)
        for step, name, before in reversed(self._eval_history):
            if step <= after:
                break
            if before is None:
                evals.pop(name, None)
            else:
                evals[name] = before
        return evals

    @property
    def metrics(self) -> dict[str, float | str]:
        """The last value of every key of the step and values lines, as written (a number, or
        ``"nan"``/``"inf"`` text); anything else a foreign line held is left out."""
        return {
            key: value
            for key, value in self._last.items()
            if type(value) is float or type(value) is int or type(value) is str
        }

    def _nonfinite(self, line: RawLine) -> None:
        """Non-finite values by metric, from their warnings: the first of a metric, then counts
        of the ones since (``traintel.run.events``); a count a killed process never reported is
        missing here, while the loss's are counted from the steps themselves."""
        fields, step = line.get("fields"), line.get("step")
        if type(fields) is not dict or type(step) is not int:
            return
        metric, count = fields.get("metric"), fields.get("count", 1)
        if not isinstance(metric, str) or type(count) is not int:
            return
        seen = self.nonfinite.get(metric)
        if seen is None:
            self.nonfinite[metric] = {"count": count, "first_step": step, "last_step": step}
        else:
            seen["count"] += count
            seen["last_step"] = step

    def _eval(self, line: RawLine) -> None:
        metrics, best = line.get("metrics"), line.get("best")
        if type(metrics) is not dict:
            return
        best_step, modes, step = line.get("best_step"), line.get("mode"), line.get("step")
        at = step if type(step) is int else -1  # a line without its step is never taken back
        history, evals = self._eval_history, self.evals
        for name, value in metrics.items():
            history.append((at, name, evals.get(name)))
            evals[name] = {
                "last": value if isinstance(value, (int, float, str)) else None,
                "best": _number(best.get(name)) if type(best) is dict else None,
                "best_step": (
                    best_step.get(name)
                    if type(best_step) is dict and type(best_step.get(name)) is int
                    else None
                ),
                "mode": (
                    modes.get(name)
                    if type(modes) is dict and modes.get(name) in ("min", "max")
                    else None
                ),
            }


DefinedGoal = Literal["min", "max", "last"]


class DefinedFigures:
    """``run.define_metric``'s figures: the ``min``, ``max`` or ``last`` value of each defined
    metric, from the step, values and eval lines of a record, each step's values once (a
    resumed run's going back takes back those of the superseded steps, as
    :meth:`StepFigures.supersede` takes back the loss's)."""

    def __init__(self, goals: Mapping[str, DefinedGoal]) -> None:
        self.goals = dict(goals)
        self.best: dict[str, float] = {}
        self.last: dict[str, float | str] = {}
        #: (step, metric, its best and last before) of the recent values
        self._history: deque[tuple[int, str, float | None, float | str | None]] = deque(
            maxlen=HISTORY
        )

    def add(self, step: object, metrics: Metrics) -> None:
        at = step if type(step) is int else -1
        best, last = self.best, self.last
        for name, goal in self.goals.items():
            value = metrics.get(name)
            if value is None or type(value) not in (float, int, str):
                continue
            self._history.append((at, name, best.get(name), last.get(name)))
            last[name] = value
            if (type(value) is float or type(value) is int) and (
                name not in best or (value < best[name] if goal == "min" else value > best[name])
            ):
                best[name] = value

    def supersede(self, after: int) -> None:
        history = self._history
        while history and history[-1][0] > after:
            _step, name, best, last = history.pop()
            for kept, before in ((self.best, best), (self.last, last)):
                if before is None:
                    kept.pop(name, None)
                else:
                    kept[name] = before  # type: ignore[assignment]

    def result(self) -> dict[str, dict[str, float | str | None]]:
        """summary.json's ``{name: {goal: value}}`` of each defined metric."""
        return {
            name: {goal: self.last.get(name) if goal == "last" else self.best.get(name)}
            for name, goal in self.goals.items()
        }


def _count(value: object, covers: int) -> int:
    """Samples (tokens) a step line stands for: its per-step count ``covers`` times; 0 for what
    is no count (text, a non-finite or overflowing number)."""
    if type(value) is int:
        return value * covers
    if type(value) is float:
        total = value * covers
        if total - total == 0:
            return int(total)
    return 0


def _number(value: object) -> float | None:
    return float(value) if type(value) is float or type(value) is int else None


def build_summary(
    about: RunAbout,
    state: RunState,
    figures: StepFigures,
    lines: int,
    instruments: list[tuple[str, InstrumentFigures]],
    end_ts: float,
    segments: list[Segment],
    epochs: int,
) -> RunSummary:
    """summary.json from the figures the record writer folded line by line (a resumed run's
    from its whole record), so that they equal what a reader recomputes from events.jsonl;
    evaluations, errors and non-finite counts from the run state (restored on resume)."""
    errors_by_type: dict[str, int] = {}
    for (error_type, _severity), count in state.errors.items():
        errors_by_type[error_type] = errors_by_type.get(error_type, 0) + count
    evals: dict[str, EvalFigures] = {
        name: {
            "last": nonfinite_text(last) if last - last != 0 else last,
            "best": state.eval_best.get(name),
            "best_step": state.eval_best_step.get(name),
            "mode": state.goals.get(name),
        }
        for name, last in state.eval_latest.items()
    }
    start_ts = segments[0]["start_ts"] if segments else state.start_ts
    return {
        "run": about["run"],
        "project": about["project"],
        "name": about["name"],
        "rank": about["rank"],
        "world_size": about["world_size"],
        "status": state.status,
        "tags": about["tags"],
        "notes": about["notes"],
        "group": about["group"],
        "start_ts": start_ts,
        "end_ts": end_ts,
        "duration_s": sum(s["duration_s"] or 0.0 for s in segments),
        "segments": segments,
        "steps": figures.steps,
        "superseded": figures.superseded,
        "last_step": state.step if figures.steps else None,
        "epoch": state.epoch if epochs else None,
        "epochs": epochs,
        "samples": figures.samples,
        "tokens": figures.tokens,
        "loss": figures.loss_figures(),
        "metrics": {
            key: nonfinite_text(value) if value - value != 0 else value
            for key, value in state.latest.items()
        },
        "nonfinite": {
            key: {"count": seen.count, "first_step": seen.first_step, "last_step": seen.last_step}
            for key, seen in state.nonfinite.items()
        },
        "eval": evals,
        "throughput": figures.throughput(),
        "step_time": figures.step_times(),
        "errors": {
            "total": sum(errors_by_type.values()),
            "by_type": errors_by_type,
            "first": state.first_error,  # type: ignore[typeddict-item]
        },
        "refused": dict(state.refused),
        "instruments": dict(instruments),
        "record": {"lines": lines, "dropped": state.dropped},
        "export": export_figures(state),
        "config_hash": about["config_hash"],
    }


def instrument_summaries(
    observations: Mapping[tuple[ObservationKind, str], RunningStats],
    counters: Mapping[str, float],
    gauges: Mapping[str, float],
) -> list[tuple[str, InstrumentFigures]]:
    """Every custom instrument by name, summarised once for both the record's ``instrument``
    lines and summary.json: histograms, timers and operations from the writer's observations
    (p50/p95/p99), counters by their total, gauges by their last value."""
    entries: list[tuple[str, InstrumentFigures]] = [
        (name, {"kind": kind, **stats.summary()}) for (kind, name), stats in observations.items()
    ]
    entries += [(name, {"kind": "counter", "total": value}) for name, value in counters.items()]
    entries += [(name, {"kind": "gauge", "last": value}) for name, value in gauges.items()]
    return entries


def export_figures(state: RunState) -> ExportFigures:
    """The run's export failures as summary.json and ``/status`` say them."""
    return {"failures": dict(state.export_failures), "last_error": state.export_error}
