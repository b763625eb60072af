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
        "checkout"
    )


def project_files(source: Path | None = None) -> list[str]:
    """The relative paths of :data:`PROJECT` under ``source`` (default :func:`root`), sorted."""
    base = source or root()
    found = {
        str(path.relative_to(base))
        for pattern in PROJECT
        for path in base.glob(pattern)
        if path.is_file()
    }
    return sorted(found)


#: where Alertmanager reads a secret given as a compose secret (a file, never the YAML itself)
SECRETS_DIR = "/run/secrets"
#: the compose file ``init`` adds when it writes receivers (compose merges it automatically)
OVERRIDE = "docker-compose.override.yml"


@dataclass(frozen=True)
class Receivers:
    """Where alerts go (``traintel stack init --slack-webhook / --email / --webhook``)."""

    slack_webhook: str | None = None
    webhook: str | None = None
    email: str | None = None
    #: the mail relay and sender for ``email``
    smarthost: str = "localhost:25"
    email_from: str = "traintel-alertmanager@localhost"

    @property
    def secrets(self) -> dict[str, str]:
        """compose secret name -> value; each is in .env as the name upper-cased."""
        found = {
            "alertmanager_slack_webhook_url": self.slack_webhook,
            "alertmanager_webhook_url": self.webhook,
        }
        return {name: value for name, value in found.items() if value}

    def __bool__(self) -> bool:
        return bool(self.slack_webhook or self.webhook or self.email)


def receiver_yaml(receivers: Receivers) -> str:
    """The ``receivers:`` section of alertmanager.yml for ``receivers``: URLs are read from files
    (``url_file``, ``api_url_file``), which compose makes from .env (:func:`override_yaml`)."""
    lines = [
        "receivers:",
        "  - name: team",
        "    # Written by `traintel stack init`. The webhook URLs are secrets: they are in .env",
        f"    # and reach Alertmanager as files in {SECRETS_DIR}/ (made by compose from",
        f"    # {OVERRIDE}, and by `traintel stack up` natively).",
    ]
    if receivers.webhook:
        lines += [
            "    webhook_configs:",
            f"      - url_file: {SECRETS_DIR}/alertmanager_webhook_url",
            "        send_resolved: true",
        ]
    if receivers.slack_webhook:
        lines += [
            "    slack_configs:",
            f"      - api_url_file: {SECRETS_DIR}/alertmanager_slack_webhook_url",
            "        send_resolved: true",
            "        title: '{{ .CommonLabels.severity | toUpper }}: "
            "{{ .CommonAnnotations.summary }}'",
            "        text: '{{ range .Alerts }}{{ .Annotations.description }}"
            '{{ "\\n" }}{{ end }}\'',
        ]
    if receivers.email:
        local = receivers.smarthost.split(":")[0] in ("localhost", "127.0.0.1")
        lines += [
            "    email_configs:",
            f"      - to: {_quoted(receivers.email)}",
            f"        from: {_quoted(receivers.email_from)}",
            f"        smarthost: {_quoted(receivers.smarthost)}",
            # a local relay on port 25 rarely offers STARTTLS; anything else must
            f"        require_tls: {'false' if local else 'true'}",
            "        send_resolved: true",
        ]
    return "\n".join(lines) + "\n"


def override_yaml(receivers: Receivers) -> str:
    """A compose override handing Alertmanager the receivers' secrets from .env as files."""
    names = sorted(receivers.secrets)
    lines = [
        "# Written by `traintel stack init`: Alertmanager reads the alert receivers' URLs from",
        f"# files in {SECRETS_DIR}/, which compose makes from the variables in .env (so that",
        "# alertmanager.yml holds no secret). Compose reads this file with docker-compose.yml.",
        "services:",
        "  alertmanager:",
        "    secrets:",
        *(f"      - {name}" for name in names),
        "secrets:",
    ]
    for name in names:
        lines += [f"  {name}:", f"    environment: {name.upper()}"]
    return "\n".join(lines) + "\n"


def _quoted(value: str) -> str:
    """A YAML double-quoted scalar (an address may hold characters YAML reads otherwise)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def with_receivers(alertmanager_yml: str, receivers: Receivers) -> str:
    """alertmanager.yml with its ``receivers:`` section (the file's last) replaced."""
    head, found, _ = alertmanager_yml.partition("\nreceivers:\n")
    if not found:
        raise StackFilesError("alertmanager.yml has no top-level `receivers:` section to fill in")
    return head + "\n" + receiver_yaml(receivers)


@dataclass(frozen=True)
class InitResult:
    directory: Path
    written: list[str]
    unchanged: list[str]
    #: the generated Grafana admin password (None when an existing .env was kept)
    password: str | None


def init(directory: Path, *, force: bool = False, receivers: Receivers = Receivers()) -> InitResult:
    """Write a compose project into ``directory``: :data:`PROJECT`, a ``.env`` and a unit.

    With ``receivers``, alertmanager.yml's ``team`` receiver sends there; the secret URLs go
    into ``.env`` (added to an existing one) and :data:`OVERRIDE` hands them to Alertmanager.

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
    if receivers:
        rel = "alertmanager/alertmanager.yml"
        planned[rel] = with_receivers(planned[rel].decode(), receivers).encode()
        if receivers.secrets:
            planned[OVERRIDE] = override_yaml(receivers).encode()
    if not (directory / ".gitignore").exists():  # .env holds passwords; never replace the user's
        planned[".gitignore"] = b"# written by `traintel stack init`: .env holds passwords\n.env\n"
    _refuse_conflicts(directory, planned, force)
    links = [rel for rel in [*planned, ".env"] if (directory / rel).is_symlink()]
    if (
        links
    ):  # a dangling one would be written through, outside DIR; .env's would hold the password
        raise StackFilesError(
            f"{directory} has symbolic links where traintel writes files ({', '.join(links)}): "
            "traintel stack init does not write through links; remove them, or init another "
            "directory"
        )
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
    if receivers.secrets:
        set_env(env_file, {name.upper(): value for name, value in receivers.secrets.items()})
        if ".env" not in written:
            written.append(".env")
    return InitResult(directory, written, unchanged, password)


def set_env(path: Path, values: dict[str, str]) -> None:
    """Set ``values`` in the .env file ``path`` (replacing their lines, keeping the others),
    readable by its owner only."""
    lines = path.read_text().splitlines()
    for key, value in values.items():
        if "\n" in value or "\r" in value:
            raise StackFilesError(f"{key}: a value for .env cannot span lines")
        line = f"{key}={value}"
        index = next((i for i, old in enumerate(lines) if old.startswith(f"{key}=")), None)
        if index is None:
            lines.append(line)
        else:
            lines[index] = line
    descriptor = os.open(path, os.O_WRONLY | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write("\n".join(lines) + "\n")


def read_env(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env file, as compose reads the simple ones (no interpolation)."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            found[key.strip()] = value.strip().strip("'\"")
    return found


def init_chart(directory: Path, *, force: bool = False) -> InitResult:
    """Write the Helm chart (:data:`CHART`) into ``directory``, ready for ``helm install NAME
    DIR`` or ``helm package DIR``: the chart is self-contained (its rules, dashboards and
    collector pipeline are generated files inside it), so this is a plain copy. A file that exists
    with other content is an error naming it, unless ``force``."""
    source = root() / CHART
    if not (source / "Chart.yaml").is_file():
        raise StackFilesError(f"traintel's Helm chart is missing from {source}: reinstall traintel")
    directory = directory.resolve()
    planned = {
        str(path.relative_to(source)): path.read_bytes()
        for path in sorted(source.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }
    _refuse_conflicts(directory, planned, force)
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


def _refuse_conflicts(directory: Path, planned: dict[str, bytes], force: bool) -> None:
    """A file ``init`` would write that exists with other content (the user's edit) is kept:
    an error naming each, unless ``force``."""
    conflicts = [
        rel
        for rel, content in planned.items()
        if (directory / rel).is_file() and (directory / rel).read_bytes() != content
    ]
    if conflicts and not force:
        raise StackFilesError(
            f"{directory} already has other versions of {', '.join(conflicts)}: keep your "
            "changes, or pass --force to replace them with this traintel's"
        )


def env_text(example: str, password: str) -> str:
    """``.env.example`` with the Grafana admin password filled in."""
    text, count = re.subn(
        r"(?m)^GRAFANA_ADMIN_PASSWORD=.*$", f"GRAFANA_ADMIN_PASSWORD={password}", example
    )
    if count != 1:
        raise StackFilesError(".env.example has no GRAFANA_ADMIN_PASSWORD= line to fill in")
    return (
        "# Written by `traintel stack init` with a generated password; keep this file private "
        "(mode 600).\n" + text
    )


def systemd_unit(template: str, directory: Path) -> str:
    """The example unit, pointed at this project and this installation's interpreter: it runs
    ``python -m traintel stack up --foreground --configs DIR`` from ``directory``."""
    if any(c in str(directory) for c in "\n\r"):
        raise StackFilesError(
            f"{str(directory)!r} has a line break in its name: a systemd unit "
            "cannot name it; init another directory"
        )
    command = " ".join(
        [
            _exec_arg(sys.executable),
            "-m",
            "traintel",
            "stack",
            "up",
            "--foreground",
            "--configs",
            _exec_arg(str(directory)),
            "--run-dir",
            "%h/.local/state/traintel/stack",
        ]
    )
    working = str(directory).replace("%", "%%")  # the whole value is the path: no quoting
    text = re.sub(r"(?m)^WorkingDirectory=.*$", lambda _: f"WorkingDirectory={working}", template)
    # the project's .env (Grafana's password, the alert receivers' URLs), as compose reads it
    text = re.sub(r"(?m)^EnvironmentFile=.*$", lambda _: f"EnvironmentFile=-{working}/.env", text)
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
