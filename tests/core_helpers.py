"""Small helpers shared by the core tests: quiet runs and reading a record back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

import traintel

QUIET = {"progress": "off", "console_logs": False, "sample_interval": 0, "otlp": False,
         "flush_interval": 0.05}


def quiet_run(tmp_path: Path, **options: Any) -> traintel.Run:
    return traintel.init(**{"project": "test", "dir": str(tmp_path), **QUIET, **options})


def read_record(run_dir: Path) -> list[dict[str, Any]]:
    lines = []
    for path in sorted(run_dir.glob("events.jsonl.*"), key=lambda p: -int(p.suffix[1:])) + [
            run_dir / "events.jsonl"]:
        for raw in path.read_bytes().splitlines():
            lines.append(orjson.loads(raw))
    return lines


def of_type(lines: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["type"] == kind]
