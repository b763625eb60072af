"""Progress display: a ``rich`` bar on a terminal, plain periodic lines in batch-job logs.

The training loop calls ``refresh`` at most every ``REFRESH_S`` seconds (it checks a float, not a
clock); rendering happens on rich's own refresh thread or as one printed line.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, TextIO

from traintel.core.state import RunState
from traintel.reports.render import epoch_text, num, progress_text

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

MILESTONES = (25, 50, 75, 90, 100)
REFRESH_S = 0.1


class ProgressDisplay:
    def __init__(
        self,
        state: RunState,
        *,
        mode: str,
        title: str,
        total_epochs: int | None,
        interval: float,
        stream: TextIO | None = None,
    ) -> None:
        self.state = state
        self.total_epochs = total_epochs
        self.interval = interval
        self.stream = stream or sys.stdout
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "lines"
        self.mode = mode
        self.title = title
        #: the terminal's Console while a bar is shown: log lines printed through it appear
        #: above the bar instead of through it
        self.console: Console | None = None
        if mode == "bar":
            from rich.console import Console

            self.console = Console(file=self.stream)
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._next_line = time.monotonic() + interval

    def start(self) -> None:
        if self.mode != "bar":
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            refresh_per_second=4,
        )
        self._task = self._bar.add_task(self.title, total=self.state.total_steps, info="")
        self._bar.start()

    def refresh(self) -> None:
        state = self.state
        if self._bar is not None and self._task is not None:
            rate = state.rates.get("steps_per_second")
            loss = state.latest_loss()
            info = " ".join(
                x
                for x in (
                    epoch_text(state, self.total_epochs),
                    f"{rate:.1f} it/s" if rate else "",
                    f"loss {num(loss)}" if loss is not None else "",
                )
                if x
            )
            self._bar.update(self._task, completed=state.step, total=state.total_steps, info=info)
        elif self.mode == "lines":
            now = time.monotonic()
            if now >= self._next_line:
                self._next_line = now + self.interval
                self.line(progress_text(state, self.total_epochs))

    def line(self, text: str) -> None:
        """A plain progress line (also used for milestones in every mode)."""
        if self.mode == "off":
            return
        try:
            if self._bar is not None:
                self._bar.console.print(f"[traintel] {text}", markup=False, highlight=False)
            else:
                print(f"[traintel] {text}", file=self.stream, flush=True)
        except (OSError, ValueError):  # `train.py | head`: the reader is gone, training is not
            self.mode = "off"

    def stop(self) -> None:
        if self._bar is not None:
            self.refresh()
            self._bar.stop()
            self._bar = None
