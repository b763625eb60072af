"""``traintel sync`` from end to end: each record scanned, its cursor held, its batches sent to
the target and acknowledged one by one, progress reported as it goes. ``traintel.cli.sync``
parses the command line and presents; nothing here prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from traintel.core.redact import Redactor
from traintel.sync.cursor import Cursor, Position, fingerprint
from traintel.sync.plan import Options, Tally, batches
from traintel.sync.source import Record
from traintel.sync.target import Target


@dataclass
class Outcome:
    """One record's sync: what was sent and left out, and what the user should know."""

    record: Record
    tally: Tally
    notes: list[str] = field(default_factory=list)


@dataclass
class Progress:
    """Where a sync stands, for a progress display: bytes of the records read (of ``total``),
    items and request bytes acknowledged."""

    total: int
    read: int = 0
    sent: dict[str, int] = field(default_factory=lambda: {"metrics": 0, "logs": 0, "traces": 0})
    bytes_sent: int = 0
    record: str = ""


class Interrupted(Exception):
    """The sync stopped between two batches, as asked: every acknowledged batch is in the
    cursor."""


class Sync:
    """Sends ``records`` to ``target``; a dry run counts what would be sent and writes
    nothing."""

    def __init__(
        self,
        records: list[Record],
        target: Target,
        options: Options,
        *,
        dry_run: bool = False,
        on_progress: Callable[[Progress], None] = lambda progress: None,
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.records = records
        self.target = target
        self.options = options
        self.dry_run = dry_run
        self.on_progress = on_progress
        self.stop = stop
        #: secrets of this machine's environment, besides key-named ones (the record's lines
        #: were scrubbed with the training process's)
        self.redactor = Redactor.for_environment()
        for record in records:
            record.scan()
        self.progress = Progress(total=sum(record.end for record in records))
        self.outcomes: list[Outcome] = []

    def run(self) -> list[Outcome]:
        """Every record in turn; :class:`Interrupted` when ``stop`` says so between batches,
        the target's ``SyncError`` when the collector does not acknowledge one."""
        done = 0
        for record in self.records:
            self.progress.record = record.name
            outcome = Outcome(record, Tally(bad=record.bad))
            self.outcomes.append(outcome)
            if record.segments:
                self._record(outcome, done)
            else:
                outcome.notes.append("no run_start line: nothing says whose it is; skipped")
            done += record.end
            self.progress.read = done
            self.on_progress(self.progress)
        return self.outcomes

    def _record(self, outcome: Outcome, done: int) -> None:
        record = outcome.record
        if any(segment.mode is None for segment in record.segments):
            outcome.notes.append(
                "written before records noted what the live export delivered: all of it is "
                "sent, and where that run exported live its logs and spans arrive twice"
            )
        cursor = Cursor(record.directory, fingerprint(record.segments[0].start), self.target.key)
        position: Position
        if self.dry_run:
            position = cursor.peek()
        else:
            position = cursor.open().position
            if cursor.reset:
                outcome.notes.append(
                    "the record is not the one synced here before (its first "
                    "line differs): sending all of it"
                )
        try:
            for batch in batches(record, position, self.options, outcome.tally, self.redactor):
                if self.stop():
                    raise Interrupted(record.name)
                if not self.dry_run:
                    self.target.send(batch.signal, batch.request())
                    batch.acknowledged(position)
                    cursor.save()
                    self.progress.bytes_sent = self.target.bytes_sent
                outcome.tally.sent[batch.signal] += batch.count
                self.progress.sent[batch.signal] += batch.count
                self.progress.read = done + batch.read
                self.on_progress(self.progress)
        finally:
            cursor.close()
