"""What the adversarial tests share: a training script run as a real process, and the grep of
any text for the secrets of the corpus."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path

import orjson
from secrets_corpus import SECRETS

ROOT = Path(__file__).resolve().parents[2]


def script_env(**extra: str) -> dict[str, str]:
    """The environment of a training script: this checkout's sources first."""
    environ = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    environ.update(extra)
    return environ


def run_script(
    code: str,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    args: Iterable[str] = (),
    **popen: object,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (dedented) as a training script in its own Python process."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or script_env(),
        **popen,
    )  # type: ignore[call-overload]


def start_script(
    code: str, *, env: dict[str, str] | None = None, args: Iterable[str] = ()
) -> subprocess.Popen[str]:
    """Start ``code`` as a training script; its stdout and stderr are pipes."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or script_env(),
    )


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
