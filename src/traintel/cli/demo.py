"""`traintel demo`: the instrumented demo training run."""

from __future__ import annotations

import click

from traintel.core import extras

#: how long the demo runs by default when a collector listens: long enough for several metric
#: exports (every 15 s), so that every dashboard panel has points and rates
DEFAULT_DURATION_S = 120.0


@click.command()
@click.option("--epochs", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--steps-per-epoch", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    default=None,
    help="Spread the steps over about this many seconds [120 with a collector "
    "listening, so the dashboards fill; 0 without one]. 0: as fast as possible.",
)
@click.option("--dir", "run_dir", default=None, help="Where run records go [./traintel-runs].")
@click.option("--project", default="demo", show_default=True)
@click.option("--name", default="mlp-synthetic", show_default=True)
@click.option("--pause-at-step", type=int, default=None, help="Stall once at this step.")
@click.option("--pause-seconds", type=float, default=0.0, help="How long the stall lasts.")
@click.option("--nan-at-step", type=int, default=None, help="Inject a NaN loss at this step.")
@click.option("--step-sleep", type=float, default=0.0, help="Extra seconds per step.")
@click.option(
    "--error-at-step",
    type=int,
    default=None,
    help="Record (and survive) a corrupt-sample data error at this step.",
)
@click.option(
    "--http-port",
    type=int,
    default=0,
    show_default=True,
    help="Serve the live page (and /metrics, /status, /events) on 127.0.0.1:PORT "
    "(0: any free port; -1: none).",
)
@click.option("--sample-interval", type=float, default=5.0, show_default=True)
def demo(
    epochs: int,
    steps_per_epoch: int,
    batch_size: int,
    duration: float | None,
    run_dir: str | None,
    project: str,
    name: str,
    pause_at_step: int | None,
    pause_seconds: float,
    nan_at_step: int | None,
    step_sleep: float,
    error_at_step: int | None,
    http_port: int,
    sample_interval: float,
) -> None:
    """Train a small PyTorch model on synthetic data with traintel on.

    Leaves a complete run record under ./traintel-runs/ and exports to the OpenTelemetry
    collector at $OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4318) when one listens;
    then it paces its steps over about two minutes and says where to watch them.
    """
    extras.require("traintel demo", "torch")
    from rich.console import Console

    from traintel.core.redact import Redactor
    from traintel.demo import (
        DemoConfig,
        collector_endpoint,
        collector_listening,
        stack_urls,
        train,
        without_prometheus_ui,
    )

    console = Console(stderr=True)
    endpoint = collector_endpoint()
    exporting = collector_listening(endpoint)
    if duration is None:
        duration = DEFAULT_DURATION_S if exporting else 0.0
    urls = stack_urls(endpoint)
    grafana = exporting and _serves_grafana(urls["grafana"])
    endpoint_url = endpoint
    endpoint = Redactor.for_environment().text(endpoint)  # it may carry credentials
    if exporting:
        console.print(
            f"[green]collector listening at {endpoint}: exporting metrics, logs "
            f"and traces over about {duration:.0f}s (--duration to change)[/green]"
        )
        if grafana:  # a native stack serves no Grafana: no link to a page that is not there
            console.print(
                f"dashboards: {urls['grafana']}/d/traintel-training-overview", soft_wrap=True
            )
        # a native stack's Prometheus without its web UI (traintel stack up says why): its API
        prometheus = (
            f"{urls['prometheus']}/api/v1/query?query=traintel_loss"
            if without_prometheus_ui(endpoint_url)
            else f"{urls['prometheus']}/query?g0.expr=traintel_loss"
        )
        console.print(f"Prometheus: {prometheus}", soft_wrap=True)
    else:
        console.print(
            f"[yellow]no collector at {endpoint}: local record only (start the "
            "stack with `traintel stack init` and `docker compose up -d`, or "
            "`traintel stack up`)[/yellow]"
        )
    cfg = DemoConfig(
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        batch_size=batch_size,
        pause_at_step=pause_at_step,
        pause_s=pause_seconds,
        nan_at_step=nan_at_step,
        step_sleep_s=step_sleep,
        error_at_step=error_at_step,
        duration_s=duration,
    )
    # nothing to export to: no export threads, retries or shutdown wait in a one-second demo
    options = {
        "project": project,
        "name": name,
        "sample_interval": sample_interval,
        "otlp": None if exporting else False,
    }
    if run_dir:
        options["dir"] = run_dir
    if http_port >= 0:
        options["http_port"] = http_port
    run = train(cfg, on_start=lambda url: console.print(f"live page: {url}"), **options)
    summary = run.summary
    if summary is None:  # the run ended without its summary: the record says why
        raise click.ClickException(f"the demo run ended without a summary; see {run.dir}")
    console.print(
        f"[bold]run {run.id}[/bold] {summary['status']}: {summary['steps']} steps, "
        f"final loss {summary['loss']['final']:.4f}, best val_loss "
        f"{summary['eval']['val_loss']['best']:.4f}, "
        f"{summary['throughput']['samples_per_s']:.0f} samples/s"
    )
    console.print(f"record: {run.dir}  (try `traintel logs summary {run.dir}`)")
    if grafana:
        console.print(
            f"dashboards: {urls['grafana']}/d/traintel-training-overview"
            f"?var-project={project}&var-run={run.id}",
            soft_wrap=True,
        )


def _serves_grafana(url: str) -> bool:
    """Whether a Grafana answers at ``url`` (its /api/health), within a second."""
    from traintel.reports.doctor import fetch

    try:
        return fetch(f"{url.rstrip('/')}/api/health", timeout=1.0).status == 200
    except OSError:
        return False
