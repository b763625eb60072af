"""The demo training run: a small PyTorch MLP on synthetic data, fully instrumented.

It is the README's first command and the end-to-end tests' workload, so it exercises every
feature: progress, per-step metrics, eval with best tracking, spans, events, custom instruments,
checkpoints, and (on request) a stall or a non-finite loss for the alert tests.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlparse

import traintel
from traintel.core import env


@dataclass
class DemoConfig:
    epochs: int = 3
    steps_per_epoch: int = 100
    batch_size: int = 64
    lr: float = 3e-3
    hidden: int = 128
    seed: int = 0
    #: sleep this long at step ``pause_at_step`` (to exercise the stalled-run alert)
    pause_at_step: int | None = None
    pause_s: float = 0.0
    #: inject a NaN loss at this step (to exercise the non-finite loss path)
    nan_at_step: int | None = None
    #: sleep this long every step (to simulate a slow rank or a slower model)
    step_sleep_s: float = 0.0
    #: at this step, a corrupt sample is caught, recorded as a data error and skipped
    error_at_step: int | None = None
    #: spread the steps evenly over about this many seconds (0: as fast as the CPU goes); with
    #: a collector listening, `traintel demo` paces 300 steps over two minutes, so that every
    #: dashboard panel gets several exports' worth of points instead of one
    duration_s: float = 0.0


def collector_endpoint() -> str:
    """The collector the demo exports to: ``OTEL_EXPORTER_OTLP_ENDPOINT``, else a running native
    stack's (``traintel stack up`` records its ports), else compose's."""
    from traintel.core import discovery

    return discovery.endpoint("otlp_http", env.OTEL_EXPORTER_OTLP_ENDPOINT.get())


def stack_urls(endpoint: str) -> dict[str, str]:
    """Prometheus's, Alertmanager's and Grafana's URLs for the stack behind ``endpoint``:
    ``TRAINTEL_PROMETHEUS_URL`` / ``TRAINTEL_ALERTMANAGER_URL`` / ``TRAINTEL_GRAFANA_URL``, else
    the running native stack's when ``endpoint`` is its collector, else compose's."""
    from traintel.core import discovery

    given = {
        "prometheus": env.TRAINTEL_PROMETHEUS_URL.get(),
        "alertmanager": env.TRAINTEL_ALERTMANAGER_URL.get(),
        "grafana": env.TRAINTEL_GRAFANA_URL.get(),
    }
    native = discovery.running() or {}
    ours = _host_port(native.get("otlp_http", "")) == _host_port(endpoint)
    return {
        name: value or (native.get(name) if ours else None) or discovery.COMPOSE[name]
        for name, value in given.items()
    }


def without_prometheus_ui(endpoint: str) -> bool:
    """Whether ``endpoint`` is the collector of a running native stack (``traintel stack up``)
    whose Prometheus serves its API but no web UI (``stack install`` could not build it)."""
    from traintel.core import discovery

    native = discovery.running() or {}
    return (
        bool(native)
        and _host_port(native.get("otlp_http", "")) == _host_port(endpoint)
        and not discovery.web_ui("prometheus")
    )


def _host_port(url: str) -> tuple[str, int | None]:
    parsed = urlparse(url)
    host = parsed.hostname or ""
    return ("127.0.0.1" if host == "localhost" else host), parsed.port


def collector_listening(endpoint: str, timeout: float = 0.5) -> bool:
    import socket

    parsed = urlparse(endpoint)
    try:
        with socket.create_connection(
            (parsed.hostname or "localhost", parsed.port or 4318), timeout=timeout
        ):
            return True
    except OSError:
        return False


class Pace:
    """Spreads ``steps`` steps over ``duration_s`` seconds: ``wait()`` after each step sleeps
    until that step's share of the time is over (never to catch up: a slow step is not followed
    by a burst)."""

    def __init__(self, duration_s: float, steps: int) -> None:
        self.interval = duration_s / steps if duration_s > 0 and steps > 0 else 0.0
        self.next = time.monotonic() + self.interval

    def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        if now < self.next:
            time.sleep(self.next - now)
        self.next = max(self.next, now) + self.interval


def train(
    cfg: DemoConfig, on_start: Callable[[str], None] | None = None, **init_options: Any
) -> traintel.Run:
    """The demo's training; ``on_start`` gets the live page's address (with ``http_port``)."""
    import torch
    from torch import nn

    torch.manual_seed(cfg.seed)
    features, classes = 32, 4
    weights = torch.randn(features, classes)
    data_x = torch.randn(cfg.steps_per_epoch * cfg.batch_size, features)
    data_y = (data_x @ weights).argmax(dim=1)
    val_x = torch.randn(512, features)
    val_y = (val_x @ weights).argmax(dim=1)
    dataset = torch.utils.data.TensorDataset(data_x, data_y)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True)
    model = nn.Sequential(
        nn.Linear(features, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, classes)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * len(loader)
    )
    loss_fn = nn.CrossEntropyLoss()
    options = {
        "project": "demo",
        "name": "mlp-synthetic",
        "total_epochs": cfg.epochs,
        **init_options,
    }
    # the checkpoints are the demo's own: removed when it ends (a demo leaves only its record)
    with (
        tempfile.TemporaryDirectory(prefix="traintel-demo-ckpt-") as checkpoint_dir,
        traintel.init(config=asdict(cfg), **options) as run,
    ):
        if on_start is not None and run.server is not None:
            on_start(run.server.url)
        data_log = run.logger("data")
        data_log.info(
            "synthetic dataset: %d samples, %d features, %d classes",
            len(dataset),
            features,
            classes,
        )
        forward = run.timer("forward_backward")
        pace = Pace(cfg.duration_s, cfg.epochs * len(loader))
        for epoch in run.epochs():
            model.train()
            for x, y in run.track(loader):
                with forward:
                    logits = model(x)
                    loss = loss_fn(logits, y)
                    optimizer.zero_grad()
                    loss.backward()
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                    optimizer.step()
                scheduler.step()
                step = run.state.step + 1
                if cfg.error_at_step == step:
                    try:
                        raise ValueError(f"corrupt sample in batch {step}: cannot decode record")
                    except ValueError as exc:
                        run.error(exc, operation="data_loading", context={"batch": step})
                if cfg.nan_at_step == step:
                    loss = torch.tensor(float("nan"))
                if cfg.pause_at_step == step and cfg.pause_s:
                    run.logger("model").warning(
                        "pausing %.0fs at step %d (demo stall)", cfg.pause_s, step
                    )
                    time.sleep(cfg.pause_s)
                if cfg.step_sleep_s:
                    time.sleep(cfg.step_sleep_s)
                pace.wait()
                run.log(
                    loss=loss,
                    lr=scheduler.get_last_lr()[0],
                    grad_norm=grad_norm,
                    samples=len(x),
                    tokens=len(x) * features,
                    batch_accuracy=(logits.argmax(dim=1) == y).float().mean(),
                )
            with run.span("eval", epoch=epoch):
                model.eval()
                with torch.no_grad():
                    logits = model(val_x)
                    val_loss = loss_fn(logits, val_y).item()
                    accuracy = (logits.argmax(dim=1) == val_y).float().mean().item()
            best = run.log_eval(val_loss=val_loss, accuracy=accuracy)
            if best["val_loss"]:
                with run.span("checkpoint", epoch=epoch):
                    path = os.path.join(checkpoint_dir, "best.pt")
                    torch.save(model.state_dict(), path)
                run.event("checkpoint", path=path, epoch=epoch, val_loss=val_loss)
    return run
