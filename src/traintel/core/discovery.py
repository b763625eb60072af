"""Where a native stack listens: the one place every reader finds it.

``traintel stack up`` writes ``<run dir>/stack.json`` with each program's ports and URLs (and
``--free-ports`` makes them anything). ``doctor``, ``demo``, ``status``, ``sync`` and
``traintel.init`` read it here, so that a stack started with any ports is found without passing
URLs by hand. The order is always the same: a URL the user set (option or environment variable)
wins; then the stack of the run directory (``$TRAINTEL_STACK_DIR``, else
``$TRAINTEL_CACHE/stack``) while its collector is running; then compose's ports.

Only the standard library: ``traintel.init`` reads this on every start (a small JSON file and a
``/proc`` lookup), and a stack that is not running costs one failed ``open``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from traintel.core import env

#: compose's endpoints on this machine: what is used when nothing else says
COMPOSE: dict[str, str] = {
    "otlp_http": "http://127.0.0.1:4318",
    "otlp_grpc": "127.0.0.1:4317",
    "collector_health": "http://127.0.0.1:13133",
    "prometheus": "http://127.0.0.1:9090",
    "alertmanager": "http://127.0.0.1:9093",
    "loki": "http://127.0.0.1:3100",
    "tempo": "http://127.0.0.1:3200",
    "grafana": "http://127.0.0.1:3000",
}


def run_dir() -> Path:
    """The run directory ``traintel stack up`` uses without ``--run-dir``."""
    stack_dir = env.TRAINTEL_STACK_DIR.get()
    if stack_dir:
        return Path(stack_dir).expanduser()
    return Path(env.TRAINTEL_CACHE.get() or "~/.cache/traintel").expanduser() / "stack"


def running(directory: Path | None = None) -> dict[str, str] | None:
    """The endpoints of the native stack started in ``directory`` (default :func:`run_dir`)
    while its collector runs; None when no stack was started there or it was stopped (a
    ``stack.json`` outlives ``stack down``, and its ports may be anyone's by then)."""
    where = Path(directory) if directory is not None else run_dir()
    try:
        state = json.loads((where / "stack.json").read_text())
        endpoints = state["endpoints"]
        pid_text, exe = (where / "otelcol" / "otelcol.pid").read_text().split("\n")[:2]
        pid = int(pid_text)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if cmdline != exe or not isinstance(endpoints, dict):
        return None
    # a program that stack up skipped (no binary: Loki, Tempo, Grafana) listens nowhere there
    skipped = set(state.get("unavailable") or ())
    return {str(k): str(v) for k, v in endpoints.items() if str(k).split("_")[0] not in skipped}


def web_ui(name: str, directory: Path | None = None) -> bool:
    """Whether the running native stack's ``name`` (prometheus, alertmanager) serves its web UI
    (natively Prometheus's only where ``stack install`` built it; Alertmanager's never)."""
    if running(directory) is None:
        return False
    where = Path(directory) if directory is not None else run_dir()
    try:
        return bool(json.loads((where / "stack.json").read_text()).get("ui", {}).get(name))
    except (OSError, ValueError, AttributeError):
        return False


def endpoint(name: str, given: str | None = None, directory: Path | None = None) -> str:
    """The URL of ``name`` (a key of :data:`COMPOSE`): ``given`` (the user's), else the running
    native stack's, else compose's."""
    if given:
        return given
    stack = running(directory)
    return (stack or {}).get(name) or COMPOSE[name]


def otlp_http_base() -> str | None:
    """The running native stack's OTLP/HTTP base URL, for a run or a sync where no
    ``OTEL_EXPORTER_OTLP_*ENDPOINT`` says otherwise; None when none runs."""
    return (running() or {}).get("otlp_http")


def otlp_grpc_endpoint() -> str | None:
    """As :func:`otlp_http_base`, for OTLP/gRPC (``http://`` added: the exporter reads the
    scheme to choose an insecure channel)."""
    found = (running() or {}).get("otlp_grpc")
    return f"http://{found}" if found and "://" not in found else found
