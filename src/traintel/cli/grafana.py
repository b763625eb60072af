"""``traintel grafana push``: traintel's dashboards and data sources into a running Grafana."""

from __future__ import annotations

import click

from traintel.core import env

#: data source uid -> the variable (and its default) of its URL when no option gives one
_URLS = {
    "prometheus": env.TRAINTEL_PROMETHEUS_URL,
    "loki": env.TRAINTEL_LOKI_URL,
    "tempo": env.TRAINTEL_TEMPO_URL,
}


@click.group()
def grafana() -> None:
    """Work with a Grafana you already run (token in GRAFANA_TOKEN)."""


@grafana.command()
@click.option(
    "--url",
    default=None,
    help="Grafana's URL [$GRAFANA_URL]; the service account token is read from "
    "GRAFANA_TOKEN, never from a flag",
)
@click.option(
    "--prometheus-url",
    default=None,
    help="Prometheus as Grafana reaches it [$TRAINTEL_PROMETHEUS_URL or http://127.0.0.1:9090]",
)
@click.option(
    "--loki-url",
    default=None,
    help="Loki as Grafana reaches it [$TRAINTEL_LOKI_URL or http://127.0.0.1:3100]",
)
@click.option(
    "--tempo-url",
    default=None,
    help="Tempo as Grafana reaches it [$TRAINTEL_TEMPO_URL or http://127.0.0.1:3200]",
)
def push(
    url: str | None, prometheus_url: str | None, loki_url: str | None, tempo_url: str | None
) -> None:
    """Import traintel's dashboards into the folder "traintel" and create or update the data
    sources they need (Prometheus, Loki, Tempo, with the uids the dashboards use). Run it again
    after an upgrade: only what differs is changed."""
    from traintel.export import grafana as pushing
    from traintel.stack import project

    target = url or env.GRAFANA_URL.get()
    if not target:
        raise click.UsageError("give --url or set GRAFANA_URL")
    given = {"prometheus": prometheus_url, "loki": loki_url, "tempo": tempo_url}
    root = project.root()
    dashboards = pushing.load_dashboards(root / "grafana/dashboards")
    sources = pushing.datasources_needed(
        dashboards,
        pushing.load_datasources(root / "grafana/provisioning/datasources/datasources.yaml"),
    )
    bodies = []
    for source in sources:
        variable = _URLS[source["uid"]]
        bodies.append(
            pushing.datasource_body(
                source, given.get(source["uid"]) or variable.get() or str(variable.default)
            )
        )
    from traintel.core.redact import Redactor

    redactor = Redactor.for_environment()
    try:
        api = pushing.connect(target)
        result = pushing.push(
            api, dashboards, bodies, say=lambda line: click.echo(redactor.text(line))
        )
    except pushing.GrafanaError as error:
        raise click.ClickException(str(error)) from None
    except Exception as error:  # grafana-client's and the HTTP library's errors
        raise click.ClickException(redactor.text(_explain(target, error))) from None
    click.echo(
        redactor.text(
            f"traintel grafana: {len(result.created)} created, {len(result.updated)} updated, "
            f"{len(result.unchanged)} unchanged at {target} (folder traintel)"
        )
    )


def _explain(url: str, error: Exception) -> str:
    status = getattr(error, "status_code", None)
    if status == 401:
        return (
            f"Grafana at {url} refused the token (401 Unauthorized): set GRAFANA_TOKEN to a "
            "valid service account token"
        )
    if status == 403:
        return (
            f"Grafana at {url} says the token may not do this (403 Forbidden): its service "
            "account needs the Editor role for dashboards and Admin for data sources"
        )
    if status is not None:
        return f"Grafana at {url} answered {status}: {getattr(error, 'message', error)}"
    return f"cannot reach Grafana at {url}: {type(error).__name__}: {error}"
