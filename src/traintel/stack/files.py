"""The stack's files: the compose file, every program's config, rules, dashboards, provisioning.

They live at the repository's top level, where an operator finds them without reading Python. The
wheel carries the same files, at the same relative paths, in ``traintel/stack/bundle/`` (mapped
there at build time by pyproject.toml's ``package-dir``), so ``traintel stack init | install | up``
work from ``pip install traintel`` without a checkout. :func:`root` is that copy in an installed
wheel, and the checkout itself when running from source (edits there take effect at once).

``traintel stack init DIR`` (:func:`init`) writes a ready compose project: the files an operator
runs and edits (:data:`PROJECT`), a ``.env`` with a generated Grafana admin password, and a systemd
unit for the native stack that names this installation's interpreter and the project.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

#: the packaged copy (present in an installed wheel only)
BUNDLE = Path(__file__).resolve().parent / "bundle"
#: the checkout this module runs from, when it runs from one
CHECKOUT = Path(__file__).resolve().parents[3]
#: a file every copy has: tells a real stack root from an unrelated directory
MARKER = "docker-compose.yml"

#: the files of a compose project (``traintel stack init``), as paths relative to :func:`root`:
#: what ``docker compose up`` mounts, and the Prometheus rule tests
PROJECT: tuple[str, ...] = (
    "docker-compose.yml",
    ".env.example",
    "otel-collector/config.yaml",
    "prometheus/prometheus.yml",
    "prometheus/rules/*.yml",
    "prometheus/tests/*.yml",
    "alertmanager/alertmanager.yml",
    "loki/loki.yaml",
    "tempo/tempo.yaml",
    "grafana/provisioning/*/*.yaml",
    "grafana/dashboards/*.json",
)
#: the systemd unit for the native stack, and where ``init`` writes it (pointed at the project)
UNIT_SOURCE = "deploy/systemd/traintel-stack.service"
UNIT = "traintel-stack.service"


class StackFilesError(Exception):
    """The stack's files cannot be found, or ``init`` would overwrite a file the user changed."""


def root() -> Path:
    """The directory holding the stack's files: the wheel's copy, else the checkout."""
    for candidate in (BUNDLE, CHECKOUT):
        if (candidate / MARKER).is_file():
            return candidate
    raise StackFilesError(
        f"traintel's stack files are missing (looked in {BUNDLE} and {CHECKOUT}): reinstall "
        "traintel from a wheel (`pip install --force-reinstall traintel`), or run it from a "
        "checkout")


def project_files(source: Path | None = None) -> list[str]:
    """The relative paths of :data:`PROJECT` under ``source`` (default :func:`root`), sorted."""
    base = source or root()
    found = {str(path.relative_to(base)) for pattern in PROJECT for path in base.glob(pattern)
             if path.is_file()}
    return sorted(found)


@dataclass(frozen=True)
class InitResult:
    directory: Path
    written: list[str]
    unchanged: list[str]
    #: the generated Grafana admin password (None when an existing .env was kept)
    password: str | None


def init(directory: Path, *, force: bool = False) -> InitResult:
    """Write a compose project into ``directory``: :data:`PROJECT`, a ``.env`` and a unit.

    A file that exists with other content is an error naming it, unless ``force`` (then it is
    replaced); an identical one is left alone, so ``init`` of a checkout writes only ``.env``. An
    existing ``.env`` is never replaced: its password is what Grafana's data volume remembers.
    """
    source = root()
    directory = directory.resolve()
    written: list[str] = []
    unchanged: list[str] = []
    planned = {rel: (source / rel).read_bytes() for rel in project_files(source)}
    planned[UNIT] = systemd_unit((source / UNIT_SOURCE).read_text(), directory).encode()
    conflicts = [rel for rel, content in planned.items()
                 if (directory / rel).is_file() and (directory / rel).read_bytes() != content]
    if conflicts and not force:
        raise StackFilesError(
            f"{directory} already has other versions of {', '.join(conflicts)}: keep your "
            "changes, or pass --force to replace them with this traintel's")
    links = [rel for rel in [*planned, ".env"] if (directory / rel).is_symlink()]
    if links:  # a dangling one would be written through, outside DIR; .env's would hold the password
        raise StackFilesError(
            f"{directory} has symbolic links where traintel writes files ({', '.join(links)}): "
            "traintel stack init does not write through links; remove them, or init another "
            "directory")
    for rel, content in planned.items():
        target = directory / rel
        if target.is_file() and target.read_bytes() == content:
            unchanged.append(rel)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        written.append(rel)
    password = None
    env_file = directory / ".env"
    if not env_file.exists():
        password = secrets.token_urlsafe(18)
        _write_private(env_file, env_text((source / ".env.example").read_text(), password))
        written.append(".env")
    return InitResult(directory, written, unchanged, password)


def env_text(example: str, password: str) -> str:
    """``.env.example`` with the Grafana admin password filled in."""
    text, count = re.subn(r"(?m)^GRAFANA_ADMIN_PASSWORD=.*$",
                          f"GRAFANA_ADMIN_PASSWORD={password}", example)
    if count != 1:
        raise StackFilesError(".env.example has no GRAFANA_ADMIN_PASSWORD= line to fill in")
    return ("# Written by `traintel stack init` with a generated password; keep this file private "
            "(mode 600).\n" + text)


def systemd_unit(template: str, directory: Path) -> str:
    """The example unit, pointed at this project and this installation's interpreter: it runs
    ``python -m traintel stack up --foreground --configs DIR`` from ``directory``."""
    if any(c in str(directory) for c in "\n\r"):
        raise StackFilesError(f"{str(directory)!r} has a line break in its name: a systemd unit "
                              "cannot name it; init another directory")
    command = " ".join([_exec_arg(sys.executable), "-m", "traintel", "stack", "up",
                        "--foreground", "--configs", _exec_arg(str(directory)),
                        "--run-dir", "%h/.local/state/traintel/stack"])
    working = str(directory).replace("%", "%%")  # the whole value is the path: no quoting
    text = re.sub(r"(?m)^WorkingDirectory=.*$", lambda _: f"WorkingDirectory={working}", template)
    return re.sub(r"(?m)^ExecStart=.*$", lambda _: f"ExecStart={command}", text)


def _exec_arg(text: str) -> str:
    """One ``ExecStart=`` argument as systemd reads it: ``%`` specifiers and ``$`` variables
    escaped (a DIR named ``50%h`` must not become the home directory), quoted when it holds a
    space, a quote or a backslash (``My Stack`` is one argument, not two)."""
    text = text.replace("%", "%%").replace("$", "$$")
    if any(c in text for c in " \t\"'\\"):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only (it holds a password)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
