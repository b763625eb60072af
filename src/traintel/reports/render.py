"""Presenting what traintel computes, in one place: numbers, times and durations for people, one
line per record, tables (terminal text and Markdown), the run report and the diagnostic report
in Markdown, plots, and the progress line. ``traintel.reports.analysis`` and ``traintel.reports.diagnostics``
compute and gather; the command line, the reports and the progress display format here.

Only the standard library at import time (matplotlib when plots are asked for), so that
``traintel logs`` starts quickly.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from traintel.record.format import RawLine

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from traintel.core.state import RunState


class PlotSeries(Protocol):
    """Per-step values to plot (``traintel.reports.analysis.Series`` collects them): (step, value)."""

    title: str
    loss: list[tuple[int, float]]
    nonfinite: list[int]
    rate: list[tuple[int, float]]
    rate_unit: str
    memory: dict[str, list[tuple[int, float]]]
    evals: dict[str, list[tuple[int, float]]]


#: fields every record line has: left out when a line is described by its other fields
_COMMON = ("ts", "type", "level", "run", "rank")


# -- values ------------------------------------------------------------------------------------
def iso(ts: float | None) -> str:
    """Local time, to the second; "-" for none, "?" for what is no time (a hostile or foreign
    summary.json: out of range, text)."""
    if ts is None:
        return "-"
    try:
        return dt.datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def num(value: Any) -> str:
    """A number for people: four significant digits, integers whole (with thousands
    separators from 10,000)."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) and abs(value) >= 10**30:  # str() of a 4,300-digit int raises
        return (
            f"{'-' if value < 0 else ''}2**{value.bit_length() - 1}+"
            if value.bit_length() > 1000
            else f"{float(value):.4g}"
        )
    if isinstance(value, int) or value.is_integer() and abs(value) < 1e15:
        return f"{int(value):,}" if abs(value) >= 10_000 else str(int(value))
    return f"{value:.4g}"


def duration(seconds: float | None, unknown: str = "-") -> str:
    """``5.0s``, ``2m05s``, ``1h02m05s``; ``unknown`` for None."""
    if seconds is None:
        return unknown
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not 0 <= seconds < 1e15
    ):
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m{s:02d}s" if hours else f"{m}m{s:02d}s"


def pairs(values: Mapping[str, Any] | None) -> str:
    """``key=value ...`` with numbers for people."""
    return " ".join(f"{k}={num(v)}" for k, v in (values or {}).items())


def cell(text: str) -> str:
    """Text for one Markdown table cell (pipes escaped, on one line)."""
    return text.replace("|", "\\|").replace("\n", " ")


# -- records -----------------------------------------------------------------------------------
def describe(r: RawLine) -> str:
    """One line saying what a record is about, without its time, level or run."""
    kind = r.get("type")
    if kind == "step":
        return (
            f"step {r.get('step')} epoch {r.get('epoch')} {pairs(r.get('metrics'))} "
            f"step_s={num(r.get('step_s'))}"
        )
    if kind == "values":
        joined = r.get("uncommitted")
        return f"values step {r.get('step')} epoch {r.get('epoch')} {pairs(r.get('metrics'))}" + (
            f" (uncommitted: {', '.join(map(str, joined))})"
            if isinstance(joined, list) and joined
            else ""
        )
    if kind == "eval":
        best = [k for k, v in (r.get("is_best") or {}).items() if v]
        return f"eval step {r.get('step')} {pairs(r.get('metrics'))}" + (
            f" (best {', '.join(best)})" if best else ""
        )
    if kind == "epoch":
        return (
            f"epoch {r.get('epoch')} done: {r.get('steps')} steps in "
            f"{duration(r.get('duration_s'))}"
        )
    if kind == "event":
        return f"{r.get('event')} {pairs(r.get('fields'))}".rstrip()
    if kind == "milestone":
        return f"{r.get('percent')}% at step {r.get('step')}, eta {duration(r.get('eta_s'))}"
    if kind == "error":
        message = str(r.get("message"))
        if f"{r.get('exc_type')}:" in message:  # already the classified one-line summary
            return message
        where = f" in {r['operation']}" if r.get("operation") else ""
        return f"{r.get('error_type')} ({r.get('severity')}){where}: {r.get('exc_type')}: {message}"
    if kind == "log":
        return f"[{r.get('logger')}] {r.get('message')} {pairs(r.get('fields'))}".rstrip()
    if kind == "instrument":
        return (
            f"{r.get('kind')} {r.get('name')} count={num(r.get('count'))} mean={num(r.get('mean'))}"
        )
    if kind == "run_start":
        return (
            f"run {r.get('run')} started: {r.get('project')}/{r.get('name')} "
            f"on {r.get('host')}, world size {r.get('world_size')}"
        )
    if kind == "run_end":
        return (
            f"run {r.get('status')} after {duration(r.get('duration_s'))}, {r.get('steps')} steps"
        )
    if kind == "config":
        return f"config {r.get('config_hash')} seed={r.get('seed')}"
    if kind == "span":
        start, end = r.get("start_ns"), r.get("end_ns")
        took = (end - start) / 1e9 if isinstance(start, int) and isinstance(end, int) else None
        return f"span {r.get('name')} {duration(took)} {r.get('status')} span_id={r.get('span_id')}"
    if kind == "export":
        return (
            f"{r.get('signal')} export {'delivered' if r.get('ok') else 'failed'}: "
            f"{r.get('count')} item(s)"
        )
    return " ".join(f"{k}={v}" for k, v in r.items() if k not in _COMMON)


def line(r: RawLine) -> str:
    """A record as ``time LEVEL type: what``."""
    return f"{iso(r.get('ts'))} {str(r.get('level', '')).upper():8} {r.get('type')}: {describe(r)}"


# -- tables ------------------------------------------------------------------------------------
def text_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned plain text; blank column names: no header. A missing cell (a field the reader
    dropped from a malformed line, ``level: ["error"]``) is blank."""
    rows = [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(c) for c in column) for column in zip(columns, *rows)]
    return "".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n"
        for row in ([list(columns)] if any(columns) else []) + [list(r) for r in rows]
    )


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A Markdown table's lines; blank column names make a header-less key/value table."""
    header = "| " + " | ".join(columns) + " |" if any(columns) else "|" + " |" * len(columns)
    return [header, "|" + "---|" * len(columns)] + [
        "| " + " | ".join(cell("-" if v is None else str(v)) for v in row) + " |" for row in rows
    ]


def _section(title: str, values: Mapping[str, object], level: str = "##") -> list[str]:
    """A heading and a key/value table ("None." when there is nothing)."""
    if not values:
        return ["", f"{level} {title}", "", "None."]
    return ["", f"{level} {title}", "", *markdown_table(["", ""], values.items())]


def _error(error: Mapping[str, Any]) -> list[str]:
    """One error in full: time, type, severity and exception, its message, hints, traceback."""
    lines = [
        "",
        f"### {iso(error.get('ts'))} {error.get('error_type')} "
        f"({error.get('severity')}): {error.get('exc_type')}",
        "",
        cell(str(error.get("message"))),
    ]
    lines += [f"- {hint}" for hint in error.get("hints") or []]
    if error.get("traceback"):
        lines += ["", "```", str(error["traceback"]).rstrip(), "```"]
    return lines


# -- reports -----------------------------------------------------------------------------------
def run_report(
    summary: Mapping[str, Any],
    problems: Mapping[str, Any],
    instruments: Sequence[Mapping[str, Any]],
    step_time: Mapping[str, float | None],
    plots: Mapping[str, Path] | None = None,
    base: Path | None = None,
) -> str:
    """``traintel logs report``: overview, errors (the first of each kind in full) and
    performance in Markdown; plot paths are made relative to ``base`` (the report's directory)."""
    s = summary
    title = s["name"] or s["run"] or Path(s["path"]).name
    lines = [f"# Run report: {title}"]
    loss = s["loss"]
    lines += _section(
        "Overview",
        {
            "run": s["run"],
            "project": s["project"],
            "status": s["status"],
            "segments": ", ".join(
                f"{seg['status'] or 'running'} ({num(seg['steps'])} steps)" for seg in s["segments"]
            )
            or "-",
            "tags": ", ".join(s["tags"]) or "-",
            "group": s["group"] or "-",
            "ranks": ", ".join(map(str, s["ranks"])) or "-",
            "host": s["host"],
            "start": iso(s["start_ts"]),
            "end": iso(s["end_ts"]),
            "duration": duration(s["duration_s"]),
            "steps": num(s["steps"]),
            "last step": num(s["last_step"]),
            "epochs": num(s["epochs"]),
            "final loss": num(loss["final"]),
            "best loss": num(loss["best"]),
            "non-finite losses": num(loss["nonfinite"])
            + (f", from step {loss['first_nonfinite_step']}" if loss["nonfinite"] else ""),
            "errors": num(s["errors"]),
            "warnings": num(s["warnings"]),
            "events": num(s["events"]),
            "unreadable lines skipped": num(s["skipped_lines"]),
        },
    )
    if s["eval"]:
        lines += [
            "",
            "### Evaluation",
            "",
            *markdown_table(
                ["metric", "last", "best", "at step", "direction"],
                [
                    [
                        k,
                        num(v["last"]),
                        num(v["best"]),
                        num(v["best_step"]),
                        v["mode"] or "unknown: pass goals=",
                    ]
                    for k, v in s["eval"].items()
                ],
            ),
        ]
    lines += ["", "## Errors and warnings", ""]
    if problems["groups"]:
        lines += markdown_table(
            ["level", "type", "kind", "count", "first", "last", "example"],
            [
                [
                    g["level"],
                    g["type"],
                    g["kind"],
                    g["count"],
                    iso(g["first_ts"]),
                    iso(g["last_ts"]),
                    g["message"],
                ]
                for g in problems["groups"]
            ],
        )
        shown = set()
        for r in problems["records"]:
            kind = r.get("error_type")
            if r.get("type") == "error" and kind not in shown:  # the first of each kind in full
                shown.add(kind)
                lines += _error(r)
    else:
        lines.append("None.")
    t = s["throughput"]
    lines += _section(
        "Performance",
        {
            "steps/s": num(t["steps_per_s"]),
            "samples/s": num(t["samples_per_s"]),
            "tokens/s": num(t["tokens_per_s"]),
            **{
                f"step time {k} (s)": num(step_time[k])
                if step_time[k] is not None
                else "not measured"
                for k in ("mean", "p50", "p95", "p99", "max")
            },
        },
    )
    if instruments:
        stats = ("count", "total", "mean", "p50", "p95", "p99", "min", "max")
        lines += [
            "",
            "### Instruments",
            "",
            *markdown_table(
                ["name", "kind", *stats],
                [
                    [str(i["name"]), str(i["kind"]), *(num(i[k]) for k in stats)]
                    for i in instruments
                ],
            ),
        ]
    for name, plot in (plots or {}).items():
        shown_path = plot.relative_to(base) if base and plot.is_relative_to(base) else plot
        lines += ["", f"![{name}]({shown_path.as_posix()})"]
    return "\n".join(lines) + "\n"


def diagnostic_report(report: Mapping[str, Any]) -> str:
    """``traintel report --format md``: the diagnostic report for people and issue trackers."""
    lines = [f"# traintel report {report['report_id']}", "", f"Created {iso(report['created'])}."]
    run = report.get("run") or {}
    summary = report.get("summary") or {}
    if "run_dir" in report:
        lines += _section(
            "Run",
            {
                "run": run.get("run") or summary.get("run"),
                "project": run.get("project") or summary.get("project"),
                "name": run.get("name") or summary.get("name"),
                "status": run.get("status")
                or summary.get("status")
                or "no summary (still running, or killed)",
                "host": run.get("host"),
                "steps": run.get("step", summary.get("steps")),
                "directory": report["run_dir"],
            },
        )
    lines += _section("Versions", report["versions"])
    lines += _section("Host", report["host"])
    gpu_list = report["gpus"]
    lines += ["", "## GPUs", ""]
    if isinstance(gpu_list, list) and gpu_list:
        lines += [
            f"- GPU {g.get('index')}: {g.get('name')} ({g.get('uuid')}), "
            + ", ".join(f"{k}={num(v)}" for k, v in g.items() if k not in ("index", "name", "uuid"))
            for g in gpu_list
        ]
    else:
        lines.append("None." if gpu_list == [] else str(gpu_list))
    lines += _section("Memory", {k: v for k, v in report["memory"].items() if k != "cuda"})
    for device in report["memory"].get("cuda", []):
        lines.append(
            f"- CUDA device {device['device']}: "
            + ", ".join(f"{k}={num(v)}" for k, v in device.items() if k != "device")
        )
    lines += _section("Environment", report["environment"])
    if report.get("config") is not None:
        lines += [
            "",
            "## Config",
            "",
            "```json",
            json.dumps(report["config"], indent=2, default=str),
            "```",
        ]
    if "errors" in report:
        lines += ["", f"## Errors ({len(report['errors'])})"]
        if not report["errors"]:
            lines += ["", "None."]
        for error in report["errors"]:
            lines += _error(error)
    if isinstance(report.get("last_events"), list):
        lines += ["", f"## Last {len(report['last_events'])} events", "", "```"]
        lines += [line(r) for r in report["last_events"]]
        lines.append("```")
    return "\n".join(lines) + "\n"


# -- plots -------------------------------------------------------------------------------------
def figures(series: PlotSeries) -> dict[str, Figure]:
    """matplotlib figures (Agg canvas, no pyplot state) of the loss, evaluations, throughput and
    memory per step, titled with the run; a figure is left out when the record has nothing for
    it. Series are drawn point to point, with markers when they are sparse (a loss logged every
    500 steps draws, not a row of gaps); steps whose loss was not finite are marked in red."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def figure(ylabel: str, title: str) -> tuple[Figure, Any]:
        fig = Figure(figsize=(8, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}: {series.title}" if series.title else title)
        ax.grid(alpha=0.3)
        return fig, ax

    def draw(ax: Any, points: Sequence[tuple[int, float]], label: str, **style: Any) -> None:
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            linewidth=1,
            label=label,
            marker="o" if len(points) <= 200 else None,
            markersize=3,
            **style,
        )

    out = {}
    if series.loss or series.nonfinite:
        out["loss"], ax = figure("loss", "Training loss")
        if series.loss:
            draw(ax, series.loss, "loss")
        for index, step in enumerate(series.nonfinite):
            ax.axvline(
                step,
                color="red",
                alpha=0.3,
                linewidth=1,
                label=f"non-finite loss ({len(series.nonfinite)})" if index == 0 else None,
            )
        ax.legend()
    if series.evals:
        out["eval"], ax = figure("value", "Evaluation")
        for name, points in series.evals.items():
            draw(ax, points, name, linestyle="--")
        ax.legend()
    if series.rate:
        out["throughput"], ax = figure(series.rate_unit, "Throughput")
        draw(ax, series.rate, series.rate_unit)
    if series.memory:
        out["memory"], ax = figure("memory", "Memory")
        for name, points in series.memory.items():
            draw(ax, points, name)
        ax.legend()
    return out


def save_figures(figs: Mapping[str, Figure], directory: Path, prefix: str = "") -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / f"{prefix}{name}.png" for name in figs}
    for name, fig in figs.items():
        fig.savefig(paths[name])
    return paths


# -- the progress line -------------------------------------------------------------------------
def epoch_text(state: RunState, total_epochs: int | None) -> str:
    """The epoch as the loop numbers it (the record's number), and which of how many it is:
    ``epoch 0 (1/10)`` for ``run.epochs()``, ``epoch 1 (1/3)`` for a loop counting from 1."""
    if total_epochs:
        return f"epoch {state.epoch} ({state.epochs_ended + 1}/{total_epochs})"
    return f"epoch {state.epoch}"


def progress_text(state: RunState, total_epochs: int | None) -> str:
    """One line of a run's progress: epoch, step, percent, rate, loss, ETA."""
    steps = f"/{state.total_steps}" if state.total_steps else ""
    progress = state.progress()
    percent = f" ({progress * 100:.1f}%)" if progress is not None else ""
    rate = state.rates.get("steps_per_second")
    parts = [epoch_text(state, total_epochs), f"step {state.step}{steps}{percent}"]
    if rate:
        parts.append(f"{rate:.1f} steps/s")
    loss = state.latest_loss()
    if loss is not None:
        parts.append(f"loss {num(loss)}")
    if state.total_steps:
        parts.append(f"eta {duration(state.eta_seconds(), unknown='?')}")
    return " | ".join(parts)
