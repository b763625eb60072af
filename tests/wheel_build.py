"""Building traintel's wheel in the tests, and a fresh virtual environment to install it into."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_wheel(out: Path) -> Path:
    """``python -m build --wheel`` of this checkout's files (tracked or new, not ignored), from a
    copy so that setuptools' build/ never lands in the checkout; no build isolation (the dev
    extra has setuptools)."""
    source = out / "source"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for rel in filter(None, (name.decode() for name in listed)):
        if (REPO / rel).is_file() or (REPO / rel).is_symlink():
            (source / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, source / rel, follow_symlinks=False)
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(out),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, (
        f"the wheel did not build:\n{built.stdout[-3000:]}\n{built.stderr[-3000:]}"
    )
    return next(out.glob("traintel-*.whl"))


def fresh_venv(directory: Path, wheel: Path) -> Path:
    """A new virtual environment with ``wheel`` installed, its dependencies taken from this
    (the shared, cached) environment through a .pth file instead of downloading torch and the
    rest again: traintel itself comes from the wheel (the shared environment's editable install
    hook is a .pth file there, which Python does not follow from a path added by a .pth)."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(directory)], check=True, timeout=120
    )
    python = directory / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # the wheel first, and without PYTHONPATH: with the shared environment or a checkout's src/
    # (an editable install's egg-info) on the path, pip finds traintel "already installed" and
    # installs nothing
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            str(wheel),
        ],
        check=True,
        timeout=300,
        env=clean,
    )
    (Path(purelib) / "shared-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return directory
