"""Collects what each reliability test measured, for docs/reliability.md.

Tests call ``record(fault, expected, measured)``; at the end of the session the rows are written
to ``build/reliability.json`` and ``scripts/reliability_report.py`` renders the Markdown table
from it, so the document states what the tests actually measured.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

ROWS: list[dict[str, str]] = []
OUT = Path(__file__).resolve().parents[1] / "build" / "reliability.json"


def record(fault: str, expected: str, measured: str) -> None:
    ROWS.append({"fault": fault, "expected": expected, "measured": measured})


def write() -> None:
    """Merge this process's rows into the file, under a lock: each pytest-xdist worker writes
    its own rows at the end of its session."""
    if not ROWS:
        return
    OUT.parent.mkdir(exist_ok=True)
    with open(OUT.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        previous = json.loads(OUT.read_text()) if OUT.exists() else []
        merged = {row["fault"]: row for row in previous + ROWS}
        OUT.write_text(json.dumps(sorted(merged.values(), key=lambda r: r["fault"]), indent=1))
