"""``traintel status`` and ``traintel debug``: how runs are doing, and debug logging on demand.

Local runs are read from disk (summary.json when a run has ended, else the tail of its record),
so this works for runs on shared storage and for runs that were killed; ``--url`` asks a live
run's status endpoint (``traintel.init(http_port=...)``) instead.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import click
import orjson
import psutil

from traintel import env
from traintel.cli.output import table
from traintel.record.files import read_json
from traintel.record.format import RawLine
from traintel.doctor import fetch
from traintel.render import duration, iso, num
from traintel.record.reader import (Records, RecordNotFound, find_run, is_run, last_records,
                                    rank_dirs, runs_dir)

#: a run without a line for this long is reported as stale
STALE_S = 600
#: how much of a live run's record is read for its latest step and recent errors
TAIL_LINES = 1000


def local_status(path: Path) -> dict[str, Any]:
    """One run's state from its directory: finished, failed or interrupted (summary.json),
    running, stale (no line for 10 minutes) or dead (its process is gone without a summary)."""
    meta = (rank_dirs(path) or [path])[0]
    summary = read_json(meta / "summary.json")
    if summary is not None:
        return {"run": summary.get("run"), "project": summary.get("project"),
                "name": summary.get("name"), "status": summary.get("status"),
                "step": summary.get("steps"), "epochs": summary.get("epochs"),
                "loss": (summary.get("loss") or {}).get("final"),
                "errors": (summary.get("errors") or {}).get("total"),
                "updated": summary.get("end_ts"), "dir": str(path)}
    records = Records(path, waiting=True)
    start: RawLine = next((r for r in records if r.get("type") == "run_start"), {})
    recent = last_records(records, TAIL_LINES)
    step: dict[str, Any] = next((r for r in reversed(recent) if r.get("type") == "step"), {})
    updated = recent[-1].get("ts") if recent else None
    return {"run": start.get("run", path.name), "project": start.get("project"),
            "name": start.get("name"), "status": _liveness(start, updated),
            "step": step.get("step"), "epochs": None if step.get("epoch") is None
            else step["epoch"] + 1, "loss": (step.get("metrics") or {}).get("loss"),
            "errors": sum(r.get("type") == "error" for r in recent), "updated": updated,
            "dir": str(path)}


def _liveness(start: dict[str, Any], updated: float | None) -> str:
    pid, started = start.get("pid"), start.get("ts")
    if start.get("host") == socket.gethostname() and isinstance(pid, int):
        try:
            if psutil.Process(pid).create_time() > (started or 0) + 1:  # the pid was reused
                return "dead"
        except psutil.Error:
            return "dead"
    if updated is not None and time.time() - updated > STALE_S:
        return "stale"
    return "running"


def _all_runs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and is_run(p)]
    return sorted(runs, key=lambda p: p.stat().st_mtime)


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
@click.argument("target", metavar="[RUN_DIR]", required=False)
@click.option("--all", "all_runs", is_flag=True,
              help="Every run under $TRAINTEL_DIR or ./traintel-runs.")
@click.option("--url", metavar="URL", envvar=env.TRAINTEL_URL.name,
              help="A live run's endpoint, http://127.0.0.1:PORT (env TRAINTEL_URL).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
def status(target: str | None, all_runs: bool, url: str | None, fmt: str) -> None:
    """Status of a run (RUN_DIR or run id; default: the latest), of every run (--all), or of a
    live run's endpoint (--url)."""
    if url:
        results: Any = _live(url)
    elif all_runs:
        results = [local_status(p) for p in _all_runs(runs_dir())]
    else:
        try:
            path = find_run(target) if target else _all_runs(runs_dir())[-1]
            results = local_status(path)
        except IndexError:
            raise click.ClickException(f"no runs in {runs_dir()}") from None
        except RecordNotFound as exc:
            raise click.ClickException(str(exc)) from None
    if fmt == "json":
        click.echo(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    elif isinstance(results, list):
        table(["run", "name", "status", "step", "epochs", "loss", "errors", "updated"],
               [[str(r["run"]), str(r["name"] or "-"), str(r["status"]), num(r["step"]),
                 num(r["epochs"]), num(r["loss"]), num(r["errors"]), iso(r["updated"])]
                for r in results])
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
