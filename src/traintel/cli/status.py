"""``traintel status`` and ``traintel debug``: how runs are doing, and debug logging on demand.

Local runs are read from disk (summary.json when a run has ended, else the tail of its record),
so this works for runs on shared storage and for runs that were killed; ``--url`` asks a live
run's status endpoint (``traintel.init(http_port=...)``) instead. Statuses and counts are those
of every other command: ``traintel.analysis.run_status``, errors as ``error`` lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import orjson

from traintel import env
from traintel.analysis import run_status, worst
from traintel.cli.output import table
from traintel.doctor import fetch
from traintel.record.files import encode, read_json
from traintel.record.format import RawLine
from traintel.record.reader import (Records, RecordNotFound, count_type, find_run,
                                    first_record, is_run, last_records, rank_directories,
                                    runs_dir)
from traintel.render import duration, iso, num

#: how much of a live run's record is read for its latest step
TAIL_LINES = 1000


def local_status(path: Path) -> dict[str, Any]:
    """One run from its directory, every rank's record read: its status (the worst rank's),
    the lowest rank's step and loss, every rank's errors."""
    ranks = [_rank_status(directory) for directory in rank_directories(path).values()]
    if not ranks:
        raise RecordNotFound(f"no run record in {path}")
    first = ranks[0]
    return {**first, "status": worst(r["status"] for r in ranks),
            "errors": sum(r["errors"] if isinstance(r["errors"], int) else 0 for r in ranks),
            "unreadable": "; ".join(r["unreadable"] for r in ranks if r.get("unreadable")) or None,
            "dir": str(path)}


def _rank_status(directory: Path) -> dict[str, Any]:
    records = Records(directory, waiting=True)
    recent = last_records(records, TAIL_LINES)
    marks = [r for r in recent if r.get("type") in ("run_start", "run_end")]
    start: RawLine = next((r for r in reversed(marks) if r["type"] == "run_start"), {}) or \
        first_record(records) or {}
    ended = marks[-1].get("status") if marks and marks[-1]["type"] == "run_end" else None
    updated = recent[-1].get("ts") if recent else None
    status = run_status(ended, directory, start, updated)
    summary = read_json(directory / "summary.json") if ended else None
    if summary is not None:  # the run ended: what it says of every segment (each field looked at)
        return {"run": summary.get("run"), "project": summary.get("project"),
                "name": summary.get("name"), "status": status, "group": summary.get("group"),
                "tags": _tags(summary.get("tags")), "step": summary.get("last_step"),
                "steps": summary.get("steps"), "epoch": summary.get("epoch"),
                "loss": _inner(summary, "loss", "final"),
                "errors": _inner(summary, "errors", "total"), "updated": summary.get("end_ts")}
    step: RawLine = next((r for r in reversed(recent) if r.get("type") == "step"), {})
    tags = [*_tags((first_record(records) or {}).get("tags")), *_tags(start.get("tags"))]
    return {"run": start.get("run", directory.name), "project": start.get("project"),
            "name": start.get("name"), "status": status, "group": start.get("group"),
            "tags": list(dict.fromkeys(tags)), "step": step.get("step"), "steps": None,
            "epoch": step.get("epoch"), "loss": (step.get("metrics") or {}).get("loss"),
            "errors": count_type(records, "error"), "updated": updated,
            "unreadable": records.problems()}


def _inner(document: dict[str, Any], key: str, inner: str) -> object:
    value = document.get(key)
    return value.get(inner) if isinstance(value, dict) else None


def _tags(value: object) -> list[str]:
    return [t for t in value if isinstance(t, str)] if isinstance(value, list) else []


def _statuses(paths: list[Path]) -> list[dict[str, Any]]:
    """Each run's status for a listing; a run that cannot be read is a one-line note on standard
    error, and the listing goes on."""
    found = []
    for path in paths:
        try:
            found.append(local_status(path))
        except (OSError, RecordNotFound, ValueError, TypeError, AttributeError) as exc:
            click.echo(f"note: {path}: not listed, it cannot be read ({exc})", err=True)
    return found


def _all_runs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and is_run(p)]
    return sorted(runs, key=_mtime)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # gone since it was listed
        return 0.0


def _live(url: str) -> dict[str, Any]:
    try:
        response = fetch(f"{url.rstrip('/')}/status")
        if response.status != 200:
            raise click.ClickException(f"{url}/status answered HTTP {response.status}")
        status: dict[str, Any] = response.json()
        return status
    except OSError as exc:
        raise click.ClickException(f"no run answers at {url} ({exc}); is it running with "
                                   "traintel.init(http_port=...)?") from None


@click.command()
@click.argument("target", metavar="[RUN]", required=False)
@click.option("--all", "all_runs", is_flag=True,
              help="Every run under $TRAINTEL_DIR or ./traintel-runs.")
@click.option("--tag", "tags", multiple=True, metavar="TAG",
              help="Only runs with this tag (repeat: all of them).")
@click.option("--group", metavar="GROUP", help="Only runs of this group.")
@click.option("--status", "statuses", multiple=True, metavar="STATUS",
              help="Only runs in this status (running, finished, failed, preempted, "
                   "interrupted, crashed, stale, empty; repeat for several).")
@click.option("--url", metavar="URL", envvar=env.TRAINTEL_URL.name,
              help="A live run's endpoint, http://127.0.0.1:PORT (env TRAINTEL_URL).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
def status(target: str | None, all_runs: bool, tags: tuple[str, ...], group: str | None,
           statuses: tuple[str, ...], url: str | None, fmt: str) -> None:
    """Status of a run (RUN: a directory, a run id or a run name; default: the latest), of every
    run (--all, filtered by --tag, --group, --status), or of a live run's endpoint (--url)."""
    if url:
        results: Any = _live(url)
    elif all_runs or tags or group or statuses:
        results = [r for r in _statuses(_all_runs(runs_dir()))
                   if set(tags) <= set(r["tags"]) and group in (None, r["group"])
                   and (not statuses or r["status"] in statuses)]
    else:
        try:
            path = find_run(target) if target else _all_runs(runs_dir())[-1]
            results = local_status(path)
        except IndexError:
            raise click.ClickException(f"no runs in {runs_dir()}") from None
        except RecordNotFound as exc:
            raise click.ClickException(str(exc)) from None
    for result in results if isinstance(results, list) else [results]:
        if result.get("unreadable"):  # what could not be read, in one line
            click.echo(f"note: {result.get('dir')}: {result['unreadable']}", err=True)
    if fmt == "json":
        click.echo(encode(results, indent=True).decode())
    elif isinstance(results, list):
        table(["run", "name", "status", "step", "epoch", "loss", "errors", "tags", "updated"],
               [[str(r["run"]), str(r["name"] or "-"), str(r["status"]), num(r["step"]),
                 num(r["epoch"]), num(r["loss"]), num(r["errors"]),
                 ",".join(r["tags"]) or "-", iso(r["updated"])] for r in results])
    else:
        rows = [[key, _cell(key, value)] for key, value in results.items()]
        table(["", ""], rows)


def _cell(key: str, value: Any) -> str:
    if key in ("updated", "started"):
        return iso(value)
    if key == "eta_s":
        return duration(value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={num(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    return num(value)


@click.command()
@click.argument("state", type=click.Choice(["on", "off"]))
@click.option("--url", metavar="URL", envvar=env.TRAINTEL_URL.name, required=True,
              help="The run's endpoint, http://127.0.0.1:PORT (env TRAINTEL_URL).")
def debug(state: str, url: str) -> None:
    """Switch a live run's traintel logging to DEBUG (on) or back (off).

    Only from the run's own machine; `kill -USR1 PID` toggles it too.
    """
    try:
        response = fetch(f"{url.rstrip('/')}/debug", "POST",
                         orjson.dumps({"enabled": state == "on"}),
                         {"Content-Type": "application/json"})
    except OSError as exc:
        raise click.ClickException(f"no run answers at {url} ({exc})") from None
    if response.status != 200:
        raise click.ClickException(f"{url}/debug answered HTTP {response.status}: "
                                   f"{response.body.decode(errors='replace')}")
    click.echo(f"debug logging {'on' if response.json()['enabled'] else 'off'}")
