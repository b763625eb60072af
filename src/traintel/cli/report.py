"""``traintel report``: the crash report's contents on demand, for a run or for this machine."""

from __future__ import annotations

from pathlib import Path

import click

from traintel.record.files import encode
from traintel.record.reader import RecordNotFound, find_run
from traintel.reports.diagnostics import build_report
from traintel.reports.render import diagnostic_report


@click.command()
@click.argument("target", metavar="[RUN_DIR]", required=False)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "md"]),
    default="json",
    show_default=True,
    help="md: Markdown for an issue or a post-mortem.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write here instead of standard output.",
)
def report(target: str | None, fmt: str, output: Path | None) -> None:
    """Versions, host, GPUs, memory and environment; with RUN_DIR (a directory or run id) also
    the run's config, summary, every error and the last events.

    A failed run already has one: crash-report.json in its directory.
    """
    run_dir = None
    if target is not None:
        try:
            run_dir = find_run(target)
        except RecordNotFound as exc:
            raise click.ClickException(str(exc)) from None
    data = build_report(run_dir=run_dir)
    if fmt == "md":
        text = diagnostic_report(data)
    else:
        text = encode(data, indent=True).decode() + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)
        click.echo(f"report {data['report_id']} written to {output}", err=True)
