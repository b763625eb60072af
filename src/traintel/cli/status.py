"""``traintel status`` and ``traintel debug``: how runs are doing, and debug logging on demand.

Local runs are read from disk (summary.json when a run has ended, else the tail of its record),
so this works for runs on shared storage and for runs that were killed; ``--url`` asks a live
run's status endpoint (``traintel.init(http_port=...)``) instead. Statuses and counts are those
of every other command: ``traintel.reports.analysis.run_status``, errors as ``error`` lines.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
import orjson

from traintel.cli.output import table
from traintel.core import env
from traintel.record.files import encode, read_json
from traintel.record.format import RawLine
from traintel.record.job import STATUS_ORDER
from traintel.record.reader import (
    RecordNotFound,
    Records,
    count_type,
    find_run,
    first_record,
    is_run,
    last_records,
    rank_directories,
    runs_dir,
)
from traintel.reports.analysis import run_status, worst
from traintel.reports.doctor import fetch
from traintel.reports.render import duration, iso, num

#: how much of a live run's record is read for its latest step
TAIL_LINES = 1000


def local_status(path: Path) -> dict[str, Any]:
    """One run from its directory, every rank's record read: its status (the worst rank's),
    the lowest rank's step and loss, every rank's errors."""
    ranks = [_rank_status(directory) for directory in rank_directories(path).values()]
    if not ranks:
        raise RecordNotFound(f"no run record in {path}")
    first = ranks[0]
    return {
        **first,
        "status": worst(r["status"] for r in ranks),
        "errors": sum(r["errors"] if isinstance(r["errors"], int) else 0 for r in ranks),
        "unreadable": "; ".join(r["unreadable"] for r in ranks if r.get("unreadable")) or None,
        "dir": str(path),
    }


def _rank_status(directory: Path) -> dict[str, Any]:
    records = Records(directory, waiting=True)
    recent = last_records(records, TAIL_LINES)
    marks = [r for r in recent if r.get("type") in ("run_start", "run_end")]
    start: RawLine = (
        next((r for r in reversed(marks) if r["type"] == "run_start"), {})
        or first_record(records)
        or {}
    )
    ended = marks[-1].get("status") if marks and marks[-1]["type"] == "run_end" else None
    updated = recent[-1].get("ts") if recent else None
    status = run_status(ended, directory, start, updated)
    summary = read_json(directory / "summary.json") if ended else None
    if summary is not None:  # the run ended: what it says of every segment (each field looked at)
        return {
            "run": summary.get("run"),
            "project": summary.get("project"),
            "name": summary.get("name"),
            "status": status,
            "group": summary.get("group"),
            "tags": _tags(summary.get("tags")),
            "step": summary.get("last_step"),
            "steps": summary.get("steps"),
            "epoch": summary.get("epoch"),
            "loss": _inner(summary, "loss", "final"),
            "errors": _inner(summary, "errors", "total"),
            "updated": summary.get("end_ts"),
        }
    step: RawLine = next((r for r in reversed(recent) if r.get("type") == "step"), {})
    page = _page(directory) if status == "running" else None
    tags = [*_tags((first_record(records) or {}).get("tags")), *_tags(start.get("tags"))]
    return {
        "run": start.get("run", directory.name),
        "project": start.get("project"),
        "name": start.get("name"),
        "status": status,
        "group": start.get("group"),
        "tags": list(dict.fromkeys(tags)),
        "step": step.get("step"),
        "steps": None,
        "epoch": step.get("epoch"),
        "loss": _loss_of(step.get("metrics")),
        "errors": count_type(records, "error"),
        "updated": updated,
        "unreadable": records.problems(),
        **({"page": page} if page else {}),
    }


def _page(directory: Path) -> str | None:
    """The live page of a running run (``traintel.init(http_port=...)``), as its endpoint wrote
    it into the run's directory."""
    from traintel.export.page import PAGE_FILE

    found = read_json(directory / PAGE_FILE)
    url = found.get("url") if found else None
    return url if isinstance(url, str) and url.startswith(("http://", "https://")) else None


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
        raise click.ClickException(
            f"no run answers at {url} ({exc}); is it running with traintel.init(http_port=...)?"
        ) from None


@click.command()
@click.argument("target", metavar="[RUN]", required=False)
@click.option(
    "--all", "all_runs", is_flag=True, help="Every run under $TRAINTEL_DIR or ./traintel-runs."
)
@click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="TAG",
    help="Only runs with this tag (repeat: all of them).",
)
@click.option("--group", metavar="GROUP", help="Only runs of this group.")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    metavar="STATUS",
    help="Only runs in this status (running, finished, failed, preempted, "
    "interrupted, pruned, stopped, crashed, stale, empty; repeat for several).",
)
@click.option(
    "--url",
    metavar="URL",
    envvar=env.TRAINTEL_URL.name,
    help="A live run's endpoint, http://127.0.0.1:PORT (env TRAINTEL_URL).",
)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.option(
    "--alerts/--no-alerts",
    "show_alerts",
    default=True,
    show_default=True,
    help="Also the pending and firing alerts, from Prometheus and Alertmanager "
    "(TRAINTEL_PROMETHEUS_URL / TRAINTEL_ALERTMANAGER_URL, else the running "
    "native stack's, else compose's); the table only.",
)
@click.option(
    "--open",
    "open_page",
    is_flag=True,
    help="Print the run's live page address (a run with http_port) and open it in "
    "a browser when there is one.",
)
def status(
    target: str | None,
    all_runs: bool,
    tags: tuple[str, ...],
    group: str | None,
    statuses: tuple[str, ...],
    url: str | None,
    fmt: str,
    show_alerts: bool,
    open_page: bool,
) -> None:
    """Status of a run (RUN: a directory, a run id or a run name; default: the latest), of every
    run (--all, filtered by --tag, --group, --status), or of a live run's endpoint (--url);
    then what is alerting."""
    if url:
        results: Any = {**_live(url), "page": url.rstrip("/") + "/"}
    elif all_runs or tags or group or statuses:
        results = [
            r
            for r in _statuses(_all_runs(runs_dir()))
            if set(tags) <= set(r["tags"])
            and group in (None, r["group"])
            and (not statuses or r["status"] in statuses)
        ]
    else:
        try:
            path = find_run(target) if target else _all_runs(runs_dir())[-1]
            results = local_status(path)
        except IndexError:
            raise click.ClickException(f"no runs in {runs_dir()}") from None
        except RecordNotFound as exc:
            raise click.ClickException(str(exc)) from None
    if open_page:
        _open(results)
        return
    for result in results if isinstance(results, list) else [results]:
        if result.get("unreadable"):  # what could not be read, in one line
            click.echo(f"note: {result.get('dir')}: {result['unreadable']}", err=True)
    if fmt == "json":
        click.echo(encode(results, indent=True).decode())
    elif isinstance(results, list):
        table(
            ["run", "name", "status", "step", "epoch", "loss", "errors", "tags", "updated"],
            [
                [
                    str(r["run"]),
                    str(r["name"] or "-"),
                    str(r["status"]),
                    num(r["step"]),
                    num(r["epoch"]),
                    num(r["loss"]),
                    num(r["errors"]),
                    ",".join(r["tags"]) or "-",
                    iso(r["updated"]),
                ]
                for r in results
            ],
        )
        if len(results) > 1:  # a sweep's pruned trials counted apart from its failures
            click.echo(tally(r["status"] for r in results))
    else:
        rows = [[key, _cell(key, value)] for key, value in results.items()]
        table(["", ""], rows)
    if show_alerts and fmt == "table":
        _alerts()


def _alerts() -> None:
    """The stack's pending and firing alerts; nothing when no Prometheus or Alertmanager
    answers (a run without a stack is normal)."""
    from traintel.core import discovery
    from traintel.stack import alerts

    found = alerts.active(
        discovery.endpoint("prometheus", env.TRAINTEL_PROMETHEUS_URL.get()),
        discovery.endpoint("alertmanager", env.TRAINTEL_ALERTMANAGER_URL.get()),
        timeout=2.0,
    )
    if len(found.problems) == 2 and not found.alerts:
        return
    click.echo("alerts:")
    for line in alerts.lines(found):
        click.echo(f"  {line}")


def _open(results: Any) -> None:
    """The live page's address on standard output; a browser opens it when one is at hand (a
    terminal's user, not a script or a login node without a display)."""
    import sys
    import webbrowser

    pages = [
        r["page"] for r in (results if isinstance(results, list) else [results]) if r.get("page")
    ]
    if not pages:
        raise click.ClickException(
            "no live page: the run is not running, or was started "
            "without traintel.init(http_port=...)"
        )
    for page in pages:
        click.echo(page)
        if sys.stdout.isatty():
            webbrowser.open(page)


def tally(statuses: Iterable[str]) -> str:
    """``30 runs: 1 failed, 12 pruned, 17 finished`` (in the readers' order, worst first)."""
    counts = Counter(statuses)
    order = [s for s in STATUS_ORDER if s in counts] + sorted(set(counts) - set(STATUS_ORDER))
    total = sum(counts.values())
    return f"{total} runs: " + ", ".join(f"{counts[s]} {s}" for s in order)


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
@click.option(
    "--url",
    metavar="URL",
    envvar=env.TRAINTEL_URL.name,
    required=True,
    help="The run's endpoint, http://127.0.0.1:PORT (env TRAINTEL_URL).",
)
def debug(state: str, url: str) -> None:
    """Switch a live run's traintel logging to DEBUG (on) or back (off).

    Only from the run's own machine; `kill -USR1 PID` toggles it too.
    """
    try:
        response = fetch(
            f"{url.rstrip('/')}/debug",
            "POST",
            orjson.dumps({"enabled": state == "on"}),
            {"Content-Type": "application/json"},
        )
    except OSError as exc:
        raise click.ClickException(f"no run answers at {url} ({exc})") from None
    if response.status != 200:
        raise click.ClickException(
            f"{url}/debug answered HTTP {response.status}: {response.body.decode(errors='replace')}"
        )
    click.echo(f"debug logging {'on' if response.json()['enabled'] else 'off'}")


def _loss_of(metrics: object) -> object:
    """The loss of a step line by its name (``traintel.core.state.LOSS_NAMES``)."""
    from traintel.core.state import find_loss

    if not isinstance(metrics, dict):
        return None
    key = find_loss(metrics)
    return None if key is None else metrics[key]
