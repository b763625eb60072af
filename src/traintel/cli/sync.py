"""``traintel sync``: send run records to a collector after the fact (docs/offline.md).

Parses the command line, shows progress (rich on a terminal, a plain line every few seconds
otherwise), stops cleanly on Ctrl-C (the batch in flight is finished and acknowledged, and the
cursor holds it; a second Ctrl-C stops at once), reports what was sent and what was not and
why, and exits non-zero when anything was not delivered. The work is ``traintel.sync``'s.
"""

from __future__ import annotations

import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click

from traintel.cli.output import table
from traintel.reports.render import num

if TYPE_CHECKING:
    from traintel.sync.deliver import Outcome, Progress

_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: seconds between plain progress lines when not on a terminal
PLAIN_EVERY = 10.0


def max_age(text: str) -> float | None:
    """``36h``, ``7d``, ``90m``, ``600`` (seconds); ``0``: no limit."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise click.BadParameter(
            f"{text!r} is not a duration such as 36h, 7d or 0 (no limit)", param_hint="--max-age"
        )
    return float(match.group(1)) * _SECONDS[match.group(2) or "s"] or None


@click.command()
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option(
    "--endpoint",
    metavar="URL",
    help="The collector's OTLP/HTTP base URL, e.g. http://collector:4318. Default: "
    "OTEL_EXPORTER_OTLP_ENDPOINT and the per-signal variables, read as a live "
    "run reads them; else a running native stack's collector (traintel stack "
    "up); else http://localhost:4318.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Say what would be sent, and what would not and why; send nothing.",
)
@click.option(
    "--all",
    "resend",
    is_flag=True,
    help="Send also what the run's live export delivered. Metrics are safe to send "
    "again; logs and spans then arrive twice where it did.",
)
@click.option(
    "--max-age",
    "age",
    default="7d",
    show_default=True,
    metavar="DURATION",
    help="Send nothing older. The shipped stack takes 7 days (Prometheus's "
    "out-of-order window, Loki's reject_old_samples_max_age): raise both before "
    "raising this. 0: no limit.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=512,
    show_default=True,
    help="Log lines and spans per request (metric points: 8 times as many).",
)
def sync(
    runs: tuple[str, ...],
    endpoint: str | None,
    dry_run: bool,
    resend: bool,
    age: str,
    batch_size: int,
) -> None:
    """Send run records to an OpenTelemetry collector over OTLP/HTTP: metrics at their
    original times, with the names, labels and per-interval statistics a live run exports;
    logs with their times and trace ids; spans with their ids.

    RUN is a run id, a run or rank directory, an events.jsonl, or a directory of runs. Safe
    to repeat and to interrupt: a cursor beside each record (sync-cursor.json) keeps what the
    collector acknowledged, and what the run's live export delivered is not sent again.
    Exits 1 when anything was not delivered, 130 when interrupted.
    """
    from traintel.sync.cursor import CursorError
    from traintel.sync.deliver import Interrupted, Sync
    from traintel.sync.plan import Options
    from traintel.sync.source import find_records
    from traintel.sync.target import SyncError, Target

    options = Options(
        resend=resend,
        max_age=max_age(age),
        batch={"logs": batch_size, "traces": batch_size, "metrics": 8 * batch_size},
    )
    records, missing = find_records(list(runs))
    for reason in missing:
        click.echo(f"traintel sync: {reason}", err=True)
    if not records:
        sys.exit(1)
    try:
        target = Target(endpoint)
    except SyncError as exc:
        click.echo(f"traintel sync: {exc}", err=True)
        sys.exit(1)
    stop = _CtrlC()
    work: Sync | None = None
    failure: str | None = None
    interrupted = False
    cursor_kept = True
    started = time.monotonic()
    try:
        if not dry_run:
            target.probe()
        with stop.installed(), _progress(sum(_size(r.files) for r in records)) as show:
            work = Sync(records, target, options, dry_run=dry_run, on_progress=show, stop=stop)
            work.run()
    except Interrupted:
        interrupted = True
    except SyncError as exc:
        failure = str(exc)
    except CursorError as exc:  # a full disk, a refused file: the cursor was NOT written
        failure = str(exc)
        cursor_kept = False
    finally:
        target.close()
    if work is not None:
        _report(work.outcomes, dry_run, time.monotonic() - started, target.bytes_sent)
    if failure:
        click.echo(f"traintel sync: {failure}", err=True)
        if work is not None and not dry_run and cursor_kept:
            click.echo(
                "what the collector acknowledged is in the cursor: the same command sends the rest",
                err=True,
            )
        elif work is not None and not dry_run:
            click.echo(
                "the cursor was not updated: the same command, once it can be written, "
                "sends again what the collector took since its last update (a backend "
                "drops or keeps repeats as docs/offline.md says)",
                err=True,
            )
        sys.exit(1)
    if interrupted:
        click.echo(
            "traintel sync: interrupted; what the collector acknowledged is in the "
            "cursor: the same command sends the rest",
            err=True,
        )
        sys.exit(130)
    if missing:
        sys.exit(1)


class _CtrlC:
    """The first Ctrl-C asks the sync to stop after the batch in flight; the second stops it
    at once (the batch in flight may then be sent again by the next sync)."""

    def __init__(self) -> None:
        self.asked = False

    def __call__(self) -> bool:
        return self.asked

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        click.echo(
            "\ntraintel sync: stopping after the batch in flight (Ctrl-C again to stop now)",
            err=True,
        )

    @contextmanager
    def installed(self) -> Iterator[None]:
        previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


@contextmanager
def _progress(total: int) -> Iterator[Callable[[Progress], None]]:
    """A rich progress bar on a terminal (records read, speed, ETA, what was sent); plain
    lines every few seconds otherwise."""
    if not sys.stderr.isatty():
        last = [time.monotonic()]

        def plain(progress: Progress) -> None:
            now = time.monotonic()
            if now - last[0] >= PLAIN_EVERY:
                last[0] = now
                click.echo(
                    f"traintel sync: {progress.record}: {_sent(progress.sent)}, "
                    f"{num(progress.bytes_sent / 1e6)} MB sent, "
                    f"{100 * progress.read / max(1, total):.0f}% read",
                    err=True,
                )

        yield plain
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.progress import Progress as Bar

    with Bar(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[sent]}"),
        console=Console(stderr=True),
        transient=False,
    ) as bar:
        task = bar.add_task("sync", total=total, sent="")

        def rich(progress: Progress) -> None:
            bar.update(
                task,
                completed=progress.read,
                description=progress.record,
                sent=f"{_sent(progress.sent)}, {num(progress.bytes_sent / 1e6)} MB sent",
            )

        yield rich


def _sent(sent: dict[str, int]) -> str:
    return f"{sent['metrics']:,} points, {sent['logs']:,} log lines, {sent['traces']:,} spans"


def _size(files: list[Path]) -> int:
    return sum(f.stat().st_size for f in files if f.exists())


def _report(outcomes: list[Outcome], dry_run: bool, seconds: float, sent_bytes: int) -> None:
    """What each record sent (or would send), and what it left out and why."""
    verb = "would send" if dry_run else "sent"
    rows = []
    for outcome in outcomes:
        tally = outcome.tally
        for signal_name, label in (
            ("metrics", "points"),
            ("logs", "log lines"),
            ("traces", "spans"),
        ):
            rows.append(
                [
                    outcome.record.name,
                    label,
                    f"{tally.sent[signal_name]:,}",
                    f"{tally.live[signal_name]:,}",
                    f"{tally.before[signal_name]:,}",
                    f"{tally.too_old[signal_name]:,}",
                ]
            )
    table(["record", "what", verb, "delivered live", "synced before", "too old"], rows)
    for outcome in outcomes:
        if outcome.tally.bad:
            click.echo(
                f"note: {outcome.record.name}: skipped {outcome.tally.bad} unreadable line(s)",
                err=True,
            )
        for note in outcome.notes:
            click.echo(f"note: {outcome.record.name}: {note}", err=True)
    if any(sum(o.tally.too_old.values()) for o in outcomes):
        click.echo(
            "note: what is older than --max-age was not sent: the stack would refuse it "
            "(docs/offline.md says how to accept older data)",
            err=True,
        )
    if not dry_run:
        total = sum(sum(o.tally.sent.values()) for o in outcomes)
        click.echo(
            f"traintel sync: {total:,} items, {sent_bytes / 1e6:.2f} MB in {seconds:.1f}s", err=True
        )
