"""What a sync sends of one record, in batches: the second pass over its lines.

Segment by segment (each process's part of the record), lines are replayed into the state the
live export read (``replay``), and at each of the segment's metric times (``timeline``) the
live export code collects it into points; lines the live run sent as logs, and spans, become
OTLP items (``payload``). What the record says the live export delivered is left out (unless
``resend``), and so is what the cursor says a previous sync delivered, and what is older than
the stack accepts. Nothing is sent here: batches are yielded with the cursor position that
holds once the collector acknowledges them, so the same walk serves ``--dry-run``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData

from traintel.core.redact import Redactor
from traintel.export.otlp import RunMetrics, resource_for, with_added
from traintel.record.format import RawLine, Signal
from traintel.record.summary import RecordFold
from traintel.run.identity import RunIdentity
from traintel.run.resume import Cumulative
from traintel.sync import payload
from traintel.sync.cursor import Position
from traintel.sync.replay import NEARLY, BadLine, Replay
from traintel.sync.source import LOGGED_TYPES, Record, Segment, plausible
from traintel.sync.timeline import metric_times

#: items per request: log records, spans, metric points (a 15 s interval has ~50 points)
BATCH = {"logs": 512, "traces": 512, "metrics": 4096}
#: seconds a stack's age limits are kept inside of, for the time a sync itself takes
AGE_MARGIN = 600.0
SIGNALS: tuple[Signal, ...] = ("logs", "traces", "metrics")
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


@dataclass
class Options:
    #: also what the live export delivered (``--all``)
    resend: bool = False
    #: seconds: what is older is not sent (Prometheus's out-of-order window, Loki's
    #: reject_old_samples_max_age); None: no limit
    max_age: float | None = 7 * 86400.0
    batch: dict[str, int] = field(default_factory=lambda: dict(BATCH))


@dataclass
class Tally:
    """What a record's sync sends and leaves out, per signal."""

    sent: dict[str, int] = field(default_factory=lambda: {"metrics": 0, "logs": 0, "traces": 0})
    #: delivered by the live export, or by an earlier sync (the cursor)
    live: dict[str, int] = field(default_factory=lambda: {"metrics": 0, "logs": 0, "traces": 0})
    before: dict[str, int] = field(default_factory=lambda: {"metrics": 0, "logs": 0, "traces": 0})
    too_old: dict[str, int] = field(default_factory=lambda: {"metrics": 0, "logs": 0, "traces": 0})
    #: lines skipped: unreadable or with fields of the wrong types
    bad: int = 0


@dataclass
class Batch:
    """Items for one request, and the position that holds once they are acknowledged."""

    signal: Signal
    items: list[Any]
    #: logs, spans: the byte offset past the last line in it; metrics: the last point's time
    #: (Unix ms) in segment ``segment``
    position: int
    segment: str = ""
    #: the byte offset the walk has reached (progress)
    read: int = 0

    @property
    def count(self) -> int:
        if self.signal == "metrics":
            return sum(payload.points(data) for data in self.items)
        return len(self.items)

    def acknowledged(self, position: Position) -> None:
        if self.signal == "metrics":
            position.metrics[self.segment] = max(
                position.metrics.get(self.segment, 0), self.position
            )
        elif self.signal == "logs":
            position.logs = max(position.logs, self.position)
        else:
            position.traces = max(position.traces, self.position)

    def request(self) -> Any:
        return payload.merged(self.items) if self.signal == "metrics" else self.items


def batches(
    record: Record, position: Position, options: Options, tally: Tally, redactor: Redactor
) -> Iterator[Batch]:
    """The record's batches, segment by segment, in record order per signal."""
    cutoff = -math.inf if options.max_age is None else time.time() - options.max_age + AGE_MARGIN
    ends = [s.offset for s in record.segments[1:]] + [None]
    #: the record's lines so far: a resumed process (a later segment) starts from them
    fold = RecordFold(percentiles=False)
    #: the cumulative series the live process carried on from the record (``resume``)
    cumulative = Cumulative()
    for index, (segment, end) in enumerate(zip(record.segments, ends)):
        try:
            walk = SegmentWalk(
                record,
                segment,
                position,
                options,
                tally,
                redactor,
                cutoff,
                fold,
                resumed=index > 0,
                cumulative=cumulative,
            )
        except BadLine:  # a run_start without an identity (counted by the scan)
            for begin, _stop, line in record.lines(segment.offset):
                if end is not None and begin >= end:
                    break
                if line is not None:
                    fold.add(line)
                    cumulative.add(line)
            continue
        try:
            yield from walk.batches(end)
        finally:
            walk.close()


class SegmentWalk:
    """One segment's lines replayed, its points collected, its items gathered in batches."""

    def __init__(
        self,
        record: Record,
        segment: Segment,
        position: Position,
        options: Options,
        tally: Tally,
        redactor: Redactor,
        cutoff: float,
        fold: RecordFold,
        resumed: bool,
        cumulative: Cumulative | None = None,
    ) -> None:
        self.record, self.segment, self.position = record, segment, position
        self.options, self.tally, self.redactor, self.cutoff = options, tally, redactor, cutoff
        start = segment.start
        self.replay = Replay(start, fold if resumed else None, cumulative if resumed else None)
        self.cumulative = cumulative
        #: the whole record so far (every segment's lines): the next segment starts from it
        self.fold = fold
        #: counters left out where live samples are (``replay.NEARLY``)
        self.leave_out = NEARLY if segment.mode not in ("offline", "disabled") else frozenset()
        labels, run_info = identity_of(start, record.directory)
        self.resource = payload.resource(start, redactor) or resource_for(
            labels, run_info["run_name"], run_info["hostname"]
        )
        self.scope = payload.scope(start)
        self.reader = InMemoryMetricReader()
        self.metrics = RunMetrics(
            self.replay.state,
            labels,
            run_info,
            self.replay.histograms,
            self.resource,
            self.reader,
            self.scope.version or "",
        )
        self.key = str(segment.offset)
        self.times = metric_times(
            segment.mode,
            segment.interval,
            segment.start_ts,
            segment.last_ts,
            segment.exports,
            options.resend,
        )
        self.synced_ms = position.metrics.get(self.key, 0)
        self.start_ns = int(self.replay.state.start_ts * 1e9)
        self.pending: dict[Signal, list[Any]] = {"metrics": [], "logs": [], "traces": []}
        #: items pending per signal (metric points, not collections)
        self.size: dict[Signal, int] = {"metrics": 0, "logs": 0, "traces": 0}
        self.last: dict[Signal, int] = {"metrics": 0, "logs": 0, "traces": 0}
        self.live_logs = segment.delivered_logs.copy()
        self.threshold = segment.log_level
        self.read = segment.offset

    def close(self) -> None:
        self.metrics.provider.shutdown()

    def batches(self, end: int | None) -> Iterator[Batch]:
        for begin, stop, line in self.record.lines(self.segment.offset):
            if end is not None and begin >= end:
                break
            self.read = stop
            if line is None or line.get("type") == "export":
                continue  # unreadable lines are counted by the scan
            self.fold.add(line)
            if self.cumulative is not None:
                self.cumulative.add(line)
            ts = line.get("ts")
            if not plausible(ts, self.segment.start_ts):
                continue  # counted by the scan
            while self.times and self.times[0] < ts * 1000:
                self._point(self.times.pop(0))
            try:
                self._line(line, stop, ts)
            except (BadLine, KeyError, TypeError, ValueError, OverflowError, AttributeError):
                self.tally.bad += 1
            for signal in SIGNALS:
                if self._full(signal):
                    yield self._take(signal)
        for ms in self.times:
            self._point(ms)
        for signal in SIGNALS:
            if self.pending[signal]:
                yield self._take(signal)

    def _line(self, line: RawLine, stop: int, ts: float) -> None:
        self.replay.apply(line)
        kind = line.get("type")
        if kind == "event" and line.get("event") == "debug_mode":
            fields = line.get("fields")
            enabled = isinstance(fields, dict) and fields.get("enabled") is True
            self.threshold = _LEVELS["debug"] if enabled else self.segment.log_level
        if kind in LOGGED_TYPES and (kind == "log" or _level(line) >= self.threshold):
            self._log(line, stop, ts)
        elif kind == "span":
            self._span(line, stop)

    def _point(self, ms: int) -> None:
        """The state now, as the live export collects it (the window is taken every time, so
        each point's min/max covers the same lines on every sync)."""
        data = self.reader.get_metrics_data() or MetricsData(resource_metrics=[])
        data = with_added(data, self.metrics.added(ms * 1_000_000))
        if ms <= self.synced_ms:
            self.tally.before["metrics"] += 1
        elif ms / 1000 < self.cutoff:
            self.tally.too_old["metrics"] += 1
        else:
            data = payload.retimed(data, ms * 1_000_000, self.start_ns, self.leave_out)
            self.pending["metrics"].append(data)
            self.size["metrics"] += payload.points(data)
            self.last["metrics"] = ms

    def _log(self, line: RawLine, stop: int, ts: float) -> None:
        item = payload.log(line, self.resource, self.scope, self.redactor)
        stamp = item.log_record.timestamp or 0
        if not self.options.resend and self.live_logs.get(stamp, 0) > 0:
            self.live_logs[stamp] -= 1
            self.tally.live["logs"] += 1
        elif stop <= self.position.logs:
            self.tally.before["logs"] += 1
        elif ts < self.cutoff:
            self.tally.too_old["logs"] += 1
        else:
            self.pending["logs"].append(item)
            self.size["logs"] += 1
            self.last["logs"] = stop

    def _span(self, line: RawLine, stop: int) -> None:
        item = payload.span(line, self.resource, self.scope, self.redactor)
        if not self.options.resend and line.get("span_id") in self.segment.delivered_spans:
            self.tally.live["traces"] += 1
        elif stop <= self.position.traces:
            self.tally.before["traces"] += 1
        else:
            self.pending["traces"].append(item)
            self.size["traces"] += 1
            self.last["traces"] = stop

    def _full(self, signal: Signal) -> bool:
        return self.size[signal] >= self.options.batch[signal]

    def _take(self, signal: Signal) -> Batch:
        items, self.pending[signal], self.size[signal] = self.pending[signal], [], 0
        return Batch(signal, items, self.last[signal], self.key, self.read)


def identity_of(start: RawLine, directory: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The labels and run info of a segment's series, as the live run's identity gave them."""
    run, rank, project = start.get("run"), start.get("rank"), start.get("project")
    if (
        not isinstance(run, str)
        or not isinstance(project, str)
        or isinstance(rank, bool)
        or not isinstance(rank, int)
    ):
        raise BadLine("run_start identity")
    name, host, world = start.get("name"), start.get("host"), start.get("world_size")
    tags, group = start.get("tags"), start.get("group")
    identity = RunIdentity(
        id=run,
        project=project,
        name=name if isinstance(name, str) else run,
        rank=rank,
        local_rank=None,
        world_size=world if isinstance(world, int) else 1,
        host=host if isinstance(host, str) else "",
        dir=directory,
        tags=tuple(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else (),
        group=group if isinstance(group, str) else None,
    )
    return identity.labels, identity.info


def _level(line: RawLine) -> int:
    return _LEVELS.get(str(line.get("level", "info")), _LEVELS["info"])
