"""The live page of a run: the files served at ``/`` by the status endpoint, and the record tail
that feeds it every step.

The page (``index.html`` and ``page.js``, plain, no build step) draws with uPlot, vendored here as
its built file with its licence (``tools/page/package-lock.json`` pins the version): a run on a
login node or a CI machine, offline, shows its curves with nothing fetched from anywhere.

Every step comes from the run's own record, not from the training thread: the page's ``/events``
stream (``?record=1``) reads the record files from their first line (rotated ones first), then
follows the live file as the writer appends to it, on the request's own thread. The training
thread pays nothing for an open page; what the page shows is what the record holds, flushed every
``flush_interval``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from traintel.core import env
from traintel.core.redact import Redactor
from traintel.record.files import encode
from traintel.record.format import EVENTS_FILE, RawLine
from traintel.record.reader import Follower, Mark, Records

#: the file in the run's directory that tells `traintel status` where its live page is (written
#: when the endpoint starts, removed when it stops)
PAGE_FILE = "live-page.json"
#: the files of the page: URL path -> (file in this package, Content-Type)
FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/uPlot.iife.min.js": ("uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    "/uPlot.min.css": ("uPlot.min.css", "text/css; charset=utf-8"),
    "/uPlot.LICENSE": ("uPlot.LICENSE", "text/plain; charset=utf-8"),
}
#: the page loads nothing but its own files, and no other site may frame it (the debug toggle
#: must not be clickjacked)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'"
)
#: the record lines the page shows (spans and instrument figures are not drawn)
PAGE_TYPES = frozenset(
    {
        "run_start",
        "config",
        "step",
        "values",
        "eval",
        "epoch",
        "event",
        "milestone",
        "error",
        "log",
        "export",
        "run_end",
    }
)
#: the most lines one ``record`` event carries (a long backlog goes in several)
BATCH = 5000
#: readings one :class:`SharedReads` keeps (streams at most this many places apart share them)
SHARED_READS = 4
#: an error's traceback as the page gets it: its last characters (the record keeps it whole)
TRACEBACK_CHARS = 4000

_cache: dict[str, bytes] = {}


def page_file(path: str) -> tuple[bytes, str] | None:
    """The body and Content-Type of a page file, or None when ``path`` is not one."""
    entry = FILES.get(path)
    if entry is None:
        return None
    name, content_type = entry
    body = _cache.get(name)
    if body is None:
        body = _cache[name] = resources.files("traintel.export.page").joinpath(name).read_bytes()
    return body, content_type


def links() -> dict[str, str]:
    """Grafana and Prometheus, only where the user named them (a native stack serves neither
    Grafana nor Prometheus's UI: a default address would link to pages that do not exist)."""
    out = {}
    grafana = env.TRAINTEL_GRAFANA_URL.get() or env.GRAFANA_URL.get()
    prometheus = env.TRAINTEL_PROMETHEUS_URL.get()
    for name, url, page in (
        ("grafana", grafana, "/dashboards"),
        ("prometheus", prometheus, "/graph"),
    ):
        if url and url.lower().startswith(("http://", "https://")):  # never javascript: ...
            out[name] = Redactor.for_environment().text(url.rstrip("/")) + page
    return out


def slim(line: RawLine) -> RawLine | None:
    """A record line as the page gets it, or None for lines it does not show."""
    kind = line.get("type")
    if kind not in PAGE_TYPES:
        return None
    if kind == "error" and isinstance(line.get("traceback"), str):
        return {**line, "traceback": line["traceback"][-TRACEBACK_CHARS:]}
    if kind == "step":  # the hot line: only what is drawn
        return {
            k: line.get(k)
            for k in ("type", "ts", "step", "epoch", "step_s", "data_wait_s", "metrics")
        }
    return line


@dataclass
class RecordTail:
    """Every line of one rank's record, then each new one: rotated files first, then the live
    file from its start, followed through rotation (``traintel.record.reader.Follower``)."""

    records: Records
    follower: Follower
    backlog: list[Path]

    @classmethod
    def open(cls, directory: Path) -> RecordTail:
        records = Records(directory, waiting=True)
        files = records.streams[0]
        current = files[0].parent / EVENTS_FILE
        return cls(
            records, Follower(current, records, from_start=True), [f for f in files if f != current]
        )

    def poll(self) -> list[RawLine]:
        """The lines written since the last poll (at most about BATCH), slimmed for the page."""
        out: list[RawLine] = []
        while self.backlog and len(out) < BATCH:
            out += _slimmed(self.records.read([self.backlog.pop(0)]))
        while len(out) < BATCH:
            lines = self.follower.poll()
            if not lines:
                break
            out += _slimmed(lines)
        return out

    def poll_encoded(self, shared: SharedReads | None = None) -> bytes | None:
        """``poll()``'s lines as one JSON array (None when there are none). With ``shared``, a
        tail that stands where another stood takes that one's reading instead of reading, parsing,
        slimming and encoding the same lines again: ten pages open on one run cost one reading
        per record flush, not ten (each held the interpreter from the training thread). A tail
        still reading the rotated files, or crossing a rotation, reads on its own."""
        if shared is None or self.backlog:
            lines = self.poll()
            return encode(lines) if lines else None
        with shared.lock:
            before = self.follower.mark()
            if before is not None:
                done = shared.readings.get(before)
                if done is not None:
                    self.follower.go_to(done[0])
                    shared.taken += 1
                    return done[1]
            lines = self.poll()
            body = encode(lines) if lines else None
            end = self.follower.mark()
            if before is not None and end is not None and end.inode == before.inode and body:
                shared.readings[before] = (end, body)
                while len(shared.readings) > SHARED_READS:
                    shared.readings.popitem(last=False)
            return body

    def close(self) -> None:
        self.follower.close()


class SharedReads:
    """The last readings of a run's record by :class:`RecordTail` s, by the place they started
    from: the streams of one endpoint share one (see ``RecordTail.poll_encoded``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.readings: OrderedDict[Mark, tuple[Mark, bytes]] = OrderedDict()
        self.taken = 0  #: readings taken instead of read again (for tests)


def _slimmed(lines: Any) -> list[RawLine]:
    return [s for line in lines if (s := slim(line)) is not None]
