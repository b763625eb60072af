"""The ``traintel`` command line. One module per command group; commands load lazily so that
``traintel logs ...`` on a login node does not pay for importing OpenTelemetry or torch."""

from __future__ import annotations

import importlib
import importlib.util
import logging
from typing import Any

import click

from traintel.core.extras import MissingExtra

#: command name -> "module:attribute" of its click command or group
COMMANDS: dict[str, str] = {
    "demo": "traintel.cli.demo:demo",
    "stack": "traintel.cli.stack:stack",
    "logs": "traintel.cli.logs:logs",
    "doctor": "traintel.cli.doctor:doctor",
    "report": "traintel.cli.report:report",
    "status": "traintel.cli.status:status",
    "debug": "traintel.cli.status:debug",
    "docs": "traintel.cli.docs:docs",
    "grafana": "traintel.cli.grafana:grafana",
    "sync": "traintel.cli.sync:sync",
    "tensorboard": "traintel.cli.tensorboard:tensorboard",
}


class LazyGroup(click.Group):
    """Loads a command's module only when it runs; an optional dependency a command needs and
    does not find ends it with the ``pip install 'traintel[...]'`` that fixes it."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MissingExtra as missing:
            raise click.ClickException(str(missing)) from None
        except click.ClickException as error:  # every command's error: no URL credentials
            # the class keeps its exit code; click's stubs mark message Final, the text is ours
            error.message = _redacted(error.message)  # type: ignore[misc]
            raise

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if _available(name))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name].split(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command


def _redacted(text: str) -> str:
    """A command's error with URL credentials (``user:password@``, a signed query), known secrets
    and secret-shaped values redacted, as everything traintel writes."""
    from traintel.core.redact import Redactor

    return Redactor.for_environment().text(text)


def _available(name: str) -> bool:
    module = COMMANDS[name].split(":")[0]
    return importlib.util.find_spec(module) is not None


class _Notes(logging.Handler):
    """What the record readers have to say (``traintel.record``: which of several runs named
    alike was read) as ``note:`` lines on standard error, not through the logging setup."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"note: {record.getMessage()}", err=True)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="traintel")
def main() -> None:
    """traintel: OpenTelemetry-native observability for ML training."""
    readers = logging.getLogger("traintel.record")
    if not any(isinstance(h, _Notes) for h in readers.handlers):
        readers.addHandler(_Notes(logging.WARNING))
