"""What ``traintel logs`` computes from run records: summaries, problems, instruments, series for
plots, searches and comparisons. ``traintel.reports.render`` presents them.

Each aggregate is a collector with ``add(record)`` and ``result()``, so one pass over a large record
feeds several of them (:func:`scan`). Results are plain dicts, ready for JSON. The step figures of
a summary are folded by the same :class:`~traintel.record.summary.StepFigures` that makes
summary.json, so the two agree.
"""

from __future__ import annotations

import datetime as dt
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from traintel.core.state import find_loss
from traintel.record.files import read_json
from traintel.record.format import END_STATUSES, LEVELS, RawLine, RecordStatus
from traintel.record.job import STATUS_ORDER, job_throughput, root_cause
from traintel.record.lock import RecordLock
from traintel.record.reader import Records, rank_directories
from traintel.record.summary import RecordFold, Segment, StepFigures, ended
from traintel.reports.render import describe

_RANK: dict[str, int] = {name: i for i, name in enumerate(LEVELS)}


class Collector(Protocol):
    """One aggregate over records: fed every record in turn, asked for its result at the end."""

    def add(self, record: RawLine) -> None: ...


def scan(records: Iterable[RawLine], *collectors: Collector) -> None:
    """Feed every record to every collector in one pass."""
    adds = [c.add for c in collectors]
    for record in records:
        for add in adds:
            add(record)


def level_at_least(record: RawLine, level: str) -> bool:
    return _RANK.get(str(record.get("level")), 1) >= _RANK[level]


#: a record that has not grown for this long, from a process this host cannot check, is stale
STALE_S = 600


def run_status(
    ended: object,
    directory: Path | None,
    start: RawLine,
    last_ts: float | None,
    now: float | None = None,
) -> RecordStatus:
    """How a run's latest segment stands, in the one vocabulary of every command (``status``,
    ``logs summary``, ``logs errors``, ``report``): as its ``run_end`` says (``finished``,
    ``preempted``, ``interrupted``, ``failed``), else ``running`` while a live process holds the
    record's lock, ``crashed`` once none does (SIGKILL, the OOM killer, a lost node). A record
    without a lock file (older, or a filesystem without locks) is asked of its process when it
    ran on this host, else it is ``stale`` when it has not grown for ``STALE_S``. A record no
    live process holds and without a readable ``run_start`` (an empty ``events.jsonl``, one of
    garbage) is ``empty``: nothing says a run ever started there."""
    held = RecordLock.is_held(directory) if directory is not None else None
    if ended in END_STATUSES and not held:
        return ended
    if not held and start.get("type") != "run_start":
        return "empty"
    if held is not None:
        return "running" if held else "crashed"
    pid, host = start.get("pid"), start.get("host")
    if host == socket.gethostname() and isinstance(pid, int):
        return "running" if _alive(pid, start.get("ts")) else "crashed"
    if last_ts is not None and (time.time() if now is None else now) - last_ts > STALE_S:
        return "stale"
    return "running"


def worst(statuses: Iterable[RecordStatus]) -> RecordStatus:
    found = set(statuses)
    return next((s for s in STATUS_ORDER if s in found), "running")


def _alive(pid: int, started: object) -> bool:
    import psutil  # only here: `traintel logs` starts without it

    try:  # a process started after the run did has the run's pid by reuse
        return (
            psutil.Process(pid).create_time()
            <= (started if isinstance(started, (int, float)) else 0.0) + 1
        )
    except psutil.Error:
        return False


class Summary:
    """The headline numbers of a run: time range, counts, steps, loss, throughput, status.

    Training numbers come from the lowest rank; counts cover every rank.
    """

    def __init__(self, percentiles: bool = False) -> None:
        #: keep step-time percentiles (the report shows them; a summary needs only the mean)
        self.percentiles = percentiles
        self.events = 0
        self.by_type: dict[str, int] = {}
        self.by_level: dict[str, int] = {}
        self.errors_by_type: dict[str, int] = {}
        self.start_ts: float | None = None
        self.end_ts: float | None = None
        #: what each rank's lines say, folded as summary.json is (``RecordFold``)
        self.ranks: dict[int, RecordFold] = {}
        self.info: dict[str, Any] = {}

    def add(self, r: RawLine) -> None:
        self.events += 1
        kind = str(r.get("type"))
        self.by_type[kind] = self.by_type.get(kind, 0) + 1
        level = str(r.get("level"))
        self.by_level[level] = self.by_level.get(level, 0) + 1
        ts = _seconds(r.get("ts"))  # None on a torn or foreign line: no time, no step figures
        if ts is not None:
            if self.start_ts is None or ts < self.start_ts:
                self.start_ts = ts
            if self.end_ts is None or ts > self.end_ts:
                self.end_ts = ts
        rank = _rank(r)
        fold = self.ranks.get(rank)
        if fold is None:
            fold = self.ranks[rank] = RecordFold(percentiles=self.percentiles)
        fold.add(r)
        if kind == "error":
            name = str(r.get("error_type") or "other")
            self.errors_by_type[name] = self.errors_by_type.get(name, 0) + 1
        elif kind == "run_start" and not self.info:
            self.info.update({k: r.get(k) for k in ("run", "project", "name", "host")})

    def fold(self) -> RecordFold:
        """What the lowest rank's lines say (an empty fold when there are none)."""
        return self.ranks[min(self.ranks)] if self.ranks else RecordFold(False)

    def figures(self) -> StepFigures:
        """The step figures of the lowest rank."""
        return self.fold().figures

    def step_time(self) -> dict[str, float | None]:
        """Mean, percentiles and maximum of the lowest rank's step times, in seconds (the
        report's performance table: made with ``percentiles=True``)."""
        figures = self.figures()
        times = figures.step_times()
        longest = figures.step_time.max
        return {
            "mean": times["mean_s"],
            "p50": times["p50_s"],
            "p95": times["p95_s"],
            "p99": times["p99_s"],
            "max": longest if figures.step_time.count else None,
        }

    def statuses(self, directories: Mapping[int, Path] | None = None) -> dict[int, RecordStatus]:
        """Each rank's status (``run_status``). ``directories``: each rank's record directory,
        whose lock says whether a process still writes it."""
        return {
            rank: run_status(
                f.segments[-1]["status"] if f.segments else None,
                (directories or {}).get(rank),
                f.last_start,
                self.end_ts,
            )
            for rank, f in self.ranks.items()
        }

    def status(self, directories: Mapping[int, Path] | None = None) -> RecordStatus:
        """The run's status: its worst rank's."""
        return worst(self.statuses(directories).values())

    def segments(self, rank: int, status: RecordStatus) -> list[Segment]:
        """A rank's segments; its last one ``crashed``, lasting to its last line, when no
        process holds the record and none wrote its end (``ended``: the rule summary.json
        and a resumed run apply to a killed segment)."""
        segments = self.ranks[rank].segments
        if status == "crashed" and segments and segments[-1]["status"] is None:
            return [*segments[:-1], ended(Segment(**segments[-1]))]
        return segments

    def result(self, directories: Mapping[int, Path] | None = None) -> dict[str, Any]:
        fold = self.fold()
        figures = fold.figures
        loss = figures.loss_figures()
        by_level = self.by_level
        statuses = self.statuses(directories)
        segments = {rank: self.segments(rank, status) for rank, status in statuses.items()}
        durations = [_duration(s) for s in segments.values()]
        return {
            "run": self.info.get("run"),
            "project": self.info.get("project"),
            "name": self.info.get("name"),
            "host": self.info.get("host"),
            "tags": fold.tags,
            "group": fold.group,
            "notes": fold.notes,
            "ranks": sorted(self.ranks),
            "status": worst(statuses.values()),
            "start_ts": self.start_ts,
            "end_ts": self.end_ts,
            # the longest rank's: its segments added up (the gaps between them not counted)
            "duration_s": max(
                (d for d in durations if d is not None), default=_span(self.start_ts, self.end_ts)
            ),
            "segments": segments[min(self.ranks)] if self.ranks else [],
            "events": self.events,
            "by_type": dict(sorted(self.by_type.items(), key=lambda kv: -kv[1])),
            "by_level": {k: by_level[k] for k in LEVELS if k in by_level},
            # one set of counts for every command: errors are `error` lines (classified, with
            # hints), as in summary.json; warnings are lines at warning level
            "errors": self.by_type.get("error", 0),
            "warnings": by_level.get("warning", 0),
            "errors_by_type": self.errors_by_type,
            # the rank whose first error came first (record.job.root_cause, as summary.json)
            "root_cause": root_cause({rank: f.first_error for rank, f in self.ranks.items()})
            if len(self.ranks) > 1
            else None,
            "epochs": fold.epochs,
            # as summary.json says it (record.summary.build_summary): null until an epoch ended
            "epoch": fold.epoch if fold.epochs else None,
            "steps": max((f.figures.steps for f in self.ranks.values()), default=0),
            # counted once, then taken back by a resume from an older checkpoint (summary.json's)
            "superseded": figures.superseded,
            "last_step": figures.last_step if figures.steps else None,
            "samples": figures.samples,
            "tokens": figures.tokens,
            "loss": loss,
            "metrics": fold.metrics,
            "nonfinite": fold.nonfinite,
            # the job's: samples and tokens per second summed over the ranks (record.job)
            "throughput": job_throughput(
                {rank: f.figures.throughput() for rank, f in self.ranks.items()}
            ),
            "throughput_by_rank": {
                str(rank): f.figures.throughput() for rank, f in sorted(self.ranks.items())
            },
            "step_time_mean_s": figures.step_times()["mean_s"],
            "eval": fold.evals,
            "config": fold.config,
            "summary": user_summary(
                (directories or {}).get(min(self.ranks)) if self.ranks else None
            ),
        }


def user_summary(directory: Path | None) -> dict[str, Any]:
    """``run.summary`` (the user's own figures and the defined metrics' bests) as summary.json
    keeps them: the record does not hold them, the run writes them there as a segment ends.
    Empty when there is none (a run still running, or killed before its end)."""
    kept = read_json(directory / "summary.json") if directory is not None else None
    user = kept.get("summary") if kept is not None else None
    return user if isinstance(user, dict) else {}


def _span(start: float | None, end: float | None) -> float | None:
    return end - start if start is not None and end is not None else None


def _duration(segments: list[Segment]) -> float | None:
    """A rank's segments added up, or None while one of them has not ended."""
    durations = [s["duration_s"] for s in segments]
    return (
        sum(d for d in durations if d is not None) if durations and None not in durations else None
    )


def _seconds(value: object) -> float | None:
    """A number of seconds from a record, None for anything else."""
    return float(value) if type(value) is float or type(value) is int else None


def _rank(r: RawLine) -> int:
    rank = r.get("rank", 0)
    return rank if type(rank) is int else 0


def summarize(
    records: Records, *others: Collector, summary: Summary | None = None
) -> dict[str, Any]:
    """:class:`Summary` of :class:`traintel.record.reader.Records`, with where it came from and how
    many lines could not be read; ``others`` are collectors fed in the same pass."""
    summary = summary or Summary()
    scan(records, summary, *others)
    return {
        "path": str(records.path),
        **summary.result(rank_directories(records.path)),
        "skipped_lines": records.bad,
        "unreadable": records.problems(),
    }


class Problems:
    """Warnings and errors in time order, grouped by kind: error type, event name, logger or
    record type."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def add(self, r: RawLine) -> None:
        if level_at_least(r, "warning") or r.get("type") == "error":
            self.records.append(r)

    def result(self) -> dict[str, Any]:
        groups: dict[tuple[Any, ...], dict[str, Any]] = {}
        for r in self.records:
            key = (r.get("type"), _problem_kind(r))
            group = groups.get(key)
            if group is None:
                group = groups[key] = {
                    "type": key[0],
                    "kind": key[1],
                    "level": r.get("level"),
                    "count": 0,
                    "first_ts": r.get("ts"),
                    "message": describe(r),
                }
            group["count"] += 1
            group["last_ts"] = r.get("ts")
            if _RANK.get(str(r.get("level")), 0) > _RANK.get(group["level"], 0):
                group["level"] = r.get("level")
        ordered = sorted(groups.values(), key=lambda g: (-_RANK.get(g["level"], 0), -g["count"]))
        return {"groups": ordered, "records": self.records}


def _problem_kind(r: RawLine) -> str:
    return r.get("error_type") or r.get("event") or r.get("logger") or r.get("type") or "?"


class Instruments:
    """The last ``instrument`` line of each user instrument (written at the end of a run)."""

    def __init__(self, kind: str | None = None) -> None:
        self.kind = kind
        self.found: dict[tuple[Any, ...], dict[str, Any]] = {}

    def add(self, r: RawLine) -> None:
        if r.get("type") == "instrument" and (self.kind is None or r.get("kind") == self.kind):
            self.found[(r.get("rank", 0), r.get("name"))] = r

    def result(self) -> list[dict[str, Any]]:
        keys = (
            "rank",
            "kind",
            "name",
            "count",
            "total",
            "mean",
            "p50",
            "p95",
            "p99",
            "min",
            "max",
            "last",
        )
        ordered = sorted(self.found.items(), key=lambda item: (item[0][0], str(item[0][1])))
        return [{k: r.get(k) for k in keys} for _, r in ordered]


Point = tuple[int, float]


class Series:
    """Per-step values of the lowest rank, for plots: the loss as points (so that a loss logged
    every 500 steps draws), the steps where it was not finite, evaluations, throughput and
    memory-like metrics; and the run's name for the titles."""

    def __init__(self) -> None:
        self.title = ""
        #: the loss's name: declared in a run_start, else the first of LOSS_NAMES a step holds
        self.loss_key: str | None = None
        self._restart(None)

    def _restart(self, rank: int | None) -> None:
        """Ranks interleave in time; a lower one seen later replaces what was kept so far."""
        self.rank = rank
        self.loss: list[Point] = []
        self.nonfinite: list[int] = []
        self.rate: list[Point] = []
        self.rate_unit = "steps/s"
        self.memory: dict[str, list[Point]] = {}
        self.evals: dict[str, list[Point]] = {}

    def add(self, r: RawLine) -> None:
        kind = r.get("type")
        if kind == "run_start" and not self.title:
            run, name = r.get("run"), r.get("name")
            self.title = f"{name} ({run})" if name and name != run else str(run or "")
        if kind == "run_start" and isinstance(r.get("loss_key"), str):
            self.loss_key = r["loss_key"]
        if kind not in ("step", "eval"):
            return
        rank, step = r.get("rank", 0), r.get("step")
        if type(rank) is not int or type(step) is not int:
            return
        if self.rank is None or rank < self.rank:
            self._restart(rank)
        elif rank != self.rank:
            return
        metrics = r.get("metrics")
        if type(metrics) is not dict:
            return
        if kind == "eval":
            for name, value in metrics.items():
                if type(value) is float or type(value) is int:
                    self.evals.setdefault(name, []).append((step, value))
            return
        step_s = r.get("step_s")
        if not self.loss and not self.rate and metrics.get("samples"):
            self.rate_unit = "samples/s"  # decided by the first step: one unit per plot
        if self.loss_key is None:
            self.loss_key = find_loss(metrics)
        loss = metrics.get(self.loss_key) if self.loss_key else None
        if type(loss) is float or type(loss) is int:
            self.loss.append((step, loss))
        elif type(loss) is str:  # NaN and infinities are written as text
            self.nonfinite.append(step)
        work = metrics.get("samples") if self.rate_unit == "samples/s" else 1
        if step_s and work and (type(work) is int or type(work) is float):
            self.rate.append((step, work / step_s))
        for name, value in metrics.items():
            if "mem" in name.lower() and isinstance(value, (int, float)):
                self.memory.setdefault(name, []).append((step, value))


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted.key, scalar)`` pairs of nested dicts."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from flatten(inner, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, value


def grep(
    records: Iterable[RawLine],
    pattern: str,
    events: Iterable[str] = (),
    level: str | None = None,
    since: float | None = None,
    until: float | None = None,
) -> Iterator[RawLine]:
    """Records whose ``key=value`` text (all fields but the time, nested keys dotted) matches the
    regex, narrowed by record type or event name, minimum level and time window."""
    regex = re.compile(pattern)
    wanted = set(events)
    for r in records:
        ts = r.get("ts") or 0.0
        if since is not None and ts < since or until is not None and ts > until:
            continue
        if wanted and r.get("type") not in wanted and r.get("event") not in wanted:
            continue
        if level and not level_at_least(r, level):
            continue
        if regex.search(searchable(r)):
            yield r


def searchable(record: RawLine) -> str:
    """What patterns match against: ``key=value`` for every field but the time."""
    return " ".join(f"{k}={v}" for k, v in flatten(record) if k != "ts")


def alert_rule(rule: str) -> Callable[[RawLine], bool]:
    """A level name alerts at that level and above; anything else is a regex over
    :func:`searchable`."""
    if rule.lower() in _RANK:
        return lambda r: level_at_least(r, rule.lower())
    regex = re.compile(rule)
    return lambda r: regex.search(searchable(r)) is not None


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now: float | None = None) -> float:
    """Unix time from ISO 8601 (naive means local time), Unix seconds, or a relative age like
    ``10m``, ``2h``, ``1d`` (before ``now``)."""
    match = _RELATIVE.match(text.strip())
    if match:
        age = float(match.group(1)) * _SECONDS[match.group(2)]
        return (time.time() if now is None else now) - age
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO time, Unix seconds or an age like 10m") from None


def compare(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per run: the config keys whose values differ between runs, then the results."""
    configs = [dict(flatten(s.get("config") or {})) for s in summaries]
    keys = sorted({k for c in configs for k in c})
    differing = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
    eval_names = sorted({name for s in summaries for name in s["eval"]})
    rows = []
    for s, config in zip(summaries, configs):
        row = {"run": s["run"] or Path(s["path"]).name, "status": s["status"]}
        row.update({f"config.{k}": config.get(k) for k in differing})
        row.update(
            {
                "steps": s["steps"],
                "duration_s": s["duration_s"],
                "steps_per_s": s["throughput"]["steps_per_s"],
                "samples_per_s": s["throughput"]["samples_per_s"],
                "loss_final": s["loss"]["final"],
                "loss_best": s["loss"]["best"],
            }
        )
        for name in eval_names:
            stats = s["eval"].get(name, {})
            row[f"{name}_last"], row[f"{name}_best"] = stats.get("last"), stats.get("best")
        row.update({"errors": s["errors"], "warnings": s["warnings"]})
        rows.append(row)
    return rows


def rank_by(
    summaries: list[dict[str, Any]], rows: list[dict[str, Any]], metric: str
) -> list[dict[str, Any]]:
    """``compare``'s rows ranked by eval ``metric``'s last value in its direction (a sweep's
    objective), best first: finished runs get ``rank`` 1..n; pruned, stopped, failed or
    running ones follow, unranked (their value is an intermediate one), best first as well."""

    def value(summary: dict[str, Any]) -> float | None:
        last = summary["eval"].get(metric, {}).get("last")
        return float(last) if isinstance(last, (int, float)) and last == last else None

    modes = {s["eval"][metric].get("mode") for s in summaries if metric in s["eval"]}
    sign = -1.0 if modes == {"max"} else 1.0
    order = sorted(
        range(len(rows)),
        key=lambda i: (
            summaries[i]["status"] != "finished",
            value(summaries[i]) is None,
            sign * (value(summaries[i]) or 0.0),
        ),
    )
    ranked, place = [], 0
    for i in order:
        done = summaries[i]["status"] == "finished" and value(summaries[i]) is not None
        place += done
        ranked.append({"rank": place if done else None, metric: value(summaries[i]), **rows[i]})
    return ranked
