"""Capacity: how much traintel telemetry one collector and one Prometheus take in per CPU core,
and what an active series costs in memory, on this machine.

The load is what real runs send. A real traintel run (a workload like the capacity table's:
user metric keys, evaluations, events, spans, an error) is captured in memory and encoded with the
OpenTelemetry SDK's own OTLP encoders: one rank's metric export and one batch of its log
records. Sender processes replay that export for ``ranks`` ranks, each with its own resource and
``rank``/``run`` attributes (as N processes of one job would send), fresh timestamps and moving
values, every ``interval_s`` seconds, as OTLP/HTTP protobuf to the native stack's collector
(``traintel.stack.native``: the repository's collector config and Prometheus config with its
recording and alert rules, on free loopback ports). The collector remote-writes into Prometheus.

Two phases, so that each signal's cost is measured alone:
- ``metrics``: metric exports only. Samples/s are Prometheus's appended samples; the collector's
  and Prometheus's CPU seconds come from /proc; memory per active series is the growth of each
  process's resident set over the growth of Prometheus's head series since before the load.
- ``logs``: log batches only (``log_batches`` per rank and round), through the collector's
  OTLP/HTTP exporter to a Loki stand-in (a second collector on Loki's port with Loki's OTLP path
  and a debug exporter: Loki itself is AGPL and never built here). Log records/s per core of the
  collector.

Loops are bounded by rounds and by time; only loopback addresses are used. Results are for this
machine's cores (``environment``), with the senders sharing them: per-core figures divide by each
program's own CPU time, so they hold while the cores are not saturated (``cpu_busy_fraction``).

    python -m benchmarks collector_load            # the full size (about 3 minutes)
    python -m benchmarks.collector_load --ranks 500 --interval 5 --seconds 40
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import harness

PROFILES = {
    "full": {
        "ranks": 3000,
        "interval_s": 5.0,
        "seconds": 90.0,
        "senders": 2,
        "log_batches": 2,
        "collector_limit_mib": 4096,
    },
    "quick": {
        "ranks": 1000,
        "interval_s": 5.0,
        "seconds": 40.0,
        "senders": 1,
        "log_batches": 4,
        "collector_limit_mib": 4096,
    },
    "tiny": {
        "ranks": 4,
        "interval_s": 1.0,
        "seconds": 4.0,
        "senders": 1,
        "log_batches": 1,
        "collector_limit_mib": None,
    },
}
#: rounds before the measurement window opens (series creation, queues filling)
WARMUP_ROUNDS = 3
LOKI_STANDIN = """
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{port}
        logs_url_path: /otlp/v1/logs
exporters:
  debug:
    verbosity: basic
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    logs:
      receivers: [otlp]
      exporters: [debug]
"""


# --- the load -----------------------------------------------------------------------------------


def capture_template(directory: str) -> tuple[bytes, bytes, dict[str, int]]:
    """One rank's OTLP metric export and log batch, from a real run, as the exporters encode them."""
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics

    from traintel.testing import capture

    with capture() as telemetry:
        with harness.traintel_run(directory, sample_interval=0.2) as run:
            requests_seen = run.counter("requests_seen")
            for epoch in run.epochs(2):
                for i in run.track(range(100)):
                    run.log(**harness.step_values(epoch * 100 + i))
                    requests_seen.inc()
                run.log_eval(val_loss=1.0 / (epoch + 1), val_accuracy=0.5 + epoch / 10)
                for name in (
                    "checkpoint_saved",
                    "lr_decayed",
                    "data_shard_done",
                    "resumed",
                    "early_stop_check",
                ):
                    run.event(name, epoch=epoch)
                with run.span("checkpoint"):
                    time.sleep(0.01)
            run.error(ValueError("a corrupt sample in shard 3 was skipped"), context={"shard": 3})
            time.sleep(0.5)  # a host/process sample
            telemetry.collect()
        metrics = encode_metrics(telemetry._collected[-1]).SerializeToString()
        records = telemetry.logs.get_finished_logs()
        logs = encode_logs(records).SerializeToString()
    return metrics, logs, {"log_records_per_batch": len(records)}


def _for_rank(request: Any, run_id: str, rank: int) -> Any:
    """A copy of one rank's request as rank ``rank`` of job ``run_id`` would send it."""
    copy = type(request)()
    copy.CopyFrom(request)
    values = {
        "rank": str(rank),
        "run": run_id,
        "host.name": f"node-{rank // 8:04d}",
        "host": f"node-{rank // 8:04d}",
        "service.instance.id": f"{run_id}/{rank}",
        "traintel.run_name": run_id,
    }
    for attributes in _attribute_lists(copy):
        for attribute in attributes:
            if attribute.key in values:
                attribute.value.string_value = values[attribute.key]
    return copy


def _attribute_lists(request: Any):
    groups = getattr(request, "resource_metrics", None) or request.resource_logs
    for group in groups:
        yield group.resource.attributes
        for scope in getattr(group, "scope_metrics", None) or group.scope_logs:
            for item in getattr(scope, "metrics", None) or scope.log_records:
                if hasattr(item, "attributes"):
                    yield item.attributes
                else:
                    for point in getattr(item, item.WhichOneof("data")).data_points:
                        yield point.attributes


#: written into every timestamp before encoding, to find them in the bytes (fixed64 fields)
_TIME_MARK = 0x7EADBEEF0BADF00D
#: consecutive multiples of this mark the moving values (double fields) before encoding
_VALUE_MARK = 1.0e-300


def _patchable(
    request: Any, signal: str
) -> tuple[bytes, list[int], list[tuple[int, float, float]]]:
    """The request's bytes, where its timestamps are, and where its moving values are with their
    start and increment per round. Timestamps (fixed64) and double values have fixed widths in
    protobuf, so a sender overwrites them in place each round instead of encoding again: the
    load then costs the senders little CPU, and the measured programs get the cores."""
    moving: list[tuple[float, float, float]] = []  # (mark, start, step)
    if signal == "metrics":
        for group in request.resource_metrics:
            for scope in group.scope_metrics:
                for metric in scope.metrics:
                    kind = metric.WhichOneof("data")
                    for point in getattr(metric, kind).data_points:
                        point.time_unix_nano = _TIME_MARK
                        if kind in ("sum", "gauge") and point.WhichOneof("value") == "as_double":
                            mark = _VALUE_MARK * (len(moving) + 2)
                            step = 0.5 if kind == "sum" else 1e-3  # counters grow, gauges move
                            moving.append((mark, point.as_double, step))
                            point.as_double = mark
    else:
        for group in request.resource_logs:
            for scope in group.scope_logs:
                for record in scope.log_records:
                    record.time_unix_nano = record.observed_time_unix_nano = _TIME_MARK
    body = request.SerializeToString()
    times = _find_all(body, struct.pack("<Q", _TIME_MARK))
    values = [
        (offset, start, step)
        for mark, start, step in moving
        for offset in _find_all(body, struct.pack("<d", mark))
    ]
    return body, times, values


def _find_all(body: bytes, needle: bytes) -> list[int]:
    found, at = [], body.find(needle)
    while at >= 0:
        found.append(at)
        at = body.find(needle, at + 1)
    return found


def sender(
    endpoint: str,
    signal: str,
    template: bytes,
    run_id: str,
    ranks: range,
    interval_s: float,
    start: float,
    deadline: float,
    batches: int,
    out: Any,
) -> None:
    """Sends every rank's export once per round until ``deadline`` (a monotonic time), over one
    keep-alive connection."""
    import http.client
    from urllib.parse import urlsplit

    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

    kind = ExportMetricsServiceRequest if signal == "metrics" else ExportLogsServiceRequest
    base = kind.FromString(template)
    per_rank = [_patchable(_for_rank(base, run_id, rank), signal) for rank in ranks]
    address = urlsplit(endpoint)
    assert address.hostname in ("127.0.0.1", "localhost", "::1"), "loopback only"
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    headers = {"Content-Type": "application/x-protobuf"}
    sent = refused = rounds = 0
    late_s = 0.0
    round_no = 0
    last_round = int((deadline - start) / interval_s) + 1  # bounded in count as well as time
    while round_no <= last_round:
        due = start + round_no * interval_s
        now = time.monotonic()
        if now >= deadline:
            break
        if due > now:
            time.sleep(min(due, deadline) - now)
            continue
        late_s = max(late_s, now - due)
        now_ns = time.time_ns()
        for body, times, values in per_rank:
            patched = bytearray(body)
            for offset in times:
                struct.pack_into("<Q", patched, offset, now_ns)
            for offset, first, step in values:
                struct.pack_into("<d", patched, offset, first + step * round_no)
            for _ in range(batches):
                try:
                    connection.request(
                        "POST", f"/v1/{signal}", body=bytes(patched), headers=headers
                    )
                    response = connection.getresponse()
                    response.read()
                    ok = response.status == 200
                except (OSError, http.client.HTTPException):
                    connection.close()
                    ok = False
                sent += ok
                refused += not ok
            if time.monotonic() >= deadline:
                break
        rounds += 1
        round_no += 1
    connection.close()
    out.put({"sent": sent, "refused": refused, "rounds": rounds, "max_late_s": round(late_s, 3)})


class _Stack:
    """The native stack, with the collector's memory_limiter raised to ``limit_mib`` (None: the
    repository's configuration as it is)."""

    def __new__(cls, run_dir: Path, ports: dict, limit_mib: int | None) -> Any:
        from traintel.stack import native

        class Stack(native.NativeStack):
            def render(self, name: str, source: Path | None = None) -> Any:
                if name == "otelcol" and limit_mib is not None and source is None:
                    source = _raised_limit(limit_mib, run_dir.parent)
                return super().render(name, source)

        return Stack(run_dir, ports=ports, tap=False)


def _raised_limit(limit_mib: int, directory: Path) -> Path:
    import yaml

    from traintel.stack import native

    source = native._config_path("otelcol")
    config = yaml.safe_load(source.read_text())
    limiter = config["processors"]["memory_limiter"]
    limiter["limit_mib"] = limit_mib
    out = directory / source.name
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


# --- what the programs did ----------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _rss(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


def _sockets(pid: int, port: int) -> dict[str, int] | None:
    """local address -> bytes sent, for each TCP connection of process ``pid`` to
    127.0.0.1:``port`` (``ss -ti``: the kernel's per-socket counters); None without ``ss``."""
    try:
        listing = subprocess.run(
            ["ss", "-tinpH", "state", "established"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found, current = {}, None
    for line in listing.splitlines():
        if not line.startswith((" ", "\t")):  # a socket; its details follow on the next line
            fields = line.split()
            current = (
                fields[2]
                if len(fields) >= 5 and fields[3] == f"127.0.0.1:{port}" and f"pid={pid}," in line
                else None
            )
        elif current:
            match = re.search(r"bytes_sent:(\d+)", line)
            found[current] = int(match.group(1)) if match else 0
    return found


class _SentBytes:
    """Bytes a process sends to a port over a window, summed over its connections while they
    come and go (polled: the last poll interval of a connection closed in between is missed)."""

    def __init__(self, pid: int, port: int, every_s: float = 0.5) -> None:
        import threading

        self.pid, self.port, self.every_s = pid, port, every_s
        self.total: int | None = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        last = _sockets(self.pid, self.port)
        if last is None:
            self.total = None
            return
        while not self._stop.wait(self.every_s):
            now = _sockets(self.pid, self.port) or {}
            self.total = (self.total or 0) + sum(
                sent - last.get(local, 0) if sent >= last.get(local, 0) else sent
                for local, sent in now.items()
            )
            last = now

    def stop(self) -> int | None:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.total


def _scrape(url: str) -> dict[str, float]:
    """name{labels} -> value from a /metrics page; summed over labels under the bare name too."""
    import requests

    values: dict[str, float] = {}
    for line in requests.get(url, timeout=10).text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not match or line.startswith("#"):
            continue
        name, value = match.group(1), float(match.group(3))
        values[name] = values.get(name, 0.0) + value
    return values


def snapshot(stack: Any) -> dict[str, Any]:
    prometheus = _scrape(f"{stack.endpoints['prometheus']}/metrics")
    collector = _scrape(stack.url("otelcol", "metrics") + "/metrics")
    pids = {name: stack.pid(name) for name in ("otelcol", "prometheus")}
    return {
        "t": time.monotonic(),
        "cpu": {name: _cpu_seconds(pid) for name, pid in pids.items()},
        "rss": {name: _rss(pid) for name, pid in pids.items()},
        "samples": prometheus.get("prometheus_tsdb_head_samples_appended_total", 0.0),
        "series": prometheus.get("prometheus_tsdb_head_series", 0.0),
        "heap_inuse": prometheus.get("go_memstats_heap_inuse_bytes", 0.0),
        "collector_heap": collector.get("otelcol_process_runtime_heap_alloc_bytes", 0.0),
        "wal_written": collector.get(
            "otelcol_exporter_prometheusremotewrite_wal_bytes_written", 0.0
        ),
        "wal_read": collector.get("otelcol_exporter_prometheusremotewrite_wal_bytes_read", 0.0),
        "points_in": collector.get("otelcol_receiver_accepted_metric_points", 0.0),
        "points_refused": collector.get("otelcol_receiver_refused_metric_points", 0.0),
        "points_out": collector.get("otelcol_exporter_sent_metric_points", 0.0),
        "points_failed": collector.get("otelcol_exporter_send_failed_metric_points", 0.0),
        "logs_in": collector.get("otelcol_receiver_accepted_log_records", 0.0),
        "logs_refused": collector.get("otelcol_receiver_refused_log_records", 0.0),
        "logs_out": collector.get("otelcol_exporter_sent_log_records", 0.0),
        "machine_cpu": _machine_cpu_seconds(),
    }


def _machine_cpu_seconds() -> float:
    import psutil

    times = psutil.cpu_times()
    return times.user + times.system + getattr(times, "irq", 0) + getattr(times, "softirq", 0)


def _phase(
    stack: Any,
    signal: str,
    template: bytes,
    run_id: str,
    ranks: int,
    interval_s: float,
    seconds: float,
    senders: int,
    batches: int,
) -> dict[str, Any]:
    """Run one phase; returns its rates over the window after the warm-up rounds."""
    queue: Any = multiprocessing.get_context("spawn").Queue()
    start = time.monotonic() + 2.0  # the senders build their requests first
    deadline = start + seconds
    shares = [range(i, ranks, senders) for i in range(senders)]
    procs = [
        multiprocessing.get_context("spawn").Process(
            target=sender,
            args=(
                stack.endpoints["otlp_http"],
                signal,
                template,
                run_id,
                share,
                interval_s,
                start,
                deadline,
                batches,
                queue,
            ),
            daemon=True,
        )
        for share in shares
    ]
    for proc in procs:
        proc.start()
    time.sleep(max(0.0, start + min(WARMUP_ROUNDS * interval_s, seconds / 3) - time.monotonic()))
    before = snapshot(stack)
    sent = _SentBytes(stack.pid("otelcol"), stack.ports["prometheus"]["web"])
    time.sleep(max(0.0, deadline - 0.5 - time.monotonic()))
    remote_write_bytes = sent.stop()
    after = snapshot(stack)
    reports = [queue.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    elapsed = after["t"] - before["t"]
    cores = {name: (after["cpu"][name] - before["cpu"][name]) / elapsed for name in after["cpu"]}
    machine_cores = (after["machine_cpu"] - before["machine_cpu"]) / elapsed
    result: dict[str, Any] = {
        "window_s": round(elapsed, 1),
        "requests_sent": sum(r["sent"] for r in reports),
        "requests_refused": sum(r["refused"] for r in reports),
        "rounds": min(r["rounds"] for r in reports),
        "sender_max_late_s": max(r["max_late_s"] for r in reports),
        "cores_used": {name: round(v, 3) for name, v in cores.items()},
        "cpu_busy_fraction": round(machine_cores / (os.cpu_count() or 1), 3),
        "after": after,
    }
    if signal == "metrics":
        samples_s = (after["samples"] - before["samples"]) / elapsed
        wal_s = (after["wal_written"] - before["wal_written"]) / elapsed
        remote_write_s = (remote_write_bytes or 0) / elapsed
        result.update(
            {
                "samples_per_s": round(samples_s, 1),
                "otlp_points_per_s": round((after["points_in"] - before["points_in"]) / elapsed, 1),
                "points_refused": after["points_refused"] - before["points_refused"],
                "points_send_failed": after["points_failed"] - before["points_failed"],
                "collector_samples_per_core_s": _per(samples_s, cores["otelcol"]),
                # what the collector sent to Prometheus (remote-write requests, HTTP included), and
                # what its remote-write WAL wrote to disk
                "remote_write_bytes_per_s": round(remote_write_s),
                "remote_write_bytes_per_sample": _per(remote_write_s, samples_s),
                "wal_bytes_per_sample": _per(wal_s, samples_s),
                "prometheus_samples_per_core_s": _per(samples_s, cores["prometheus"]),
            }
        )
    else:
        logs_s = (after["logs_out"] - before["logs_out"]) / elapsed
        result.update(
            {
                "log_records_per_s": round(logs_s, 1),
                "log_records_refused": after["logs_refused"] - before["logs_refused"],
                "collector_log_records_per_core_s": _per(logs_s, cores["otelcol"]),
            }
        )
    return result


def _per(rate: float, amount: float) -> float | None:
    """``rate`` per unit of ``amount``; None when nothing was measured (a tiny run can finish
    inside one CPU-accounting tick)."""
    return round(rate / amount, 1) if amount > 0 else None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def run(
    ranks: int,
    interval_s: float,
    seconds: float,
    senders: int,
    log_batches: int,
    collector_limit_mib: int | None,
) -> dict[str, Any]:
    from traintel.stack import install, native

    for name in ("otelcol", "prometheus", "alertmanager"):
        reason = install.missing_reason(name)
        if reason:
            raise harness.Skipped(reason)
    with tempfile.TemporaryDirectory(prefix="traintel-load-") as tmp:
        metrics, logs, shape = capture_template(tmp)
        ports = native.free_ports()
        stack = _Stack(Path(tmp) / "stack", ports, collector_limit_mib)
        loki_config = Path(tmp) / "loki-standin.yaml"
        loki_config.write_text(LOKI_STANDIN.format(port=ports["loki"]["http"]))
        with (Path(tmp) / "loki-standin.log").open("w") as loki_log:
            loki = subprocess.Popen(
                [str(install.binary("otelcol")), "--config", str(loki_config)],
                stdout=loki_log,
                stderr=subprocess.STDOUT,
            )
            try:
                stack.up()
                baseline = snapshot(stack)
                run_id = f"load-{os.getpid()}"
                metric_phase = _phase(
                    stack, "metrics", metrics, run_id, ranks, interval_s, seconds, senders, 1
                )
                log_phase = _phase(
                    stack,
                    "logs",
                    logs,
                    run_id,
                    ranks,
                    interval_s,
                    max(seconds / 2, min(seconds, 4.0)),
                    senders,
                    log_batches,
                )
            finally:
                stack.down()
                loki.terminate()
                loki.wait(timeout=30)
    end = metric_phase.pop("after")
    log_phase.pop("after")
    series = end["series"] - baseline["series"]
    memory = {name: _per(end["rss"][name] - baseline["rss"][name], series) for name in end["rss"]}
    return {
        "ranks": ranks,
        "interval_s": interval_s,
        "seconds": seconds,
        "senders": senders,
        "log_batches": log_batches,
        "collector_limit_mib": collector_limit_mib,
        **shape,
        "template_bytes": {"metrics": len(metrics), "logs": len(logs)},
        "series_per_rank": round(series / ranks, 1),
        "active_series": int(series),
        "bytes_per_series": {
            "prometheus_rss": memory["prometheus"],
            "prometheus_heap_inuse": _per(end["heap_inuse"] - baseline["heap_inuse"], series),
            "collector_rss": memory["otelcol"],
            "collector_heap": _per(end["collector_heap"] - baseline["collector_heap"], series),
        },
        "rss_mb": {name: round(end["rss"][name] / 2**20, 1) for name in end["rss"]},
        "metrics": metric_phase,
        "logs": log_phase,
    }


def render(result: dict[str, Any]) -> list[str]:
    m, lg, b = result["metrics"], result["logs"], result["bytes_per_series"]
    return [
        f"{result['ranks']} ranks x {result['series_per_rank']} series each "
        f"({result['active_series']} active series), one export per rank every "
        f"{result['interval_s']:g} s, {result['senders']} sender processes; collector "
        + (
            f"memory_limiter raised to {result['collector_limit_mib']} MiB."
            if result.get("collector_limit_mib")
            else "configuration as in the repository."
        ),
        "",
        "| signal | rate | collector per core | Prometheus per core | cores used "
        "(collector / Prometheus) | refused |",
        "|---|---|---|---|---|---|",
        f"| metrics | {m['samples_per_s']:,.0f} samples/s | "
        f"{_fmt(m['collector_samples_per_core_s'])} samples/s | "
        f"{_fmt(m['prometheus_samples_per_core_s'])} samples/s | "
        f"{m['cores_used']['otelcol']:.2f} / {m['cores_used']['prometheus']:.2f} | "
        f"{m['requests_refused']} requests, {m['points_refused']:.0f} points |",
        f"| logs | {lg['log_records_per_s']:,.0f} records/s | "
        f"{_fmt(lg['collector_log_records_per_core_s'])} records/s | - | "
        f"{lg['cores_used']['otelcol']:.2f} / {lg['cores_used']['prometheus']:.2f} | "
        f"{lg['requests_refused']} requests |",
        "",
        f"Memory per active series: Prometheus {_fmt(b['prometheus_rss'])} B resident "
        f"({_fmt(b['prometheus_heap_inuse'])} B Go heap in use), collector "
        f"{_fmt(b['collector_rss'])} B resident ({_fmt(b['collector_heap'])} B Go heap); resident "
        f"sets at the end "
        f"{result['rss_mb']['prometheus']:,.0f} MB and {result['rss_mb']['otelcol']:,.0f} MB. "
        f"Machine CPU busy {m['cpu_busy_fraction']:.0%} during the metrics window.",
        "",
        f"Remote write: {_fmt(m['remote_write_bytes_per_sample'])} B per sample "
        f"({m['remote_write_bytes_per_s'] / 2**20:.1f} MiB/s at this rate); the collector's "
        f"remote-write WAL wrote {_fmt(m['wal_bytes_per_sample'])} B per sample to disk.",
    ]


BENCHMARK = harness.Benchmark(
    name="collector_load",
    title="Collector and Prometheus capacity",
    profiles=PROFILES,
    run=run,
    render=render,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=PROFILES["full"]["ranks"])
    parser.add_argument("--interval", type=float, default=PROFILES["full"]["interval_s"])
    parser.add_argument("--seconds", type=float, default=PROFILES["full"]["seconds"])
    parser.add_argument("--senders", type=int, default=PROFILES["full"]["senders"])
    parser.add_argument("--log-batches", type=int, default=PROFILES["full"]["log_batches"])
    parser.add_argument(
        "--collector-limit-mib",
        type=int,
        default=PROFILES["full"]["collector_limit_mib"],
        help="raise the collector's memory_limiter (0: the repository's value)",
    )
    args = parser.parse_args()
    result = run(
        args.ranks,
        args.interval,
        args.seconds,
        args.senders,
        args.log_batches,
        args.collector_limit_mib or None,
    )
    print(json.dumps(result, indent=2))
    print("\n".join(render(result)))


if __name__ == "__main__":
    main()
