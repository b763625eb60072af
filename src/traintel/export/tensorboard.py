"""TensorBoard event files from run records (``traintel tensorboard``).

Users compare runs in TensorBoard: every logged step per tag, runs overlaid, the HParams table.
The record holds every step (Prometheus keeps one point per scrape), so the event files are
written from it: one TensorBoard run per traintel run and rank (``<project>/<name>-<id>``, with
``/rank-N`` for a job of several ranks), each step's metrics under their own names at their step
and time, ``step_s`` and ``data_wait_s`` under ``traintel/``, evaluations under ``eval/`` (their
bests under ``best/eval/``), epoch-level values under their names, epochs under ``epoch/``,
events and errors as text, and the run's configuration as hyperparameters of the HParams plugin
(its metrics: the run's scalars, final and best).

Only ``tensorboard``'s protocol buffers and event-file writer are used (no TensorFlow, no torch):
the ``traintel[tensorboard]`` extra.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traintel.core import extras
from traintel.record.format import RawLine
from traintel.record.reader import Records, rank_directories

log = logging.getLogger("traintel.tensorboard")

#: the text of one event or error, at most (TensorBoard shows text as markdown)
TEXT_CHARS = 4000
#: hyperparameters from the configuration, at most (a config of thousands of keys is not a table)
MAX_HPARAMS = 200
_EVENT_FILE = re.compile(r"^events\.out\.tfevents\.")


@dataclass
class Written:
    """What one TensorBoard run received."""

    run: str
    logdir: Path
    steps: int = 0
    scalars: int = 0
    texts: int = 0
    hparams: dict[str, object] = field(default_factory=dict)


def write_runs(runs: Iterable[Path], logdir: Path) -> list[Written]:
    """Event files for each rank of each run directory under ``logdir``; a rank's earlier
    event files there are replaced, so writing again gives the same files, never doubled
    points."""
    extras.require("traintel tensorboard", "tensorboard")
    out = []
    for run_dir in runs:
        ranks = rank_directories(run_dir)
        for rank, directory in sorted(ranks.items()):
            out.append(write_rank(directory, logdir, rank if len(ranks) > 1 else None))
    return out


def write_rank(directory: Path, logdir: Path, rank: int | None) -> Written:
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    lines = list(Records(directory))
    start = next((line for line in lines if line.get("type") == "run_start"), {})
    run_id = str(start.get("run") or directory.name)
    name = (
        f"{_safe(start.get('project') or 'traintel')}/{_safe(start.get('name') or run_id)}"
        f"-{_safe(run_id)}" + (f"/rank-{rank}" if rank is not None else "")
    )
    target = logdir / name
    target.mkdir(parents=True, exist_ok=True)
    for old in target.iterdir():  # a second export replaces the first
        if _EVENT_FILE.match(old.name) and (old.is_file() or old.is_symlink()):
            old.unlink()
    written = Written(name, target)
    convert = Converter(written)
    writer = EventFileWriter(str(target), max_queue_size=1000, flush_secs=3600)
    try:
        for line in lines:
            for event in convert.feed(line):
                writer.add_event(event)
        for event in convert.end():
            writer.add_event(event)
    finally:
        writer.close()
    return written


class Converter:
    """Record lines in, TensorBoard events out, one line at a time: the export of a record and
    the live writer (``traintel.init(tensorboard=True)``) share it. The HParams session starts
    with the run's first configuration; ``end`` adds the bests and how the run ended."""

    def __init__(self, written: Written) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        self.written = written
        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
        self.best: dict[str, tuple[float, int]] = {}
        self.status = "running"
        self.first_ts: float | None = None
        self.last_ts = 0.0
        self.started = False

    def event(self, ts: object, step: object, *values: Any) -> Any:
        return self._event_pb2.Event(
            wall_time=float(ts) if isinstance(ts, (int, float)) else self.last_ts,
            step=step if isinstance(step, int) else 0,
            summary=self._summary_pb2.Summary(value=list(values)),
        )

    def scalar(self, tag: str, value: object) -> Any | None:
        number = _number(value)
        if number is None:
            return None
        self.written.scalars += 1
        return self._summary_pb2.Summary.Value(tag=tag, simple_value=number)

    def scalars(self, ts: object, step: object, values: Mapping[str, object]) -> Iterator[Any]:
        found = [v for tag, value in values.items() if (v := self.scalar(tag, value)) is not None]
        if found:
            yield self.event(ts, step, *found)

    def feed(self, line: RawLine) -> Iterator[Any]:
        kind, ts, step = line.get("type"), line.get("ts"), line.get("step")
        if isinstance(ts, (int, float)):
            self.last_ts = float(ts)
            self.first_ts = self.last_ts if self.first_ts is None else self.first_ts
        metrics: dict[str, Any] = line["metrics"] if isinstance(line.get("metrics"), dict) else {}
        if kind == "step":
            self.written.steps += 1
            yield from self.scalars(
                ts,
                step,
                {
                    **metrics,
                    "traintel/step_s": line.get("step_s"),
                    "traintel/data_wait_s": line.get("data_wait_s"),
                },
            )
        elif kind == "values":
            yield from self.scalars(ts, step, metrics)
        elif kind == "eval":
            yield from self.scalars(ts, step, {f"eval/{k}": v for k, v in metrics.items()})
            best, best_step = line.get("best"), line.get("best_step")
            for key, value in best.items() if isinstance(best, dict) else ():
                at = best_step.get(key) if isinstance(best_step, dict) else None
                if _number(value) is not None and isinstance(at, int):
                    self.best[key] = (float(str(value)), at)
        elif kind == "epoch":
            yield from self.scalars(
                ts,
                step,
                {
                    "epoch/duration_s": line.get("duration_s"),
                    "epoch/steps": line.get("steps"),
                    "epoch/epoch": line.get("epoch"),
                },
            )
        elif kind == "config" and isinstance(line.get("config"), dict) and not self.started:
            self.started = True  # the configuration the run started with
            self.written.hparams = hparams(line["config"])
            yield _session_start(self.written.hparams, self.last_ts, self.written.run)
        elif kind in ("event", "milestone", "error", "run_start", "run_end"):
            tag = "errors" if kind == "error" else "events"
            self.written.texts += 1
            yield self.event(ts, step, _text(tag, _describe(line)))
            if kind == "run_end" and isinstance(line.get("status"), str):
                self.status = line["status"]

    def end(self) -> Iterator[Any]:
        """The bests at their step, under ``best/eval/`` (metrics of the HParams table), and
        the session's end."""
        for key, (value, at) in self.best.items():
            if (v := self.scalar(f"best/eval/{key}", value)) is not None:
                yield self.event(self.last_ts, at, v)
        if not self.started:  # a record without its config line: the table still lists it
            yield _session_start({}, self.first_ts or self.last_ts, self.written.run)
        yield _session_end(self.status, self.last_ts)


def hparams(config: Mapping[str, Any]) -> dict[str, object]:
    """The configuration as hyperparameters: nested keys joined with ``.``, numbers, text and
    booleans as they are, anything else as its JSON-ish text; at most MAX_HPARAMS."""
    out: dict[str, object] = {}

    def walk(prefix: str, value: Any) -> None:
        if len(out) >= MAX_HPARAMS:
            return
        if isinstance(value, Mapping) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, bool) or isinstance(value, str):
            out[prefix] = value
        elif isinstance(value, (int, float)) and math.isfinite(value):
            out[prefix] = float(value)
        elif value is not None and prefix:  # (an empty config is no hyperparameter)
            out[prefix] = str(value)[:200]

    walk("", config)
    return out


def _plugin_event(tag: str, data: Any, ts: float) -> Any:
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.hparams import metadata

    summary_metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name=metadata.PLUGIN_NAME, content=data.SerializeToString()
        )
    )
    value = summary_pb2.Summary.Value(tag=tag, metadata=summary_metadata)
    return event_pb2.Event(wall_time=ts, summary=summary_pb2.Summary(value=[value]))


def _session_start(values: Mapping[str, object], ts: float, group: str) -> Any:
    """The HParams plugin's session start: the hyperparameters (the experiment itself, which
    columns, TensorBoard infers over every run's sessions)."""
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    info = plugin_data_pb2.SessionStartInfo(group_name=group, start_time_secs=ts)
    for key, value in values.items():
        if isinstance(value, bool):
            info.hparams[key].bool_value = value
        elif isinstance(value, float):
            info.hparams[key].number_value = value
        else:
            info.hparams[key].string_value = str(value)
    return _plugin_event(
        metadata.SESSION_START_INFO_TAG,
        plugin_data_pb2.HParamsPluginData(
            session_start_info=info, version=metadata.PLUGIN_DATA_VERSION
        ),
        ts,
    )


def _session_end(status: str, ts: float) -> Any:
    """How the run ended, as the HParams plugin's session status."""
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    name = {
        "finished": "STATUS_SUCCESS",
        "running": "STATUS_RUNNING",
        "failed": "STATUS_FAILURE",
    }.get(status, "STATUS_ABORTED")
    info = plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value(name), end_time_secs=ts)
    return _plugin_event(
        metadata.SESSION_END_INFO_TAG,
        plugin_data_pb2.HParamsPluginData(
            session_end_info=info, version=metadata.PLUGIN_DATA_VERSION
        ),
        ts,
    )


def _text(tag: str, text: str) -> Any:
    from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2

    tensor = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        string_val=[text[:TEXT_CHARS].encode()],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(),
    )
    summary_metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text")
    )
    return summary_pb2.Summary.Value(tag=tag, metadata=summary_metadata, tensor=tensor)


def _describe(line: RawLine) -> str:
    kind = line.get("type")
    if kind == "error":
        hints = "".join(f"\n- hint: {h}" for h in line.get("hints") or [])
        return (
            f"**{line.get('error_type')}/{line.get('severity')}** {line.get('exc_type')}: "
            f"{line.get('message', '')}{hints}"
        )
    if kind == "event":
        fields = line.get("fields") or {}
        extra = ", ".join(f"{k}={v}" for k, v in fields.items()) if isinstance(fields, dict) else ""
        return f"**{line.get('event')}** {extra}".rstrip()
    if kind == "milestone":
        return f"**{line.get('percent')}%** at step {line.get('step')}"
    if kind == "run_start":
        return f"**run started** on {line.get('host')} (segment {line.get('segment')})"
    return f"**run ended**: {line.get('status')} after {line.get('steps')} steps"


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if value in ("nan", "inf", "-inf"):  # non-finite values as the record writes them
        return float(str(value))
    return None


def _safe(text: object) -> str:
    """A path part from a project or run name: no separators, no dot-dot."""
    return re.sub(r"[^\w.=+-]", "_", str(text)).lstrip(".") or "_"


class LiveWriter:
    """Event files as the run goes (``traintel.init(tensorboard=True)``): a daemon thread
    follows the record (``traintel.export.page.RecordTail``, as the live page does) and converts each
    new line into ``<run dir>/tensorboard/``; the training thread does nothing for it. Anything
    that goes wrong is one warning, and the run goes on."""

    #: seconds between looks at the record (the writer flushes it every second)
    INTERVAL_S = 2.0
    #: the longest ``stop`` waits for the last lines
    STOP_S = 10.0

    def __init__(self, directory: Path, project: str, name: str, run_id: str) -> None:
        from traintel.export.page import RecordTail

        self.directory = directory
        self.logdir = directory / "tensorboard"
        self.written = Written(f"{project}/{name}-{run_id}", self.logdir)
        self._tail = RecordTail.open(directory)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traintel-tensorboard", daemon=True)

    @classmethod
    def start(cls, directory: Path, project: str, name: str, run_id: str) -> LiveWriter | None:
        """The writer, running; None (and one warning naming the extra) without TensorBoard."""
        if extras.missing("tensorboard") is not None:
            log.warning(
                "%s; the run goes on without it",
                extras.hint("traintel.init(tensorboard=True)", "tensorboard"),
            )
            return None
        writer = cls(Path(directory), project, name, run_id)
        writer._thread.start()
        return writer

    def stop(self) -> None:
        """After the record's last line: convert what is left, end the session, close."""
        self._stop.set()
        self._thread.join(self.STOP_S)

    def _run(self) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        try:
            self.logdir.mkdir(exist_ok=True)
            writer = EventFileWriter(str(self.logdir), max_queue_size=1000, flush_secs=3600)
            convert = Converter(self.written)
            try:
                while True:
                    stopping = self._stop.wait(self.INTERVAL_S)
                    for line in self._drain():
                        for event in convert.feed(line):
                            writer.add_event(event)
                    if stopping:
                        break
                    writer.flush()
                for event in convert.end():
                    writer.add_event(event)
            finally:
                writer.close()
                self._tail.close()
        except Exception as exc:  # telemetry never ends a run: one warning, then nothing
            log.warning(
                "traintel: TensorBoard event files stopped (%s: %s); the record keeps "
                "everything: `traintel tensorboard %s` writes them later",
                type(exc).__name__,
                exc,
                self.directory,
            )

    def _drain(self) -> Iterator[RawLine]:
        while lines := self._tail.poll():
            yield from lines
