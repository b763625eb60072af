"""``traintel doctor``'s checks: is everything a run's telemetry passes through up and sane?

Each check is a plain function returning :class:`Check` (pass, warn or fail, with a sentence a
user can act on). They use only the standard library, run in parallel, and never raise: an
unreachable service is a result. The collector, Prometheus and Alertmanager are required (a
failure fails the doctor); Loki, Tempo and Grafana are optional, so their absence only warns,
while one that answers but is unhealthy fails.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

#: the compose stack's endpoints on this machine
DEFAULTS: dict[str, str] = {
    "collector": "http://127.0.0.1:4318",
    "prometheus": "http://127.0.0.1:9090",
    "loki": "http://127.0.0.1:3100",
    "tempo": "http://127.0.0.1:3200",
    "alertmanager": "http://127.0.0.1:9093",
    "grafana": "http://127.0.0.1:3000",
}
#: the port of the collector's health_check extension
COLLECTOR_HEALTH_PORT = 13133
#: free space on the run directory's disk below which a check warns / fails
WARN_FREE_BYTES = 1 << 30
FAIL_FREE_BYTES = 100 << 20
#: clock difference to Prometheus (seconds) above which a check warns / fails
WARN_SKEW_S = 2.0
FAIL_SKEW_S = 30.0
_START_HINT = "start the stack with `traintel stack up` or `docker compose up -d`"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "pass", "warn" or "fail"
    detail: str
    target: str = ""


@dataclass(frozen=True)
class Response:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def fetch(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 3.0,
) -> Response:
    """One HTTP request; an error status is a response, an unreachable server raises OSError."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Response(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        return Response(error.code, error.headers, error.read())


@dataclass(frozen=True)
class Endpoints:
    collectors: tuple[str, ...] = (DEFAULTS["collector"],)
    #: collector health_check URLs; empty: each collector's host on port 13133
    collector_health: tuple[str, ...] = ()
    prometheus: str = DEFAULTS["prometheus"]
    loki: str = DEFAULTS["loki"]
    tempo: str = DEFAULTS["tempo"]
    alertmanager: str = DEFAULTS["alertmanager"]
    grafana: str = DEFAULTS["grafana"]
    run_dir: Path = Path("traintel-runs")

    def health_urls(self) -> tuple[str, ...]:
        if self.collector_health:
            return self.collector_health
        return tuple(
            f"{urlsplit(c).scheme or 'http'}://{urlsplit(c).hostname}:{COLLECTOR_HEALTH_PORT}/"
            for c in self.collectors
        )


def run_checks(endpoints: Endpoints, timeout: float = 3.0) -> list[Check]:
    """Every check, in a fixed order, run in parallel (a dead host costs one timeout, not ten)."""
    e = endpoints
    jobs: list[Callable[[], Check]] = [
        *(lambda url=url: collector_otlp(url, timeout) for url in e.collectors),
        *(lambda url=url: collector_health(url, timeout) for url in e.health_urls()),
        lambda: ready("prometheus", f"{_base(e.prometheus)}/-/ready", timeout),
        lambda: prometheus_scraping(e.prometheus, timeout),
        lambda: ready("alertmanager", f"{_base(e.alertmanager)}/-/ready", timeout),
        lambda: ready("loki", f"{_base(e.loki)}/ready", timeout, optional=True),
        lambda: ready("tempo", f"{_base(e.tempo)}/ready", timeout, optional=True),
        lambda: grafana(e.grafana, timeout),
        lambda: run_directory(e.run_dir),
        gpus_visible,
        lambda: clock(e.prometheus, timeout),
    ]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(lambda job: job(), jobs))


def as_json(checks: list[Check]) -> dict[str, Any]:
    return {
        "ok": not any(c.status == "fail" for c in checks),
        "checks": [asdict(c) for c in checks],
    }


# -- the checks ----------------------------------------------------------------------------


def collector_otlp(url: str, timeout: float = 3.0) -> Check:
    """An empty OTLP/HTTP trace export: the collector must accept it with 200."""
    target = f"{_base(url)}/v1/traces"
    try:
        response = fetch(target, "POST", b"", {"Content-Type": "application/x-protobuf"}, timeout)
    except OSError as error:
        return Check(
            "collector otlp",
            "fail",
            f"unreachable ({_reason(error)}): runs keep their "
            f"local record but export nothing; {_START_HINT}",
            target,
        )
    if response.status == 200:
        return Check("collector otlp", "pass", "accepts OTLP/HTTP", target)
    return Check(
        "collector otlp",
        "fail",
        f"answered HTTP {response.status} to an OTLP export "
        "(is this the collector's OTLP/HTTP port, usually 4318?)",
        target,
    )


def collector_health(url: str, timeout: float = 3.0) -> Check:
    try:
        response = fetch(url, timeout=timeout)
    except OSError as error:
        return Check(
            "collector health",
            "fail",
            f"health_check extension unreachable ({_reason(error)})",
            url,
        )
    if response.status == 200:
        return Check("collector health", "pass", _text(response) or "healthy", url)
    return Check(
        "collector health", "fail", f"unhealthy: HTTP {response.status} {_text(response)}", url
    )


def ready(name: str, url: str, timeout: float = 3.0, optional: bool = False) -> Check:
    try:
        response = fetch(url, timeout=timeout)
    except OSError as error:
        if optional:
            return Check(
                name,
                "warn",
                f"not running ({_reason(error)}); optional, but its signal is not stored",
                url,
            )
        return Check(name, "fail", f"unreachable ({_reason(error)}); {_START_HINT}", url)
    if response.status == 200:
        return Check(name, "pass", "ready", url)
    return Check(name, "fail", f"not ready: HTTP {response.status} {_text(response)}", url)


def prometheus_scraping(url: str, timeout: float = 3.0) -> Check:
    target = f"{_base(url)}/api/v1/targets?state=active"
    try:
        response = fetch(target, timeout=timeout)
        targets = response.json()["data"]["activeTargets"]
    except OSError as error:
        return Check(
            "prometheus scraping", "fail", f"Prometheus unreachable ({_reason(error)})", target
        )
    except (ValueError, KeyError, TypeError):
        return Check(
            "prometheus scraping",
            "fail",
            f"unexpected answer (HTTP {response.status}): is this Prometheus?",
            target,
        )
    up = [t for t in targets if t.get("health") == "up"]
    if up:
        return Check(
            "prometheus scraping", "pass", f"{len(up)} of {len(targets)} targets up", target
        )
    if not targets:
        return Check(
            "prometheus scraping",
            "fail",
            "no active scrape targets (a Prometheus that just started finds them within seconds)",
            target,
        )
    down = targets[0]
    return Check(
        "prometheus scraping",
        "fail",
        f"0 of {len(targets)} targets up; "
        f"{down.get('scrapeUrl')}: {down.get('lastError') or down.get('health')}",
        target,
    )


def grafana(url: str, timeout: float = 3.0) -> Check:
    target = f"{_base(url)}/api/health"
    try:
        response = fetch(target, timeout=timeout)
    except OSError as error:
        return Check(
            "grafana",
            "warn",
            f"not running ({_reason(error)}); optional, but there are no dashboards",
            target,
        )
    try:
        database = response.json().get("database")
    except (ValueError, AttributeError):
        database = None
    if response.status == 200 and database == "ok":
        return Check("grafana", "pass", "healthy (database ok)", target)
    return Check("grafana", "fail", f"unhealthy: HTTP {response.status} {_text(response)}", target)


def run_directory(path: Path) -> Check:
    """Free space and writability where runs write their record (created later if missing)."""
    existing = Path(path).absolute()
    while not existing.exists():
        existing = existing.parent
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        return Check(
            "run directory", "fail", f"{existing} is not writable ({error.strerror})", str(path)
        )
    free = shutil.disk_usage(existing).free
    detail = f"writable, {free / (1 << 30):.1f} GiB free at {existing}"
    if free < FAIL_FREE_BYTES:
        return Check("run directory", "fail", f"{detail}: records would be cut short", str(path))
    if free < WARN_FREE_BYTES:
        return Check("run directory", "warn", f"{detail}: little room for records", str(path))
    return Check("run directory", "pass", detail, str(path))


def gpus_visible() -> Check:
    """NVIDIA GPUs through NVML. None at all is a warning (CPU training is legitimate); device
    files without a working NVML mean a broken driver, which fails."""
    from traintel.samplers.gpu import driver_present

    try:
        import pynvml
    except ImportError:
        if not driver_present():  # as the run says it: the bindings would not help here
            return Check("gpus", "warn", "no NVIDIA driver: no GPU metrics (CPU training is fine)")
        return Check(
            "gpus",
            "warn",
            "nvidia-ml-py is not installed: no GPU metrics (pip install 'traintel[gpu]')",
        )
    try:
        pynvml.nvmlInit()
    except Exception as error:
        if os.path.exists("/dev/nvidia0"):
            return Check(
                "gpus",
                "fail",
                f"/dev/nvidia0 exists but NVML fails ({error}): "
                "driver/library mismatch? try `nvidia-smi`",
            )
        return Check("gpus", "warn", f"no NVIDIA GPU or driver ({error}): no GPU metrics")
    try:
        names = [
            _str(pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)))
            for i in range(pynvml.nvmlDeviceGetCount())
        ]
        driver = _str(pynvml.nvmlSystemGetDriverVersion())
    finally:
        pynvml.nvmlShutdown()
    if not names:
        return Check("gpus", "warn", f"NVML works (driver {driver}) but sees no GPU")
    return Check("gpus", "pass", f"{len(names)} GPU(s), driver {driver}: " + ", ".join(names))


def clock(prometheus: str, timeout: float = 3.0) -> Check:
    """This machine's clock against Prometheus's (``time()`` evaluated by the server): samples
    stamped far off are dropped or land in the wrong place on every graph."""
    target = f"{_base(prometheus)}/api/v1/query?query=time()"
    before = time.time()
    try:
        server = float(fetch(target, timeout=timeout).json()["data"]["result"][0])
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
        return Check(
            "clock",
            "warn",
            f"could not compare with Prometheus "
            f"({_reason(error) if isinstance(error, OSError) else 'no answer'})",
            target,
        )
    skew = (before + time.time()) / 2 - server
    detail = f"{skew:+.2f} s from Prometheus's clock"
    if abs(skew) > FAIL_SKEW_S:
        return Check("clock", "fail", f"{detail}: synchronise clocks (chrony/NTP)", target)
    if abs(skew) > WARN_SKEW_S:
        return Check("clock", "warn", f"{detail}: check NTP", target)
    return Check("clock", "pass", detail, target)


# -- helpers ------------------------------------------------------------------------------


def _base(url: str) -> str:
    return url.rstrip("/")


def _reason(error: OSError) -> str:
    reason = getattr(error, "reason", None) or error
    return getattr(reason, "strerror", None) or str(reason)


def _text(response: Response) -> str:
    return response.body[:200].decode("utf-8", "replace").strip()


def _str(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
