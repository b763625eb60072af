"""Ingest per core of Thanos Receive beside Prometheus, in the same run, from the same collector.

The load is collector_load's (a real run's OTLP export replayed for ``ranks`` ranks every
``interval_s`` seconds by sender processes). One collector (our build; the metrics path of
otel-collector/config.yaml, its memory_limiter raised as in collector_load) remote-writes every
sample twice: to a Prometheus with the repository's prometheus.yml and recording/alert rules, and
to three Thanos Receive in one hashring with replication factor 2, started as tests/test_thanos.py
starts them (out-of-order window included). Query and Ruler are not started: this measures ingest.

Samples/s are Prometheus's appended samples (each sample once); Receive's per-core figure divides
the same distinct samples by the CPU of all three Receive together (each sample is stored twice,
once per replica, and forwarded between members; ``receive_appended_per_s`` counts the stored
copies). CPU is each program's own CPU time from /proc over the window after the warm-up rounds.

    scripts/venv.sh python -m benchmarks.thanos_load --ranks 1000 --seconds 40
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
import yaml

from benchmarks import collector_load, harness

REPO = Path(__file__).resolve().parent.parent


def _port() -> int:
    from traintel.stack import native

    return native.free_port()


def _ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready")


def _collector_config(prometheus: str, receive: str, otlp: int, data: Path, limit_mib: int) -> Any:
    source = yaml.safe_load((REPO / "otel-collector/config.yaml").read_text())
    exporter = source["exporters"]["prometheus_remote_write"]
    processors = {k: source["processors"][k] for k in ("memory_limiter", "batch")}
    processors["memory_limiter"] = {**processors["memory_limiter"], "limit_mib": limit_mib}

    def remote(endpoint: str, wal: str) -> dict[str, Any]:
        return {
            **exporter,
            "http": {**exporter["http"], "endpoint": endpoint},
            "wal": {**exporter["wal"], "directory": str(data / wal)},
        }

    return {
        "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{otlp}"}}}},
        "processors": processors,
        "exporters": {
            "prometheus_remote_write/prometheus": remote(prometheus, "wal-prometheus"),
            "prometheus_remote_write/thanos": remote(receive, "wal-thanos"),
        },
        "service": {
            "telemetry": {"metrics": {"level": "none"}},
            "pipelines": {
                "metrics": {
                    "receivers": ["otlp"],
                    "processors": ["memory_limiter", "batch"],
                    "exporters": [
                        "prometheus_remote_write/prometheus",
                        "prometheus_remote_write/thanos",
                    ],
                }
            },
        },
    }


def _snapshot(prometheus: str, receive_http: list[str], pids: dict[str, int]) -> dict[str, Any]:
    receive = [collector_load._scrape(f"{url}/metrics") for url in receive_http]
    prom = collector_load._scrape(f"{prometheus}/metrics")
    return {
        "t": time.monotonic(),
        "cpu": {name: collector_load._cpu_seconds(pid) for name, pid in pids.items()},
        "samples": prom.get("prometheus_tsdb_head_samples_appended_total", 0.0),
        "receive_appended": sum(
            r.get("prometheus_tsdb_head_samples_appended_total", 0.0) for r in receive
        ),
        "receive_series": sum(r.get("prometheus_tsdb_head_series", 0.0) for r in receive),
        "series": prom.get("prometheus_tsdb_head_series", 0.0),
        "machine_cpu": _machine_cpu_seconds(),
    }


def _machine_cpu_seconds() -> float:
    """Busy CPU seconds of the machine, niced work included (this benchmark runs under
    ``nice``, and so do the other jobs of a shared machine)."""
    import psutil

    times = psutil.cpu_times()
    return collector_load._machine_cpu_seconds() + getattr(times, "nice", 0.0)


def run(ranks: int, interval_s: float, seconds: float, senders: int, limit_mib: int) -> Any:
    from traintel.stack import install
    from traintel.stack.components import DEPLOY_TOOLS

    bins = {}
    for name in ("thanos", "prometheus", "otelcol"):
        path = install.binary(name)
        if path is None:
            reason = install.missing_reason(name) if name != "thanos" else None
            if name == "thanos":
                status = install.install([name], say=lambda _: None, table=DEPLOY_TOOLS)
                path = install.binary(name)
                reason = status.get(name, {}).get("reason", "unknown reason")
            if path is None:
                raise harness.Skipped(f"{name} is not available: {reason}")
        bins[name] = str(path)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    with tempfile.TemporaryDirectory(prefix="traintel-thanos-load-") as tmp:
        root = Path(tmp)

        def start(name: str, argv: list[str]) -> subprocess.Popen[bytes]:
            with (root / f"{name}.log").open("ab") as out:
                procs[name] = subprocess.Popen(
                    argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            return procs[name]

        try:
            metrics, _, _ = collector_load.capture_template(str(root / "capture"))
            grpc = [_port() for _ in range(3)]
            hashring = root / "hashring.json"
            hashring.write_text(
                json.dumps([{"hashring": "default", "endpoints": [f"127.0.0.1:{g}" for g in grpc]}])
            )
            receive_http, writes = [], []
            for i, g in enumerate(grpc):
                http, write = _port(), _port()
                proc = start(
                    f"receive-{i}",
                    [
                        bins["thanos"],
                        "receive",
                        f"--tsdb.path={root / f'receive-{i}'}",
                        f"--grpc-address=127.0.0.1:{g}",
                        f"--http-address=127.0.0.1:{http}",
                        f"--remote-write.address=127.0.0.1:{write}",
                        f"--receive.capnproto-address=127.0.0.1:{_port()}",
                        f"--receive.local-endpoint=127.0.0.1:{g}",
                        f"--receive.hashrings-file={hashring}",
                        "--receive.replication-factor=2",
                        f'--label=receive_replica="{i}"',
                        "--tsdb.retention=1d",
                        "--tsdb.out-of-order.time-window=7d",
                    ],
                )
                _ready(f"http://127.0.0.1:{http}/-/ready", proc, root / f"receive-{i}.log")
                receive_http.append(f"http://127.0.0.1:{http}")
                writes.append(write)
            # the stack's prometheus.yml (rules, out-of-order window), remote-write receiver only
            source = yaml.safe_load((REPO / "prometheus/prometheus.yml").read_text())
            rules = sorted(str(p) for p in (REPO / "prometheus/rules").glob("*.yml"))
            (root / "prometheus.yml").write_text(
                yaml.safe_dump(
                    {"global": source["global"], "storage": source["storage"], "rule_files": rules}
                )
            )
            prom_port = _port()
            prometheus = f"http://127.0.0.1:{prom_port}"
            proc = start(
                "prometheus",
                [
                    bins["prometheus"],
                    f"--config.file={root / 'prometheus.yml'}",
                    f"--storage.tsdb.path={root / 'prometheus-data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--web.enable-remote-write-receiver",
                ],
            )
            _ready(f"{prometheus}/-/ready", proc, root / "prometheus.log")
            otlp = _port()
            config = root / "collector.yaml"
            config.write_text(
                yaml.safe_dump(
                    _collector_config(
                        f"{prometheus}/api/v1/write",
                        f"http://127.0.0.1:{writes[0]}/api/v1/receive",
                        otlp,
                        root,
                        limit_mib,
                    )
                )
            )
            start("otelcol", [bins["otelcol"], "--config", str(config)])
            time.sleep(2)
            if procs["otelcol"].poll() is not None:
                raise RuntimeError((root / "otelcol.log").read_text())
            pids = {name: p.pid for name, p in procs.items()}
            baseline = _snapshot(prometheus, receive_http, pids)

            queue: Any = multiprocessing.get_context("spawn").Queue()
            begin = time.monotonic() + 2.0
            deadline = begin + seconds
            workers = [
                multiprocessing.get_context("spawn").Process(
                    target=collector_load.sender,
                    args=(
                        f"http://127.0.0.1:{otlp}",
                        "metrics",
                        metrics,
                        f"thanos-load-{os.getpid()}",
                        range(i, ranks, senders),
                        interval_s,
                        begin,
                        deadline,
                        1,
                        queue,
                    ),
                    daemon=True,
                )
                for i in range(senders)
            ]
            for worker in workers:
                worker.start()
            warmup = min(collector_load.WARMUP_ROUNDS * interval_s, seconds / 3)
            time.sleep(max(0.0, begin + warmup - time.monotonic()))
            before = _snapshot(prometheus, receive_http, pids)
            time.sleep(max(0.0, deadline - 0.5 - time.monotonic()))
            after = _snapshot(prometheus, receive_http, pids)
            reports = [queue.get(timeout=120) for _ in workers]
            for worker in workers:
                worker.join(timeout=30)
        finally:
            for proc in reversed(list(procs.values())):
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    elapsed = after["t"] - before["t"]
    cores = {name: (after["cpu"][name] - before["cpu"][name]) / elapsed for name in pids}
    receive_cores = sum(v for name, v in cores.items() if name.startswith("receive-"))
    samples_s = (after["samples"] - before["samples"]) / elapsed
    appended_s = (after["receive_appended"] - before["receive_appended"]) / elapsed
    return {
        "ranks": ranks,
        "interval_s": interval_s,
        "seconds": seconds,
        "senders": senders,
        "collector_limit_mib": limit_mib,
        "window_s": round(elapsed, 1),
        "active_series": int(after["series"] - baseline["series"]),
        "receive_series_stored": int(after["receive_series"] - baseline["receive_series"]),
        "requests_sent": sum(r["sent"] for r in reports),
        "requests_refused": sum(r["refused"] for r in reports),
        "samples_per_s": round(samples_s, 1),
        "receive_appended_per_s": round(appended_s, 1),
        "cores_used": {name: round(v, 3) for name, v in cores.items()},
        "receive_cores": round(receive_cores, 3),
        "prometheus_samples_per_core_s": collector_load._per(samples_s, cores["prometheus"]),
        "receive_samples_per_core_s": collector_load._per(samples_s, receive_cores),
        "receive_appends_per_core_s": collector_load._per(appended_s, receive_cores),
        "cpu_busy_fraction": round(
            (after["machine_cpu"] - before["machine_cpu"]) / elapsed / (os.cpu_count() or 1), 3
        ),
        "environment": harness.machine(),
    }


def render(result: dict[str, Any]) -> list[str]:
    fmt = collector_load._fmt
    return [
        f"{result['ranks']} ranks, {result['active_series']:,} active series, "
        f"{result['samples_per_s']:,.0f} samples/s (each to Prometheus and to Receive); "
        f"machine busy {result['cpu_busy_fraction']:.0%}.",
        f"Prometheus: {fmt(result['prometheus_samples_per_core_s'])} samples/s per core "
        f"({result['cores_used']['prometheus']:.2f} cores).",
        f"Thanos Receive x3 (RF 2): {fmt(result['receive_samples_per_core_s'])} samples/s per "
        f"core of all three ({result['receive_cores']:.2f} cores; "
        f"{fmt(result['receive_appended_per_s'])} stored copies/s, "
        f"{fmt(result['receive_appends_per_core_s'])} per core).",
        f"Refused requests: {result['requests_refused']}.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--senders", type=int, default=1)
    parser.add_argument("--collector-limit-mib", type=int, default=4096)
    args = parser.parse_args()
    result = run(args.ranks, args.interval, args.seconds, args.senders, args.collector_limit_mib)
    print(json.dumps(result, indent=2))
    print("\n".join(render(result)))


if __name__ == "__main__":
    main()
