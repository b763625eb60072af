"""``traintel stack init|install|up|down|status``: the observability stack, with or without Docker.

``init`` writes a ready compose project (traintel.stack.project); ``install`` builds the programs once
into ~/.cache/traintel/bin (traintel.stack.install); ``up`` starts them natively on 127.0.0.1 with
the installed traintel's configs, or those of an ``init`` directory (traintel.stack.native).
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import click

from traintel.stack import install as installer
from traintel.stack import project
from traintel.stack.components import COMPONENTS
from traintel.stack.native import (
    ORDER,
    NativeStack,
    StackError,
    default_ports,
    default_run_dir,
    free_ports,
)

#: what ``up`` says of the web UIs natively (docs/native-stack.md)
NO_UI = (
    "note: natively, {which} {verb} {their} API but no web UI ({why}): see alerts with "
    "`traintel status` or `traintel stack status`{query}"
)
WHY_NO_UI = {
    "prometheus": "`traintel stack install` could not build it from its sources: see its log",
    "alertmanager": "its UI is Elm: the compiler is on npm, but Elm's packages come only from "
    "package.elm-lang.org and GitHub, out of reach here",
}

_RUN_DIR = click.option(
    "--run-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="configs, data, logs, pid files (default: $TRAINTEL_STACK_DIR or ~/.cache/traintel/stack)",
)


@click.group()
def stack() -> None:
    """The observability stack: `init` writes a compose project for `docker compose up -d`;
    without Docker, `install` builds and `up` runs the collector, Prometheus and Alertmanager
    natively (and Loki, Tempo and Grafana from binaries you supply: TRAINTEL_LOKI_BIN,
    TRAINTEL_TEMPO_BIN, TRAINTEL_GRAFANA_BIN or on PATH)."""


@stack.command()
@click.argument(
    "directory", type=click.Path(path_type=Path, file_okay=False), default="traintel-stack"
)
@click.option(
    "--force", is_flag=True, help="replace files you changed (an existing .env is always kept)"
)
@click.option(
    "--slack-webhook",
    metavar="URL",
    help="send alerts to this Slack incoming webhook (kept in .env, not the YAML)",
)
@click.option(
    "--webhook",
    metavar="URL",
    help="send alerts to your endpoint as Alertmanager's JSON webhook (kept in .env)",
)
@click.option("--email", metavar="ADDR", help="send alerts to this address")
@click.option(
    "--smtp-smarthost",
    default="localhost:25",
    show_default=True,
    metavar="HOST:PORT",
    help="the mail relay for --email",
)
@click.option(
    "--email-from",
    default="traintel-alertmanager@localhost",
    show_default=True,
    metavar="ADDR",
    help="the sender for --email",
)
@click.option(
    "--helm",
    "helm",
    is_flag=True,
    help="write the Helm chart for Kubernetes into DIRECTORY instead (docs/kubernetes.md)",
)
def init(
    directory: Path,
    force: bool,
    slack_webhook: str | None,
    webhook: str | None,
    email: str | None,
    smtp_smarthost: str,
    email_from: str,
    helm: bool,
) -> None:
    """Write a ready compose project into DIRECTORY (default ./traintel-stack): the compose file,
    every config, the alert rules and their tests, the dashboards and Grafana's provisioning, a
    systemd unit for the native stack, and a .env with a generated Grafana admin password.

    Alerts go nowhere until a receiver is set: --slack-webhook, --webhook and --email write
    Alertmanager's `team` receiver (URLs go into .env; compose and `stack up` hand them to
    Alertmanager as files). With --helm, write traintel's Helm chart there instead."""
    if helm:
        try:
            chart = project.init_chart(directory, force=force)
        except project.StackFilesError as error:
            raise click.ClickException(str(error)) from None
        click.echo(
            f"traintel stack: Helm chart written to {chart.directory} "
            f"({len(chart.written)} files"
            + (f", {len(chart.unchanged)} already up to date" if chart.unchanged else "")
            + ")"
        )
        click.echo(
            f"next: helm install traintel {chart.directory} --namespace observability "
            "--create-namespace (docs/kubernetes.md)"
        )
        return
    for url in (slack_webhook, webhook):
        if url is not None and not url.startswith(("https://", "http://")):
            raise click.BadParameter(f"{url!r} is not an http(s) URL")
    receivers = project.Receivers(
        slack_webhook=slack_webhook,
        webhook=webhook,
        email=email,
        smarthost=smtp_smarthost,
        email_from=email_from,
    )
    try:
        result = project.init(directory, force=force, receivers=receivers)
    except project.StackFilesError as error:
        raise click.ClickException(str(error)) from None
    where = result.directory
    click.echo(
        f"traintel stack: {len(result.written)} files written to {where}"
        + (f" ({len(result.unchanged)} already up to date)" if result.unchanged else "")
    )
    if result.password is not None:
        click.echo(
            f"Grafana admin password (shown once; it is in {where / '.env'}): {result.password}"
        )
    else:
        click.echo(f"kept the existing {where / '.env'} (and its Grafana password)")
    if receivers:
        sent = [
            what
            for what, given in (
                ("Slack", slack_webhook),
                ("your webhook", webhook),
                (f"e-mail to {email}", email),
            )
            if given
        ]
        click.echo(
            f"alerts go to {', '.join(sent)} (alertmanager/alertmanager.yml; "
            f"URLs in {where / '.env'})"
        )
    else:
        click.echo(
            "alerts reach no one yet: pass --slack-webhook, --webhook or --email (or "
            "edit alertmanager/alertmanager.yml); `traintel status` shows what fires"
        )
    click.echo(
        f"next: cd {where} && docker compose up -d\n"
        f"without Docker: traintel stack install && traintel stack up --configs {where}"
    )


@stack.command()
@click.option("--retry", is_flag=True, help="retry optional programs whose build failed before")
@click.option(
    "--only", multiple=True, type=click.Choice(sorted(COMPONENTS)), help="just these programs"
)
def install(retry: bool, only: tuple[str, ...]) -> None:
    """Build the stack's programs (once per version; a warm machine returns at once).

    Exits non-zero only when a required program (collector, Prometheus, Alertmanager) is
    missing. Loki, Tempo and Grafana are AGPL-licensed and never built: a binary you supply is
    used (its version recorded), otherwise they are skipped with the reason and how to get them.
    Also installs the LogQL grammar the tests parse queries with (npm)."""
    status = installer.install(
        list(only) or None, retry=retry, say=lambda line: click.echo(line, err=True)
    )
    ready = [f"{e['name']} {e['version']}" for e in status.values() if e["ok"]]
    missing = [e for e in status.values() if not e["ok"] and (not only or e["name"] in only)]
    line = "traintel stack: ready: " + ", ".join(ready)
    if missing:
        line += "; unavailable: " + ", ".join(f"{e['name']} {e['version']}" for e in missing)
        line += f" (reasons in {installer.status_path()})"
    click.echo(line, err=True)
    failed = [e for e in missing if e["required"]]
    for entry in failed:
        click.echo(
            f"traintel stack: required program {entry['name']} failed:\n{entry['reason']}", err=True
        )
    sys.exit(1 if failed else 0)


@stack.command()
@_RUN_DIR
@click.option(
    "--configs",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="a `traintel stack init` directory whose configs to run (default: this traintel's own)",
)
@click.option(
    "--free-ports",
    "free_ports_",
    is_flag=True,
    help="any free loopback ports instead of compose's (another stack runs here); "
    "`traintel stack status` lists them",
)
@click.option("--foreground", is_flag=True, help="stay attached; stop everything on SIGTERM/Ctrl-C")
@click.option("--timeout", default=90.0, show_default=True, help="seconds to wait for each program")
def up(
    run_dir: Path | None, configs: Path | None, free_ports_: bool, foreground: bool, timeout: float
) -> None:
    """Start the stack on 127.0.0.1 (compose's ports; Tempo's OTLP ports move up by 10000)."""
    run_dir = run_dir or default_run_dir()
    try:
        native = NativeStack(
            run_dir,
            ports=free_ports() if free_ports_ else default_ports(),
            configs=configs or project.root(),
        )
    except project.StackFilesError as error:
        raise click.ClickException(str(error)) from None
    if (run_dir / "stack.json").exists():  # programs still running keep their ports
        previous = NativeStack.load(run_dir)
        if any(previous.pid(name) for name in ORDER):
            native.ports = previous.ports
    try:
        native.up(timeout=timeout, say=click.echo)
    except StackError as error:
        native.down()
        raise click.ClickException(str(error)) from None
    _started(native)
    without = [
        name
        for name in ("prometheus", "alertmanager")
        if name == "alertmanager" or not native.prometheus_ui
    ]
    click.echo(
        NO_UI.format(
            which=" and ".join(n.capitalize() for n in without),
            verb="serve" if len(without) > 1 else "serves",
            their="their" if len(without) > 1 else "its",
            why="; ".join(f"{n.capitalize()}: {WHY_NO_UI[n]}" for n in without),
            query=(
                ", query Prometheus's /api/v1/query"
                if "prometheus" in without
                else f", or Prometheus's UI at {native.endpoints['prometheus']}/alerts"
            ),
        )
    )
    if not foreground:
        click.echo(f"stop with: traintel stack down --run-dir {native.run_dir}")
        return
    _stay_up(native)


#: which program serves each endpoint `traintel stack up` may print
_SERVED_BY = {
    "otlp_http": "otelcol",
    "otlp_grpc": "otelcol",
    "collector_health": "otelcol",
    "collector_metrics": "otelcol",
    "collector_prometheus_exporter": "otelcol",
    "prometheus": "prometheus",
    "alertmanager": "alertmanager",
    "loki": "loki",
    "tempo": "tempo",
    "tempo_otlp_grpc": "tempo",
    "grafana": "grafana",
}

#: the natively built Prometheus and Alertmanager carry no web UI (/ answers 500 and 404): their
#: HTTP APIs are what a reader can open
_API = {
    "prometheus": "  (HTTP API: /api/v1/query; no web UI in this build)",
    "alertmanager": "  (HTTP API: /api/v2/alerts; no web UI in this build)",
}


def _started(native: NativeStack) -> None:
    """Only what was started (a program never started serves no page), where traintel's sink
    stands in for Loki or Tempo it says so, and the one variable a training job needs."""
    sink = native.pid("sink") is not None
    for name, url in native.endpoints.items():
        program = _SERVED_BY.get(name, name)
        if native.pid(program):
            api = "" if name == "prometheus" and native.prometheus_ui else _API.get(name, "")
            click.echo(f"  {name:<30} {url}{api}")
        elif sink and program in native.sink_covers:
            click.echo(f"  {name:<30} {url}  (traintel's sink stands in: it keeps what arrives)")
    click.echo(f"export OTEL_EXPORTER_OTLP_ENDPOINT={native.endpoints['otlp_http']}")
    click.echo(
        "a run's curves: traintel.init(http_port=0) serves its live page; "
        "`traintel status --open` says where"
    )


def _stay_up(native: NativeStack) -> None:
    """Block until a signal; exit 1 when a required program dies so a supervisor restarts us."""
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    running = [n for n in native.status() if native.pid(n)]
    while not stopping:
        dead = [n for n in running if not native.pid(n)]
        if any(COMPONENTS[n].required for n in dead):
            click.echo(f"traintel stack: {', '.join(dead)} exited; stopping", err=True)
            native.down()
            sys.exit(1)
        time.sleep(2)
    native.down()


@stack.command()
@_RUN_DIR
def down(run_dir: Path | None) -> None:
    """Stop the programs that `up` started in this run directory (and nothing else)."""
    run_dir = run_dir or default_run_dir()
    if not (run_dir / "stack.json").exists():
        click.echo(f"no stack was started in {run_dir}")
        return
    NativeStack.load(run_dir).down()
    click.echo("stopped")


@stack.command()
@_RUN_DIR
def status(run_dir: Path | None) -> None:
    """Which programs are running and ready, where, and what is not installed."""
    run_dir = run_dir or default_run_dir()
    installed = installer.load_status()
    native = (
        NativeStack.load(run_dir) if (run_dir / "stack.json").exists() else NativeStack(run_dir)
    )
    for name, state in native.status().items():
        why = installer.missing_reason("otelcol" if name == "sink" else name)
        if why:
            click.echo(f"{name:<13} -        {why.splitlines()[0]}")
            continue
        version = installed.get(name, {}).get("version") or "yours"
        up_text = "ready" if state["ready"] else ("starting" if state["pid"] else "down")
        pid = state["pid"] or "-"
        click.echo(f"{name:<13} {up_text:<8} {version:<8} {state['url']}  pid={pid}")
    click.echo(
        "endpoints"
        + (f" (also in {run_dir / 'stack.json'}):" if (run_dir / "stack.json").exists() else ":")
    )
    for name, url in native.endpoints.items():
        click.echo(f"  {name:<30} {url}")
    if native.pid("prometheus") or native.pid("alertmanager"):
        from traintel.stack import alerts

        click.echo("alerts:")
        found = alerts.active(native.endpoints["prometheus"], native.endpoints["alertmanager"])
        for line in alerts.lines(found):
            click.echo(f"  {line}")
