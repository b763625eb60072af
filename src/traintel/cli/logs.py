"""``traintel logs``: read run records from the command line.

A thin layer over :mod:`traintel.record.reader` (reading) and :mod:`traintel.reports.analysis`
(computing), presented by :mod:`traintel.reports.render`: it parses options and prints results, as Rich
tables and colour on a terminal, plain text when piped, JSON with ``--format json``. It must
stay free of OpenTelemetry and torch imports so that it starts quickly on a login node.
"""

from __future__ import annotations

import csv
import io
import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from traintel.cli.output import table
from traintel.core import extras
from traintel.record.format import LEVELS, RawLine
from traintel.record.reader import RecordNotFound, Records, find_run, is_run, last_records, runs_dir
from traintel.record.reader import follow as follow_records
from traintel.reports import analysis, render
from traintel.reports.render import describe, duration, iso, num

_COLOURS = {
    "debug": "bright_black",
    "info": None,
    "warning": "yellow",
    "error": "red",
    "critical": "bright_red",
}
FC = TypeVar("FC", bound=Callable[..., object])
_KINDS = {
    "timers": "timer",
    "operations": "operation",
    "counters": "counter",
    "gauges": "gauge",
    "histograms": "histogram",
}


def _format(*choices: str, default: str = "text") -> Callable[[FC], FC]:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(choices),
        default=default,
        show_default=True,
        help="Output format; json is for scripts.",
    )


_text_or_json = _format("text", "json")


def _dumps(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n"


def _json(value: object) -> None:
    click.echo(_dumps(value), nl=False)


def _emit(text: str, output: Path | None, *also: Path) -> None:
    """To standard output, or to a file with a note of what was written."""
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)
        click.echo(f"wrote {', '.join(map(str, (output, *also)))}", err=True)


def _json_line(record: RawLine) -> None:
    click.echo(orjson.dumps(record).decode())


def _report_skipped(records: Records) -> None:
    """What could not be read, in one line on standard error."""
    problems = records.problems()
    if problems:
        click.echo(f"note: {records.path}: {problems}", err=True)


def _readable(targets: Iterable[str]) -> list[Records]:
    """The records of each target that can be read; one that cannot is a one-line note, the
    others go on, and the command ends with status 1 (:func:`_exit_status`)."""
    found = []
    for target in targets:
        try:
            found.append(Records(target))
        except (RecordNotFound, OSError) as exc:
            click.echo(f"note: {target}: {exc}", err=True)
            click.get_current_context().meta["traintel.unreadable"] = True
    return found


def _note_waiting(records: Records) -> None:
    waiting = [files[-1] for files in records.streams if not files[-1].exists()]
    if waiting:
        click.echo(f"waiting for {', '.join(map(str, waiting))} to appear", err=True)


def _line(record: RawLine, prefix: str = "", job: bool = False) -> None:
    """One record as ``time level [rank] text``, the level coloured on a terminal. ``job``: the
    lines come from several ranks, so rank 0's are named too (a failed job's peer errors are
    told apart from the root cause's); a single process's lines name only a rank above 0."""
    level = record.get("level") or "info"
    named = record.get("rank") if job else record.get("rank") or None
    rank = f" rank {named}" if type(named) is int else ""
    click.echo(
        f"{prefix}{iso(record.get('ts'))} "
        f"{click.style(level.upper().ljust(8), fg=_COLOURS.get(level))}{rank} "
        f"{record.get('type')}: {describe(record)}"
    )


class _Group(click.Group):
    """A run that cannot be found or read is a one-line error, not a traceback; so is a closed
    pipe (``... | head``), quietly. A command that went on past a run it could not read ends
    with status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
            if ctx.meta.get("traintel.unreadable"):
                ctx.exit(1)
            return result
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
            sys.exit(1)
        except OSError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group)
def logs() -> None:
    """Read run records: summaries, errors, search, metrics, comparison, live views, reports.

    RUN is a run directory, a run id (looked up under ./traintel-runs or $TRAINTEL_DIR) or an
    events.jsonl file; rotated files and rank-N directories are read too.
    """


@logs.command()
@click.argument("targets", metavar="RUN|FILE...", nargs=-1, required=True)
@_text_or_json
def summary(targets: tuple[str, ...], fmt: str) -> None:
    """Headline numbers of one or more runs.

    Time range, counts by type and level, errors and warnings, steps, final and best loss,
    throughput and duration. With --format json: one object, or a list for several runs.
    """
    results = []
    for records in _readable(targets):
        results.append(analysis.summarize(records))
        if fmt == "text":
            if len(results) > 1:
                click.echo()
            _print_summary(results[-1])
            _report_skipped(records)
    if fmt == "json" and results:
        _json(results[0] if len(results) == 1 else results)


def _rates(rates: dict[str, float | None]) -> str:
    return ", ".join(f"{num(v)} {k.replace('_per_s', '/s')}" for k, v in rates.items() if v) or "-"


def _print_summary(s: dict[str, Any]) -> None:
    loss, rate = s["loss"], s["throughput"]
    segments = s["segments"]
    rows = [
        ("run", s["run"] or "-"),
        ("name", s["name"] or "-"),
        ("record", s["path"]),
        ("status", s["status"]),
        *(
            (
                (
                    "segments",
                    f"{len(segments)}: "
                    + ", ".join(
                        f"{seg['status'] or 'running'} ({num(seg['steps'])} steps)"
                        for seg in segments
                    ),
                ),
            )
            if len(segments) > 1
            else ()
        ),
        *((("tags", ", ".join(s["tags"])),) if s["tags"] else ()),
        *((("group", s["group"]),) if s["group"] else ()),
        *((("notes", s["notes"]),) if s["notes"] else ()),
        ("ranks", ", ".join(map(str, s["ranks"])) or "-"),
        ("time", f"{iso(s['start_ts'])} .. {iso(s['end_ts'])}"),
        ("duration", duration(s["duration_s"])),
        ("events", f"{num(s['events'])} ({_counts(s['by_type'])})"),
        ("levels", _counts(s["by_level"]) or "-"),
        (
            "errors",
            f"{s['errors']} ({_counts(s['errors_by_type'])})"
            if s["errors_by_type"]
            else str(s["errors"]),
        ),
        *(
            [
                (
                    "root cause",
                    f"rank {s['root_cause']['rank']}: {s['root_cause']['error_type']} "
                    f"({s['root_cause']['exc_type']}) at step {s['root_cause']['step']}, "
                    "the first error of the job",
                )
            ]
            if s.get("root_cause")
            else []
        ),
        ("warnings", str(s["warnings"])),
        (
            "steps",
            f"{num(s['steps'])}"
            + (f" (last step {num(s['last_step'])})" if s["last_step"] is not None else "")
            + (f" in {s['epochs']} epoch(s)" if s["epochs"] else "")
            + (
                f"; {num(s['superseded'])} superseded (resumed from an older checkpoint)"
                if s.get("superseded")
                else ""
            ),
        ),
        ("loss", _loss(loss)),
        (
            "throughput" + (f" (job: {len(s['ranks'])} ranks)" if len(s["ranks"]) > 1 else ""),
            _rates(rate),
        ),
        *(
            (f"  rank {rank}", _rates(rates))
            for rank, rates in s["throughput_by_rank"].items()
            if len(s["ranks"]) > 1
        ),
        (
            "step time",
            f"mean {num(s['step_time_mean_s'])}s"
            if s["step_time_mean_s"] is not None
            else "not measured",
        ),
    ]
    rows += [
        (f"non-finite {k}", f"{v['count']} from step {v['first_step']} to {v['last_step']}")
        for k, v in s["nonfinite"].items()
        if k != "loss"
    ]
    rows += [
        (
            f"eval {k}",
            f"last {num(v['last'])}, best {num(v['best'])}"
            + (
                f" at step {v['best_step']} ({v['mode']})"
                if v["best"] is not None
                else f" (no finite value; {v['mode']})"
                if v.get("mode")
                else " (no direction: pass goals=)"
            ),
        )
        for k, v in s["eval"].items()
    ]
    rows += [(f"summary {k}", _kept(v)) for k, v in (s.get("summary") or {}).items()]
    rows += [("unreadable", s["unreadable"])] if s["unreadable"] else []
    table(["", ""], [list(r) for r in rows], title=f"Run {s['run'] or s['path']}")


def _kept(value: Any) -> str:
    """A ``run.summary`` value: a number as numbers are shown, a defined metric's
    ``{"max": 0.93}`` as ``max 0.93``, anything else as JSON."""
    if isinstance(value, dict) and len(value) == 1:
        ((goal, figure),) = value.items()
        if goal in ("min", "max", "last"):
            return f"{goal} {num(figure)}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return num(value)
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _loss(loss: dict[str, Any]) -> str:
    """The loss as logged, its best, and where it stopped being finite."""
    text = f"final {num(loss['final'])}, best {num(loss['best'])}"
    if loss["nonfinite"]:
        text += (
            f", {loss['nonfinite']} non-finite from step {loss['first_nonfinite_step']}"
            f" (last finite {num(loss['last_finite'])})"
        )
    return text


def _counts(counts: RawLine) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


@logs.command()
@click.argument("target", metavar="RUN")
@click.option("--verbose", "-v", is_flag=True, help="Add tracebacks, context and hints.")
@_text_or_json
def errors(target: str, verbose: bool, fmt: str) -> None:
    """Errors and warnings, grouped by kind, in time order.

    Kind is the error type, event name or logger. --verbose adds tracebacks, context and hints.
    """
    records = Records(target)
    problems = analysis.Problems()
    summary = analysis.summarize(records, problems)
    # the run's status and counts as every other command says them
    counts = {key: summary[key] for key in ("run", "status", "errors", "warnings")}
    result = problems.result()
    if fmt == "json":
        _json({**counts, **result, "skipped_lines": records.bad})
        return
    click.echo(
        f"Run {counts['run'] or records.path}: {counts['status']}, "
        f"{counts['errors']} error(s), {counts['warnings']} warning(s)"
    )
    if not result["records"]:
        click.echo("No errors or warnings.")
    else:
        table(
            ["level", "type", "kind", "count", "first", "last"],
            [
                [
                    g["level"],
                    g["type"],
                    g["kind"],
                    str(g["count"]),
                    iso(g["first_ts"]),
                    iso(g["last_ts"]),
                ]
                for g in result["groups"]
            ],
            title="By kind",
        )
        click.echo()
        for r in result["records"]:
            _line(r, job=len(records.streams) > 1)
            if verbose:
                _details(r)
    _report_skipped(records)


def _details(r: RawLine) -> None:
    for key, value in analysis.flatten(r.get("context") or r.get("fields") or {}):
        click.echo(f"    {key}: {value}")
    for hint in r.get("hints") or []:
        click.echo(f"    hint: {hint}")
    if r.get("traceback"):
        click.echo("    " + str(r["traceback"]).rstrip().replace("\n", "\n    "))


def _time(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    try:
        return None if value is None else analysis.parse_time(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@logs.command()
@click.argument("pattern")
@click.argument("target", metavar="RUN")
@click.option(
    "--event",
    "events",
    multiple=True,
    metavar="E",
    help="Only records of this type (step, error, log...) or event name (checkpoint...).",
)
@click.option("--level", type=click.Choice(LEVELS), help="Only this level and above.")
@click.option("--since", callback=_time, metavar="T", help="ISO time, Unix seconds or age (10m).")
@click.option("--until", callback=_time, metavar="T", help="ISO time, Unix seconds or age (10m).")
@_text_or_json
def grep(
    pattern: str,
    target: str,
    events: tuple[str, ...],
    level: str | None,
    since: float | None,
    until: float | None,
    fmt: str,
) -> None:
    """Search records by regex, type, level and time.

    PATTERN is matched against each record as key=value text (nested keys dotted, e.g.
    metrics.loss=2.31, message=...). Exits with status 1 when nothing matches, like grep.
    """
    try:
        re.compile(pattern)
    except re.error as exc:
        raise click.BadParameter(str(exc), param_hint="PATTERN") from None
    records = Records(target)
    found = 0
    for r in analysis.grep(records, pattern, events, level, since, until):
        found += 1
        _json_line(r) if fmt == "json" else _line(r, job=len(records.streams) > 1)
    _report_skipped(records)
    if not found:
        sys.exit(1)


@logs.command()
@click.argument("target", metavar="RUN")
@click.option(
    "--filter", "kind", type=click.Choice(list(_KINDS)), help="Only one kind of instrument."
)
@_text_or_json
def metrics(target: str, kind: str | None, fmt: str) -> None:
    """Custom instruments: count, total, mean, percentiles.

    Read from the instrument lines a run writes when it ends.
    """
    records = Records(target)
    every = analysis.Instruments()
    analysis.scan(records, every)
    found = [i for i in every.result() if not kind or i["kind"] == _KINDS[kind]]
    if fmt == "json":
        _json(found)
    elif not found and kind and every.found:
        kinds = sorted({str(i["kind"]) for i in every.result()})
        click.echo(
            f"No {kind} recorded; the run has instruments of other kinds: "
            f"{', '.join(kinds)} (--filter {' or '.join(k + 's' for k in kinds)}; "
            f"spans and run.operation are operations)."
        )
    elif not found:
        click.echo("No instruments recorded (they are written when the run ends).")
    else:
        stats = ["count", "total", "mean", "p50", "p95", "p99", "min", "max"]
        ranked = len({i["rank"] for i in found}) > 1
        table(
            (["rank"] if ranked else []) + ["name", "kind"] + stats,
            [
                ([str(i["rank"])] if ranked else [])
                + [str(i["name"]), str(i["kind"])]
                + [num(i[k]) for k in stats]
                for i in found
            ],
        )
    _report_skipped(records)


@logs.command()
@click.argument("targets", metavar="RUN...|DIR", nargs=-1)
@click.option(
    "--group",
    metavar="GROUP",
    help="The runs of this group (a sweep, a study): under DIR, else $TRAINTEL_DIR or "
    "./traintel-runs; ranked by --by.",
)
@click.option(
    "--by",
    "by",
    metavar="METRIC",
    help="Rank by this eval metric's last value, best first, in its direction "
    "(default with --group: objective, as traintel.integrations.optuna records "
    "it). Finished runs are ranked; pruned, stopped and failed ones follow.",
)
@_format("table", "csv", "json", default="table")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write here instead of standard output.",
)
def compare(
    targets: tuple[str, ...], group: str | None, by: str | None, fmt: str, output: Path | None
) -> None:
    """Compare runs side by side.

    One row per run: the config keys that differ between runs, final and best metrics, steps,
    duration, throughput and error counts. A single directory that is not itself a run stands for
    the runs inside it; --group picks a sweep's trials and ranks them.
    """
    if group is not None and not targets:
        targets = (str(runs_dir()),)
    if not targets:
        raise click.UsageError("name the runs to compare, a directory of runs, or --group")
    if len(targets) == 1 and not is_run(path := find_run(targets[0])):
        targets = tuple(str(p) for p in sorted(path.iterdir()) if p.is_dir() and is_run(p))
        if not targets:
            raise click.ClickException(f"no runs in {path}")
    summaries = []
    for records in _readable(targets):
        summary = analysis.summarize(records)
        if group is None or summary.get("group") == group:
            summaries.append(summary)
        _report_skipped(records)
    if not summaries:
        if group is not None:
            raise click.ClickException(f"no runs of group {group!r} in {', '.join(targets)}")
        return
    rows = analysis.compare(summaries)
    if by is not None or group is not None:
        metric = by or "objective"
        if not any(metric in s["eval"] for s in summaries):
            recorded = sorted({name for s in summaries for name in s["eval"]})
            raise click.ClickException(
                f"no run recorded the eval metric {metric!r} (run.log_eval); rank by one they "
                f"did: {', '.join(f'--by {n}' for n in recorded) or '--by NAME'}"
            )
        rows = analysis.rank_by(summaries, rows, metric)
    if fmt == "json":
        text = _dumps(rows)
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    elif output is None:
        table(list(rows[0]), [[num(v) for v in row.values()] for row in rows])
        return
    else:
        text = render.text_table(list(rows[0]), [[num(v) for v in row.values()] for row in rows])
    _emit(text, output)


@logs.command()
@click.argument("target", metavar="RUN")
@click.option(
    "--lines", "-n", default=10, show_default=True, help="How many recent records to show."
)
@click.option(
    "--follow",
    "-f",
    "keep_following",
    is_flag=True,
    help="Keep printing new records as they are written (through rotation).",
)
@_text_or_json
def tail(target: str, lines: int, keep_following: bool, fmt: str) -> None:
    """Last records of a run; --follow for new ones.

    Following survives rotation (events.jsonl renamed to events.jsonl.1 and a new one created).
    """
    records = Records(target, waiting=keep_following)
    _note_waiting(records)
    show = _json_line if fmt == "json" else _line
    try:
        for r in follow_records(records, lines) if keep_following else last_records(records, lines):
            show(r)
    except KeyboardInterrupt:
        pass
    _report_skipped(records)


@logs.command()
@click.argument("target", metavar="RUN")
@click.option(
    "--alert-on",
    "rules",
    multiple=True,
    required=True,
    metavar="LEVEL|REGEX",
    help="A level (alert at it and above) or a regex over the record's key=value text. Repeatable.",
)
@click.option("--exit-on-alert", is_flag=True, help="Exit with status 1 at the first alert.")
@_text_or_json
def monitor(target: str, rules: tuple[str, ...], exit_on_alert: bool, fmt: str) -> None:
    """Alert on matching records while a run goes on.

    Reads the run from its start, then follows it, printing an ALERT line for each record that
    matches a rule; stops when every rank has written run_end.
    """
    try:
        matchers = [(rule, analysis.alert_rule(rule)) for rule in rules]
    except re.error as exc:
        raise click.BadParameter(str(exc), param_hint="--alert-on") from None
    records = Records(target, waiting=True)
    _note_waiting(records)
    ended = 0
    try:
        for r in follow_records(records, last=None):
            rule = next((rule for rule, matches in matchers if matches(r)), None)
            if rule is not None:
                if fmt == "json":
                    _json_line({"alert": rule, "record": r})
                else:
                    _line(r, prefix=click.style("ALERT ", fg="red", bold=True))
                if exit_on_alert:
                    sys.exit(1)
            if r.get("type") == "run_end":
                ended += 1
                if ended == len(records.streams):
                    break
    except KeyboardInterrupt:
        pass
    _report_skipped(records)


@logs.command()
@click.argument("target", metavar="RUN")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the report here (default: standard output).",
)
@click.option(
    "--plot",
    is_flag=True,
    help="Also write PNG plots of loss, throughput and memory next to the report.",
)
@_format("markdown", "json", default="markdown")
def report(target: str, output: Path | None, plot: bool, fmt: str) -> None:
    """Markdown report with errors, performance and plots.

    --plot writes PNGs of loss, throughput and memory next to the report (or in the current
    directory) and links them.
    """
    records = Records(target)
    problems, instruments, series = analysis.Problems(), analysis.Instruments(), analysis.Series()
    summarizer = analysis.Summary(percentiles=True)
    summary = analysis.summarize(records, problems, instruments, series, summary=summarizer)
    step_time = summarizer.step_time()
    plots: dict[str, Path] = {}
    if plot:
        try:
            figures = render.figures(series)
        except ImportError:
            raise click.ClickException(extras.hint("--plot", "plots")) from None
        directory = output.parent if output else Path.cwd()
        prefix = f"{output.stem}-" if output else f"{summary['run'] or 'report'}-"
        plots = render.save_figures(figures, directory, prefix)
    if fmt == "json":
        result = {
            "summary": summary,
            "step_time": step_time,
            "errors": problems.result()["groups"],
            "instruments": instruments.result(),
            "plots": {name: str(path) for name, path in plots.items()},
        }
        text = _dumps(result)
    else:
        text = render.run_report(
            summary,
            problems.result(),
            instruments.result(),
            step_time,
            plots,
            base=output.parent if output else Path.cwd(),
        )
    _emit(text, output, *plots.values())
    _report_skipped(records)
