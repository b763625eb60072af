"""What the adversarial tests share: a training script run as a real process (the suite's runners,
from conftest), the grep of any text for the secrets of the corpus, and the steps of a record."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import orjson
from secrets_corpus import SECRETS

from conftest import ROOT, run_script, script_env, start_script  # noqa: F401  (the tests' names)


def leaks(text: str | bytes, secrets: Iterable[str] = SECRETS) -> list[str]:
    """The secrets of the corpus found in ``text`` (in JSON-escaped form too: a record or an
    OTLP payload writes ``/`` and newlines escaped)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    found = []
    for secret in secrets:
        escaped = orjson.dumps(secret).decode()[1:-1]
        if secret in text or escaped in text:
            found.append(secret)
    return found


def files_under(directory: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()}


def step_numbers(run_dir: Path) -> list[int]:
    """The step numbers a record holds, in file order (rotated files first)."""
    steps = []
    files = sorted(run_dir.glob("events.jsonl.*"), key=lambda p: -int(p.suffix[1:]))
    for path in [*files, run_dir / "events.jsonl"]:
        for raw in path.read_bytes().splitlines() if path.exists() else []:
            line = orjson.loads(raw)
            if line["type"] == "step":
                steps.append(line["step"])
    return steps
