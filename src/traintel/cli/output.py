"""Terminal output shared by the commands: Rich tables on a terminal, plain text when piped."""

from __future__ import annotations

import sys

import click

from traintel.reports.render import text_table


def table(columns: list[str], rows: list[list[str]], title: str | None = None) -> None:
    """A Rich table on a terminal, turned on its side when too wide for it; aligned plain text
    otherwise. Blank column names: no header; a missing cell is blank."""
    rows = [["" if c is None else str(c) for c in row] for row in rows]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.measure import Measurement
        from rich.table import Table

        console = Console()
        for cols, body in ((columns, rows), _transposed(columns, rows)):
            table = Table(*cols, title=title, title_justify="left", show_header=any(cols))
            for row in body:
                table.add_row(*row)
            natural = Measurement.get(console, console.options.update_width(10_000), table)
            if natural.maximum <= console.width:
                break
        console.print(table)
        return
    click.echo((f"{title}\n" if title else "") + text_table(columns, rows), nl=False)


def _transposed(columns: list[str], rows: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    """One column per row, headed by its first cell (a run's name, say)."""
    return [columns[0], *(row[0] for row in rows)], [
        [name, *(row[i] for row in rows)] for i, name in enumerate(columns) if i
    ]
