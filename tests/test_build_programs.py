"""How `make test` builds its programs: scripts/test.sh starts scripts/build_programs.py in the
background before the Python environment exists (the Go builds overlap pip's downloads), so the
installer must run on the standard library alone, and a second installer must wait for the first
and say so."""

from __future__ import annotations

import fcntl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from traintel.stack import install
from traintel.stack.components import COMPONENTS

REPO = Path(__file__).resolve().parents[1]


def test_the_installer_runs_on_the_standard_library_alone() -> None:
    """-S: no site-packages (no PyYAML, nothing pip installed), as before the environment."""
    code = (
        f"import sys; sys.path.insert(0, {str(REPO / 'src')!r}); "
        "import runpy; runpy.run_path(sys.argv[1], run_name='imported'); "
        "import traintel.stack.install; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] not in sys.stdlib_module_names "
        "and m.split('.')[0] != 'traintel'))"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", code, str(REPO / "scripts/build_programs.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['__main__']", result.stdout


def test_the_collector_manifest_is_rewritten_as_text() -> None:
    """The installer replaces the one output_path line and takes the binary's name from the
    components table: both must agree with the manifest."""
    component = COMPONENTS["otelcol"]
    text = (REPO / component.manifest).read_text()
    assert sum(line.strip().startswith("output_path:") for line in text.splitlines()) == 1
    assert yaml.safe_load(text)["dist"]["name"] == component.binaries[0]


def test_a_second_installer_waits_for_the_first_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINTEL_CACHE", str(tmp_path / "cache"))
    install.bin_root().mkdir(parents=True)
    holder = (install.bin_root() / ".lock").open("w")
    fcntl.flock(holder, fcntl.LOCK_EX)
    said: list[str] = []
    done = threading.Event()
    waiter = threading.Thread(
        target=lambda: (install.install(table={}, say=said.append), done.set()), daemon=True
    )
    waiter.start()
    deadline = time.monotonic() + 10
    while not said and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not done.is_set(), "it went on while the lock was held"
    assert said and "waiting for another install" in said[0] and "make-test-build.log" in said[0]
    holder.close()
    assert done.wait(10), "it never took the lock"
