"""``traintel doctor``: check the collector, the backends, the run directory, GPUs and the clock.

The checks live in :mod:`traintel.reports.doctor`; this module reads options (each with an environment
variable) and prints a pass/warn/fail table or JSON. It exits 1 when any check fails.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import click
import orjson

from traintel.cli.output import table
from traintel.core import discovery, env
from traintel.core.redact import Redactor
from traintel.record.reader import runs_dir
from traintel.reports.doctor import DEFAULTS, Endpoints, as_json, run_checks

_COLOURS = {"pass": "green", "warn": "yellow", "fail": "red"}
FC = TypeVar("FC", bound=Callable[..., object])


def _url(name: str, variable: env.Variable, what: str) -> Callable[[FC], FC]:
    return click.option(
        f"--{name}",
        default=None,
        envvar=variable.name,
        metavar="URL",
        help=f"{what} (env {variable.name}; default: the running native "
        f"stack's, else {DEFAULTS[name]}).",
    )


@click.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="json is for scripts.",
)
@click.option(
    "--collector",
    "collectors",
    multiple=True,
    envvar=env.OTEL_EXPORTER_OTLP_ENDPOINT.name,
    metavar="URL",
    help="OTLP/HTTP endpoint of a collector; repeat for several "
    "(env OTEL_EXPORTER_OTLP_ENDPOINT; default: the running native stack's, "
    f"else {DEFAULTS['collector']}).",
)
@click.option(
    "--collector-health",
    "collector_health",
    multiple=True,
    metavar="URL",
    envvar=env.TRAINTEL_COLLECTOR_HEALTH_URL.name,
    help="health_check extension URL (default: the native stack's when the "
    "collector is its, else each collector's host, port 13133; "
    "env TRAINTEL_COLLECTOR_HEALTH_URL).",
)
@_url("prometheus", env.TRAINTEL_PROMETHEUS_URL, "Prometheus")
@_url("alertmanager", env.TRAINTEL_ALERTMANAGER_URL, "Alertmanager")
@_url("loki", env.TRAINTEL_LOKI_URL, "Loki")
@_url("tempo", env.TRAINTEL_TEMPO_URL, "Tempo")
@_url("grafana", env.TRAINTEL_GRAFANA_URL, "Grafana")
@click.option(
    "--run-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="where runs write their records (default: $TRAINTEL_DIR or ./traintel-runs).",
)
@click.option("--timeout", default=3.0, show_default=True, help="seconds per HTTP check.")
def doctor(
    fmt: str,
    collectors: tuple[str, ...],
    collector_health: tuple[str, ...],
    prometheus: str,
    alertmanager: str,
    loki: str,
    tempo: str,
    grafana: str,
    run_dir: Path | None,
    timeout: float,
) -> None:
    """Is everything a run's telemetry passes through up and sane?

    Required: the collector (OTLP/HTTP and health check), Prometheus (ready and scraping) and
    Alertmanager; Loki, Tempo and Grafana only warn when absent. Also the run directory's
    space and writability, NVIDIA GPUs and the clock against Prometheus's.
    """
    endpoints = discovered(
        collectors,
        collector_health,
        prometheus=prometheus,
        alertmanager=alertmanager,
        loki=loki,
        tempo=tempo,
        grafana=grafana,
    )
    checks = run_checks(replace(endpoints, run_dir=run_dir or runs_dir()), timeout=timeout)
    # the collector's URL may carry credentials (https://user:token@host): redacted, as every exit
    result = Redactor.for_environment().deep(as_json(checks))
    if fmt == "json":
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        tty = sys.stdout.isatty()
        table(
            ["check", "status", "target", "detail"],
            [
                [
                    c["name"],
                    f"[{_COLOURS[c['status']]}]{c['status']}[/]" if tty else c["status"],
                    c["target"],
                    c["detail"],
                ]
                for c in result["checks"]
            ],
        )
        failed = sum(c.status == "fail" for c in checks)
        warned = sum(c.status == "warn" for c in checks)
        click.echo(f"{len(checks) - failed - warned} passed, {warned} warned, {failed} failed")
    sys.exit(0 if result["ok"] else 1)


def discovered(
    collectors: tuple[str, ...], collector_health: tuple[str, ...], **urls: str | None
) -> Endpoints:
    """What the user gave, else the running native stack's endpoints (its stack.json: any ports
    `traintel stack up --free-ports` chose), else compose's. The collector's health URL is the
    stack's own when the collector checked is the stack's (its health port moves with it)."""
    stack = discovery.running() or {}
    collectors = collectors or (stack.get("otlp_http") or DEFAULTS["collector"],)
    if (
        not collector_health
        and stack.get("collector_health")
        and all(_same(c, stack["otlp_http"]) for c in collectors)
    ):
        collector_health = (stack["collector_health"].rstrip("/") + "/",)
    url = {name: given or stack.get(name) or DEFAULTS[name] for name, given in urls.items()}
    return Endpoints(
        collectors=collectors,
        collector_health=collector_health,
        prometheus=url["prometheus"],
        alertmanager=url["alertmanager"],
        loki=url["loki"],
        tempo=url["tempo"],
        grafana=url["grafana"],
    )


def _same(a: str, b: str) -> bool:
    """Whether two URLs name the same host and port (localhost is 127.0.0.1)."""

    def key(url: str) -> tuple[str, int | None]:
        parts = urlsplit(url)
        host = parts.hostname or ""
        return ("127.0.0.1" if host == "localhost" else host), parts.port

    return key(a) == key(b)
