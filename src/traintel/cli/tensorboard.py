"""``traintel tensorboard``: every run's full curves in TensorBoard, from the local records."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from traintel.core import extras
from traintel.record.reader import RecordNotFound, find_run, is_run, runs_dir

#: where event files go unless --logdir says
DEFAULT_LOGDIR = "traintel-tensorboard"
#: points per scalar tag and texts per tag TensorBoard keeps with --serve: every one a run logs
KEEP_POINTS = 100_000_000
KEEP_TEXTS = 100_000


@click.command()
@click.argument("runs", metavar="[RUN]...", nargs=-1)
@click.option(
    "--logdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_LOGDIR,
    show_default=True,
    help="Where the event files go (one TensorBoard run per traintel run and rank).",
)
@click.option("--serve", is_flag=True, help="Then start TensorBoard on 127.0.0.1 over --logdir.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=6006,
    show_default=True,
    help="TensorBoard's port with --serve.",
)
def tensorboard(runs: tuple[str, ...], logdir: Path, serve: bool, port: int) -> None:
    """Write TensorBoard event files from run records: every logged step's metrics, evals,
    epoch-level values, events and errors as text, the config in the HParams table.

    RUN: a directory, a run id or a run name (several to compare them; default: every run under
    $TRAINTEL_DIR or ./traintel-runs). Needs `pip install 'traintel[tensorboard]'`.
    """
    extras.require("traintel tensorboard", "tensorboard")
    from traintel.export.tensorboard import write_runs

    try:
        paths = (
            [find_run(r) for r in runs]
            if runs
            else sorted(p for p in runs_dir().iterdir() if p.is_dir() and is_run(p))
            if runs_dir().is_dir()
            else []
        )
    except RecordNotFound as exc:
        raise click.ClickException(str(exc)) from None
    if not paths:
        raise click.ClickException(f"no runs in {runs_dir()}; name one (a directory, id or name)")
    for written in write_runs(paths, logdir):
        click.echo(
            f"{written.run}: {written.steps} steps, {written.scalars} scalars, "
            f"{written.texts} texts, {len(written.hparams)} hyperparameters"
        )
    click.echo(f"event files in {logdir}")
    if not serve:
        click.echo(f"look: traintel tensorboard --serve ... or tensorboard --logdir {logdir}")
        return
    click.echo(f"TensorBoard on http://127.0.0.1:{port}/ (Ctrl-C ends it)")
    try:
        # TensorBoard's own entry point; loopback only, as every endpoint of traintel; every
        # point kept (by default it samples 1,000 per scalar tag: a long run's curve thinned;
        # its "0 keeps all" kept none in 2.21, tried)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "tensorboard.main",
                "--logdir",
                str(logdir),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--samples_per_plugin",
                f"scalars={KEEP_POINTS},text={KEEP_TEXTS}",
            ],
            check=False,
        )
    except KeyboardInterrupt:
        pass
