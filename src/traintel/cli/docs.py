"""`traintel docs`: reference documents generated from code."""

from __future__ import annotations

import click


@click.group()
def docs() -> None:
    """Print generated reference documentation."""


@docs.command()
def metrics() -> None:
    """The metric reference (docs/metrics.md) rendered from traintel.core.catalog."""
    from traintel.core.catalog import render_markdown

    click.echo(render_markdown(), nl=False)


@docs.command()
def configuration() -> None:
    """The configuration reference (docs/configuration.md): init options, environment variables."""
    from traintel.run.settings import render_markdown

    click.echo(render_markdown(), nl=False)
