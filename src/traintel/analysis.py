"""What ``traintel logs`` computes from run records: summaries, problems, instruments, comparisons,
the Markdown report and its plots.

Each aggregate is a collector with ``add(record)`` and ``result()``, so one pass over a large record
feeds several of them (:func:`scan`). Results are plain dicts, ready for JSON; presentation belongs
to the caller. matplotlib is imported only when plots are asked for.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from traintel.record.format import END_STATUSES, LEVELS, RawLine
from traintel.record.reader import Records
from traintel.stats import quantile

_RANK: dict[str, int] = {name: i for i, name in enumerate(LEVELS)}
_COMMON = ("ts", "type", "level", "run", "rank")
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class Collector(Protocol):
    """One aggregate over records: fed every record in turn, asked for its result at the end."""

    def add(self, record: RawLine) -> None:
        ...


def scan(records: Iterable[RawLine], *collectors: Collector) -> None:
    """Feed every record to every collector in one pass."""
    adds = [c.add for c in collectors]
    for record in records:
        for add in adds:
            add(record)


def level_at_least(record: RawLine, level: str) -> bool:
    return _RANK.get(str(record.get("level")), 1) >= _RANK[level]


class _Training:
    """Step statistics of one rank; the hot path of a summary, so kept to plain arithmetic."""

    __slots__ = ("steps", "lines", "first_ts", "last_ts", "samples", "tokens", "loss", "best",
                 "nonfinite", "step_s", "timed")

    def __init__(self) -> None:
        self.steps = self.lines = self.nonfinite = self.timed = 0
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self.loss: float | None = None
        self.best: float | None = None
        self.samples = self.tokens = self.step_s = 0.0

    def add(self, r: RawLine) -> None:
        ts: float = r.get("ts") or 0.0
        step_s: float | None = r.get("step_s")
        if self.first_ts is None:
            # the first step's own duration belongs to the training time
            self.first_ts = ts - (step_s or 0.0)
        self.last_ts = ts
        self.lines += 1
        self.steps = r.get("step") or self.lines
        if step_s is not None:
            self.step_s += step_s
            self.timed += 1
        metrics = r.get("metrics")
        if not metrics:
            return
        self.samples += metrics.get("samples") or 0
        self.tokens += metrics.get("tokens") or 0
        loss = metrics.get("loss")
        if loss is None:
            return
        if type(loss) is str or not math.isfinite(loss):
            self.nonfinite += 1
        else:
            self.loss = loss
            if self.best is None or loss < self.best:
                self.best = loss

    def result(self) -> dict[str, Any]:
        elapsed = (self.last_ts - self.first_ts) \
            if self.last_ts is not None and self.first_ts is not None else 0.0

        def rate(n: float) -> float | None:
            return n / elapsed if elapsed > 0 and n else None

        return {
            "steps": self.steps, "samples": self.samples, "tokens": self.tokens,
            "loss": {"final": self.loss, "best": self.best, "nonfinite": self.nonfinite},
            "throughput": {"steps_per_s": rate(self.lines), "samples_per_s": rate(self.samples),
                           "tokens_per_s": rate(self.tokens)},
            "step_time_mean_s": self.step_s / self.timed if self.timed else None,
        }


class Summary:
    """The headline numbers of a run: time range, counts, steps, loss, throughput, status.

    Training numbers come from the lowest rank; counts cover every rank.
    """

    def __init__(self) -> None:
        self.events = 0
        self.by_type: dict[str, int] = {}
        self.by_level: dict[str, int] = {}
        self.errors_by_type: dict[str, int] = {}
        self.start_ts: float | None = None
        self.end_ts: float | None = None
        self.training: dict[int, _Training] = {}
        self.evals: dict[str, dict[str, Any]] = {}
        self.info: dict[str, Any] = {}
        self.config: dict[str, Any] | None = None
        self.epochs: set[object] = set()
        self.ranks: set[int] = set()
        self.statuses: set[str] = set()
        self.run_s: float | None = None

    def add(self, r: RawLine) -> None:
        self.events += 1
        kind = str(r.get("type"))
        self.by_type[kind] = self.by_type.get(kind, 0) + 1
        level = str(r.get("level"))
        self.by_level[level] = self.by_level.get(level, 0) + 1
        ts = r.get("ts")
        if ts is not None:
            if self.start_ts is None or ts < self.start_ts:
                self.start_ts = ts
            if self.end_ts is None or ts > self.end_ts:
                self.end_ts = ts
        if kind == "step":
            rank = r.get("rank", 0)
            training = self.training.get(rank)
            if training is None:
                training = self.training[rank] = _Training()
            training.add(r)
        elif kind == "error":
            name = r.get("error_type") or "other"
            self.errors_by_type[name] = self.errors_by_type.get(name, 0) + 1
        elif kind == "eval":
            for name, value in (r.get("metrics") or {}).items():
                self.evals[name] = {"last": value, "best": (r.get("best") or {}).get(name, value)}
        elif kind == "epoch":
            self.epochs.add(r.get("epoch"))
        elif kind == "config":
            self.config = r.get("config")
        elif kind == "run_start":
            self.ranks.add(r.get("rank", 0))
            self.info.update({k: r.get(k) for k in ("run", "project", "name", "host")})
        elif kind == "run_end":
            self.statuses.add(str(r.get("status")))
            self.run_s = max(self.run_s or 0.0, r.get("duration_s") or 0.0)

    def result(self) -> dict[str, Any]:
        first = min(self.training) if self.training else None
        training = self.training[first].result() if first is not None else _Training().result()
        training["steps"] = max((t.steps for t in self.training.values()), default=0)
        by_level = self.by_level
        return {
            "run": self.info.get("run"), "project": self.info.get("project"),
            "name": self.info.get("name"), "host": self.info.get("host"),
            "ranks": sorted(self.ranks | set(self.training)),
            # the worst rank's; a run without run_end is still going or was killed
            "status": next((s for s in END_STATUSES if s in self.statuses), "unknown"),
            "start_ts": self.start_ts, "end_ts": self.end_ts,
            "duration_s": self.run_s or _span(self.start_ts, self.end_ts),
            "events": self.events,
            "by_type": dict(sorted(self.by_type.items(), key=lambda kv: -kv[1])),
            "by_level": {k: by_level[k] for k in LEVELS if k in by_level},
            "errors": by_level.get("error", 0) + by_level.get("critical", 0),
            "warnings": by_level.get("warning", 0),
            "errors_by_type": self.errors_by_type,
            "epochs": len(self.epochs),
            **training,
            "eval": self.evals,
            "config": self.config,
        }


def _span(start: float | None, end: float | None) -> float | None:
    return end - start if start is not None and end is not None else None


def summarize(records: Records, *others: Collector) -> dict[str, Any]:
    """:class:`Summary` of :class:`traintel.record.reader.Records`, with where it came from and how
    many lines could not be read; ``others`` are collectors fed in the same pass."""
    summary = Summary()
    scan(records, summary, *others)
    return {"path": str(records.path), **summary.result(), "skipped_lines": records.bad}


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
                group = groups[key] = {"type": key[0], "kind": key[1], "level": r.get("level"),
                                       "count": 0, "first_ts": r.get("ts"), "message": describe(r)}
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
        keys = ("rank", "kind", "name", "count", "total", "mean", "p50", "p95", "p99", "min", "max",
                "last")
        ordered = sorted(self.found.items(), key=lambda item: (item[0][0], str(item[0][1])))
        return [{k: r.get(k) for k in keys} for _, r in ordered]


class Series:
    """Per-step values of the lowest rank, for plots: loss, throughput and memory-like metrics."""

    def __init__(self) -> None:
        self._restart(None)

    def _restart(self, rank: int | None) -> None:
        """Ranks interleave in time; a lower one seen later replaces what was kept so far."""
        self.rank = rank
        self.step: list[int] = []
        self.loss: list[float] = []
        self.rate: list[float] = []
        self.rate_unit = "steps/s"
        self.step_s: list[float] = []
        self.memory: dict[str, list[tuple[int, float]]] = {}

    def add(self, r: RawLine) -> None:
        if r.get("type") != "step":
            return
        rank = r.get("rank", 0)
        if self.rank is None or rank < self.rank:
            self._restart(rank)
        elif rank != self.rank:
            return
        metrics, step_s = r.get("metrics") or {}, r.get("step_s")
        if not self.step and metrics.get("samples"):
            self.rate_unit = "samples/s"  # decided by the first step: one unit per plot
        step = r.get("step") or len(self.step) + 1
        self.step.append(step)
        loss = metrics.get("loss")
        self.loss.append(math.nan if loss is None else _NONFINITE.get(loss, loss))
        work = metrics.get("samples") if self.rate_unit == "samples/s" else 1
        self.rate.append(work / step_s if step_s and work else math.nan)
        if step_s is not None:
            self.step_s.append(step_s)
        for name, value in metrics.items():
            if "mem" in name.lower() and isinstance(value, (int, float)):
                self.memory.setdefault(name, []).append((step, value))

    def step_time(self) -> dict[str, float | None]:
        """Mean, percentiles and maximum of the step wall times, seconds."""
        ordered = sorted(self.step_s)
        if not ordered:
            return dict.fromkeys(("mean", "p50", "p95", "p99", "max"))
        return {"mean": sum(ordered) / len(ordered), "p50": quantile(ordered, 50),
                "p95": quantile(ordered, 95), "p99": quantile(ordered, 99), "max": ordered[-1]}


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted.key, scalar)`` pairs of nested dicts."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from flatten(inner, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, value


def grep(records: Iterable[RawLine], pattern: str, events: Iterable[str] = (),
         level: str | None = None, since: float | None = None,
         until: float | None = None) -> Iterator[RawLine]:
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


def iso(ts: float | None) -> str:
    """Local time, to the second."""
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")


def num(value: Any) -> str:
    """A number for humans: four significant digits, integers whole."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or value.is_integer() and abs(value) < 1e15:
        return f"{int(value):,}" if abs(value) >= 10_000 else str(int(value))
    return f"{value:.4g}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m{s:02d}s" if hours else f"{m}m{s:02d}s"


def _pairs(d: dict[str, Any] | None) -> str:
    return " ".join(f"{k}={num(v)}" for k, v in (d or {}).items())


def describe(r: RawLine) -> str:
    """One line saying what a record is about, without its time, level or run."""
    kind = r.get("type")
    if kind == "step":
        return (f"step {r.get('step')} epoch {r.get('epoch')} {_pairs(r.get('metrics'))} "
                f"step_s={num(r.get('step_s'))}")
    if kind == "eval":
        best = [k for k, v in (r.get("is_best") or {}).items() if v]
        return (f"eval step {r.get('step')} {_pairs(r.get('metrics'))}"
                + (f" (best {', '.join(best)})" if best else ""))
    if kind == "epoch":
        return (f"epoch {r.get('epoch')} done: {r.get('steps')} steps in "
                f"{duration(r.get('duration_s'))}")
    if kind == "event":
        return f"{r.get('event')} {_pairs(r.get('fields'))}".rstrip()
    if kind == "milestone":
        return f"{r.get('percent')}% at step {r.get('step')}, eta {duration(r.get('eta_s'))}"
    if kind == "error":
        message = str(r.get("message"))
        if f"{r.get('exc_type')}:" in message:  # already the classified one-line summary
            return message
        where = f" in {r['operation']}" if r.get("operation") else ""
        return f"{r.get('error_type')} ({r.get('severity')}){where}: {r.get('exc_type')}: {message}"
    if kind == "log":
        return f"[{r.get('logger')}] {r.get('message')} {_pairs(r.get('fields'))}".rstrip()
    if kind == "instrument":
        return (f"{r.get('kind')} {r.get('name')} count={num(r.get('count'))} "
                f"mean={num(r.get('mean'))}")
    if kind == "run_start":
        return (f"run {r.get('run')} started: {r.get('project')}/{r.get('name')} "
                f"on {r.get('host')}, world size {r.get('world_size')}")
    if kind == "run_end":
        return (f"run {r.get('status')} after {duration(r.get('duration_s'))}, "
                f"{r.get('steps')} steps")
    if kind == "config":
        return f"config {r.get('config_hash')} seed={r.get('seed')}"
    return " ".join(f"{k}={v}" for k, v in r.items() if k not in _COMMON)


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
        row.update({"steps": s["steps"], "duration_s": s["duration_s"],
                    "steps_per_s": s["throughput"]["steps_per_s"],
                    "samples_per_s": s["throughput"]["samples_per_s"],
                    "loss_final": s["loss"]["final"], "loss_best": s["loss"]["best"]})
        for name in eval_names:
            stats = s["eval"].get(name, {})
            row[f"{name}_last"], row[f"{name}_best"] = stats.get("last"), stats.get("best")
        row.update({"errors": s["errors"], "warnings": s["warnings"]})
        rows.append(row)
    return rows


def report_markdown(summary: dict[str, Any], problems: dict[str, Any],
                    instruments: list[dict[str, Any]], step_time: dict[str, float | None],
                    plots: dict[str, Path] | None = None, base: Path | None = None) -> str:
    """The Markdown report: overview, errors (the first of each kind in full) and performance;
    plot paths are made relative to ``base`` (the report's directory)."""
    s = summary
    title = s["name"] or s["run"] or Path(s["path"]).name
    lines = [f"# Run report: {title}", "", "## Overview", "", "| | |", "|---|---|"]
    overview = [
        ("run", s["run"]), ("project", s["project"]), ("status", s["status"]),
        ("ranks", ", ".join(map(str, s["ranks"])) or "-"), ("host", s["host"]),
        ("start", iso(s["start_ts"])), ("end", iso(s["end_ts"])),
        ("duration", duration(s["duration_s"])), ("steps", num(s["steps"])),
        ("epochs", num(s["epochs"])), ("final loss", num(s["loss"]["final"])),
        ("best loss", num(s["loss"]["best"])), ("non-finite losses", num(s["loss"]["nonfinite"])),
        ("events", num(s["events"])), ("unreadable lines skipped", num(s["skipped_lines"])),
    ]
    lines += [f"| {k} | {'-' if v is None else v} |" for k, v in overview]
    if s["eval"]:
        lines += ["", "### Evaluation", "", "| metric | last | best |", "|---|---|---|"]
        lines += [f"| {k} | {num(v['last'])} | {num(v['best'])} |" for k, v in s["eval"].items()]

    lines += ["", "## Errors and warnings", ""]
    if problems["groups"]:
        lines += ["| level | type | kind | count | first | last | example |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {g['level']} | {g['type']} | {g['kind']} | {g['count']} "
                  f"| {iso(g['first_ts'])} | {iso(g['last_ts'])} | {_cell(g['message'])} |"
                  for g in problems["groups"]]
        shown_kinds = set()
        for r in problems["records"]:
            if r.get("type") != "error" or _problem_kind(r) in shown_kinds:
                continue  # the first error of each kind, in full
            shown_kinds.add(_problem_kind(r))
            lines += ["", f"### {iso(r.get('ts'))} {r.get('error_type')}: {r.get('exc_type')}", "",
                      _cell(str(r.get("message")))]
            lines += [f"- {hint}" for hint in r.get("hints") or []]
            if r.get("traceback"):
                lines += ["", "```", str(r["traceback"]).rstrip(), "```"]
    else:
        lines.append("None.")

    t, st = s["throughput"], step_time
    lines += ["", "## Performance", "", "| | |", "|---|---|",
              f"| steps/s | {num(t['steps_per_s'])} |",
              f"| samples/s | {num(t['samples_per_s'])} |",
              f"| tokens/s | {num(t['tokens_per_s'])} |"]
    lines += [f"| step time {k} (s) | {num(st[k])} |" for k in ("mean", "p50", "p95", "p99", "max")]
    if instruments:
        lines += ["", "### Instruments", "",
                  "| name | kind | count | total | mean | p50 | p95 | p99 | min | max |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        lines += ["| " + " | ".join([str(i["name"]), str(i["kind"])] + [num(i[k]) for k in
                  ("count", "total", "mean", "p50", "p95", "p99", "min", "max")]) + " |"
                  for i in instruments]
    for name, plot in (plots or {}).items():
        shown = plot.relative_to(base) if base and plot.is_relative_to(base) else plot
        lines += ["", f"![{name}]({shown.as_posix()})"]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def figures(series: Series) -> dict[str, Any]:
    """matplotlib figures (Agg canvas, no pyplot state) of loss, throughput and memory per step;
    a figure is left out when the record has nothing for it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def figure(ylabel: str, title: str) -> tuple[Figure, Any]:
        fig = Figure(figsize=(8, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        return fig, ax

    out = {}
    if any(math.isfinite(v) for v in series.loss):
        out["loss"], ax = figure("loss", "Training loss")
        ax.plot(series.step, series.loss, linewidth=1)
    if any(math.isfinite(v) for v in series.rate):
        out["throughput"], ax = figure(series.rate_unit, "Throughput")
        ax.plot(series.step, series.rate, linewidth=1)
    if series.memory:
        out["memory"], ax = figure("memory", "Memory")
        for name, points in series.memory.items():
            ax.plot([p[0] for p in points], [p[1] for p in points], linewidth=1, label=name)
        ax.legend()
    return out


def save_figures(figs: dict[str, Any], directory: Path, prefix: str = "") -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / f"{prefix}{name}.png" for name in figs}
    for name, fig in figs.items():
        fig.savefig(paths[name])
    return paths
