"""What every benchmark shares: the registry entry, the machine's load, interleaved rounds,
statistics, child processes, and stand-ins for the world outside the training process.

Noise is the enemy on a shared machine, so cases never run one after the other in blocks: each
round runs every case once, the order rotated each round (``interleaved``), and results are
medians and ratios. Work that must not share the benchmarked interpreter (a collector, a
scraper, a run whose exporter threads would outlive it) runs in another process.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: how long the slow stand-in collector waits before answering each export
SLOW_S = 2.0
SINK = "a fast local OTLP sink (stdlib http.server in a child process answering 200 at once)"


@dataclass
class Benchmark:
    name: str
    title: str
    #: keyword arguments of ``run`` for each size: "full", "quick" and "tiny" (smoke tests)
    profiles: dict[str, dict[str, Any]]
    run: Callable[..., dict[str, Any]]
    #: Markdown lines for SUMMARY.md from a result
    render: Callable[[dict[str, Any]], list[str]]
    #: a missed target fails ``python -m benchmarks`` (exit status 1): for figures measured
    #: against a control in the same run, whose noise the target already allows for
    gate: bool = False


class Skipped(Exception):
    """A benchmark cannot run on this machine; the message says why."""


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg": loadavg(),
    }


def interleaved(names: Iterable[str], rounds: int) -> Iterator[tuple[int, str]]:
    """Every name once per round, the order rotated each round so that no case always runs first
    or always after the same neighbour."""
    names = list(names)
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            yield r, name


def quantile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spread(values: Iterable[float]) -> dict[str, float]:
    values = list(values)
    return {
        "median": quantile(values, 0.5),
        "p25": quantile(values, 0.25),
        "p75": quantile(values, 0.75),
        "min": min(values),
        "max": max(values),
    }


def target(description: str, measured: float, met: bool) -> dict[str, Any]:
    return {"target": description, "measured": round(measured, 3), "met": bool(met)}


def step_values(i: int) -> dict[str, float | int]:
    """The 8 metrics every benchmark logs per step: 5 that traintel knows and 3 user keys.
    New float objects each call, as a training loop produces."""
    return {
        "loss": 2.0 / (1.0 + i * 1e-3),
        "lr": 3e-4,
        "grad_norm": 1.0 + (i % 7) * 0.1,
        "samples": 32,
        "tokens": 32 * 512,
        "accuracy": i % 100 / 100.0,
        "aux_loss": 0.01 * (i % 13),
        "clip_frac": (i % 11) / 11.0,
    }


def traintel_run(directory: Path | str, **options: Any):
    """A traintel run as the benchmarks use it: no progress display, no console logging."""
    import traintel

    return traintel.init(
        project="bench",
        name="bench",
        progress="off",
        console_logs=False,
        dir=str(directory),
        **options,
    )


@contextmanager
def environment(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def otlp_env(endpoint: str, export_interval_ms: int | None) -> dict[str, str]:
    """OTLP to ``endpoint``; metrics and spans exported every ``export_interval_ms`` (None: the
    defaults)."""
    if export_interval_ms is None:
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": str(export_interval_ms),
        "OTEL_BSP_SCHEDULE_DELAY": str(export_interval_ms),
    }


def in_child(
    function: str, env: dict[str, str] | None = None, timeout: float = 600.0, **kwargs: Any
) -> dict[str, Any]:
    """``module:function(**kwargs)`` in a fresh interpreter (its own SDK state and threads).

    Returns what the function returned, plus ``exited_at``: ``time.monotonic()`` here when the
    child had exited (the monotonic clock is shared by processes on Linux)."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.child", function, json.dumps(kwargs)],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    exited_at = time.monotonic()
    if proc.returncode != 0:
        raise RuntimeError(f"{function} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "exited_at": exited_at}


@contextmanager
def collector(kind: str) -> Iterator[tuple[str, str]]:
    """An OTLP/HTTP endpoint and what stands behind it, for as long as the block runs:

    - ``unreachable``: a port bound but never listening (every connection refused at once);
    - ``slow``: a stand-in for a slow collector that answers each export after ``SLOW_S``;
    - ``blackhole``: a port that accepts connections (the kernel's backlog) and never reads nor
      answers: every export waits for its timeout;
    - ``sink``: a fast local sink that answers at once;
    - ``healthy``: the native stack's collector when it is built, else the sink.
    """
    with ExitStack() as stack:
        if kind == "unreachable":
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            yield (
                f"http://127.0.0.1:{sock.getsockname()[1]}",
                "a closed port (bound, never listening: connections refused)",
            )
        elif kind == "blackhole":
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            sock.listen(4096)
            yield (
                f"http://127.0.0.1:{sock.getsockname()[1]}",
                "a black hole (listening, never accepting nor answering: exports time out)",
            )
        elif kind == "slow":
            yield (
                _sink(stack, SLOW_S),
                f"stand-in for a slow collector: stdlib http.server in a child process that "
                f"reads each OTLP POST and answers 200 after {SLOW_S:g} s",
            )
        elif kind == "sink":
            yield _sink(stack, 0.0), SINK
        elif kind == "healthy":
            yield _healthy(stack)
        else:
            raise ValueError(f"unknown collector kind {kind!r}")


@contextmanager
def scraper(url: str, every_s: float) -> Iterator[None]:
    """GET ``url`` every ``every_s`` seconds from another process, as Prometheus would."""
    with ExitStack() as stack:
        _spawn(stack, "scrape", url, "--every", str(every_s))
        yield


def _healthy(stack: ExitStack) -> tuple[str, str]:
    from traintel.stack.native import StackError

    try:
        return _native_collector(stack), "the native stack's OpenTelemetry Collector"
    except StackError as error:
        reason = str(error).split(":")[0]  # "otelcol 0.159.0 is not available", ...
        return _sink(stack, 0.0), f"{SINK}, standing in for the real collector ({reason})"


def _native_collector(stack: ExitStack) -> str:
    from traintel.stack import install, native

    reason = install.missing_reason("otelcol")
    if reason:
        raise native.StackError(reason)
    running = native.NativeStack(
        Path(stack.enter_context(tempfile.TemporaryDirectory())), ports=native.free_ports()
    )
    stack.callback(running.down)
    running.up(names=("otelcol",))
    return running.endpoints["otlp_http"]


def _sink(stack: ExitStack, delay_s: float) -> str:
    proc = _spawn(stack, "sink", "--delay", str(delay_s))
    return f"http://127.0.0.1:{int(proc.stdout.readline())}"


def _spawn(stack: ExitStack, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.outside", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    stack.callback(_end, proc)
    return proc


def _end(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(10)
    proc.stdout.close()
