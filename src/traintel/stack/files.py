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
#: the Helm chart (``traintel stack init --helm DIR``): every file under it, none a link
CHART = "deploy/helm/traintel"
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


def init_chart(directory: Path, *, force: bool = False) -> InitResult:
    """Write the Helm chart (:data:`CHART`) into ``directory``, ready for ``helm install NAME
    DIR`` or ``helm package DIR``: the chart is self-contained (its rules, dashboards and
    collector pipeline are generated files inside it), so this is a plain copy. A file that exists
    with other content is an error naming it, unless ``force``."""
    source = root() / CHART
    if not (source / "Chart.yaml").is_file():
        raise StackFilesError(f"traintel's Helm chart is missing from {source}: reinstall traintel")
    directory = directory.resolve()
    planned = {str(path.relative_to(source)): path.read_bytes()
               for path in sorted(source.rglob("*"))
               if path.is_file() and not path.is_symlink()}
    conflicts = [rel for rel, content in planned.items()
                 if (directory / rel).is_file() and (directory / rel).read_bytes() != content]
    if conflicts and not force:
        raise StackFilesError(
            f"{directory} already has other versions of {', '.join(conflicts)}: keep your "
            "changes, or pass --force to replace them with this traintel's")
    written: list[str] = []
    unchanged: list[str] = []
    for rel, content in planned.items():
        target = directory / rel
        if target.is_file() and not target.is_symlink() and target.read_bytes() == content:
            unchanged.append(rel)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()  # never write through a link
        target.write_bytes(content)
        written.append(rel)
    return InitResult(directory, written, unchanged, None)


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
    command = (f"{sys.executable} -m traintel stack up --foreground --configs {directory} "
               "--run-dir %h/.local/state/traintel/stack")
    text = re.sub(r"(?m)^WorkingDirectory=.*$", f"WorkingDirectory={directory}", template)
    return re.sub(r"(?m)^ExecStart=.*$", f"ExecStart={command}", text)


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only (it holds a password)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
