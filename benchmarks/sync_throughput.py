"""What ``traintel sync`` costs itself: a synthetic offline record replayed and turned into OTLP
requests, encoded as the OTLP/HTTP exporters encode them, sent nowhere.

The record is in the current format: a run_start saying ``offline``, steps of four values every
0.1 s, an evaluation and a checkpoint event every 500 steps, a ``log`` line every 10 steps, a
step span every 100. The sync replays it (``traintel.sync``), collects metric points at the
run's 15 s cadence with the live export code, builds log records and spans, and the OTLP
encoders serialize every request. What a collector takes per core is ``collector_load``'s.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks import harness


def write_record(directory: Path, steps: int) -> dict[str, int]:
    """A synthetic offline run of ``steps`` steps; how many lines of each kind it has."""
    directory.mkdir(parents=True)
    start = time.time() - steps * 0.1 - 60
    base = {"level": "info", "run": "bench", "rank": 0}
    trace = "0af7651916cd43dd8448eb211c80319c"
    lines = [
        {
            "ts": start,
            "type": "run_start",
            **base,
            "project": "bench",
            "name": "sync",
            "host": "node1",
            "pid": 1,
            "world_size": 1,
            "local_rank": 0,
            "traintel_version": "0.1.0",
            "total_epochs": None,
            "total_steps": steps,
            "segment": 1,
            "resumed": False,
            "tags": [],
            "notes": None,
            "group": None,
            "export": "offline",
            "export_interval_s": 15.0,
            "log_level": "INFO",
            "resource": {
                "service.name": "traintel",
                "service.instance.id": "bench/0",
                "run": "bench",
                "rank": "0",
                "project": "bench",
            },
        }
    ]
    counts = {"steps": 0, "logs": 0, "spans": 0}
    for step in range(1, steps + 1):
        ts = start + step * 0.1
        lines.append(
            {
                "ts": ts,
                "type": "step",
                **base,
                "step": step,
                "epoch": step // 1000,
                "step_s": 0.1,
                "data_wait_s": 0.01,
                "metrics": {"loss": 1.0 / step, "lr": 3e-4, "grad_norm": 1.5, "samples": 64},
            }
        )
        counts["steps"] += 1
        stamp = {"trace_id": trace, "span_id": f"{step:016x}"}
        if step % 10 == 0:
            lines.append(
                {
                    "ts": ts,
                    "type": "log",
                    **base,
                    "logger": "traintel.data",
                    "message": f"shard {step} read",
                    "fields": {"shard": step},
                    **stamp,
                }
            )
            counts["logs"] += 1
        if step % 100 == 0:
            lines.append(
                {
                    "ts": ts,
                    "type": "span",
                    **base,
                    "level": "debug",
                    **stamp,
                    "name": "train_step",
                    "parent_span_id": "00000000000000aa",
                    "kind": "internal",
                    "start_ns": int((ts - 0.1) * 1e9),
                    "end_ns": int(ts * 1e9),
                    "status": "unset",
                    "status_message": None,
                    "attributes": {"step": step, "epoch": 0},
                    "events": [],
                }
            )
            counts["spans"] += 1
        if step % 500 == 0:
            lines.append(
                {
                    "ts": ts,
                    "type": "eval",
                    **base,
                    "step": step,
                    "epoch": 0,
                    "metrics": {"val_loss": 2.0 / step},
                    "is_best": {"val_loss": True},
                    "best": {"val_loss": 2.0 / step},
                    "best_step": {"val_loss": step},
                    "mode": {"val_loss": "min"},
                    "message": "eval",
                    **stamp,
                }
            )
            lines.append(
                {
                    "ts": ts,
                    "type": "event",
                    **base,
                    "event": "checkpoint",
                    "fields": {"path": f"ckpt-{step}.pt"},
                    "step": step,
                    "epoch": 0,
                    "message": "checkpoint",
                    **stamp,
                }
            )
            counts["logs"] += 2
    (directory / "events.jsonl").write_bytes(b"\n".join(map(orjson.dumps, lines)) + b"\n")
    return counts


class _Encoding:
    """An exporter that encodes what it gets as the OTLP/HTTP exporter would, and drops it."""

    def __init__(self, signal: str) -> None:
        from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
        from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        from opentelemetry.sdk.metrics.export import MetricExportResult

        self.encode = {"metrics": encode_metrics, "logs": encode_logs, "traces": encode_spans}[
            signal
        ]
        self.success = MetricExportResult.SUCCESS
        self.bytes = 0

    def export(self, items: Any, **kwargs: Any) -> Any:
        self.bytes += len(self.encode(items).SerializeToString())
        return self.success

    def shutdown(self, **kwargs: Any) -> None:
        pass


def run(steps: int, repeat: int) -> dict[str, Any]:
    from traintel.sync.deliver import Sync
    from traintel.sync.plan import Options
    from traintel.sync.source import find_records
    from traintel.sync.target import Target

    best: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="traintel-bench-sync-") as tmp:
        run_dir = Path(tmp) / "bench"
        counts = write_record(run_dir, steps)
        size = (run_dir / "events.jsonl").stat().st_size
        for _ in range(repeat):
            for cursor in run_dir.glob("sync-cursor.json*"):
                cursor.unlink()
            exporters = {signal: _Encoding(signal) for signal in ("metrics", "logs", "traces")}
            started = time.perf_counter()
            outcome = Sync(
                find_records([str(run_dir)])[0],
                Target("http://bench.invalid:4318", exporters=exporters),
                Options(max_age=None),
            ).run()[0]
            seconds = time.perf_counter() - started
            if best is None or seconds < best["seconds"]:
                sent = outcome.tally.sent
                best = {
                    "seconds": round(seconds, 3),
                    "points": sent["metrics"],
                    "log_records": sent["logs"],
                    "spans": sent["traces"],
                    "request_bytes": sum(e.bytes for e in exporters.values()),
                }
    assert best is not None
    lines = sum(counts.values()) + 1
    return {
        "steps": steps,
        "record_lines": lines,
        "record_bytes": size,
        **best,
        "lines_per_s": round(lines / best["seconds"]),
        "points_per_s": round(best["points"] / best["seconds"]),
        "log_records_per_s": round(best["log_records"] / best["seconds"]),
        "record_mb_per_s": round(size / best["seconds"] / 1e6, 2),
    }


def render(result: dict[str, Any]) -> list[str]:
    return [
        f"A synthetic offline record of {result['steps']:,} steps ({result['record_lines']:,} "
        f"lines, {result['record_bytes'] / 1e6:.1f} MB) synced into OTLP requests, encoded "
        f"and dropped, best of the repeats: {result['seconds']} s.",
        "",
        "| what | sent | per second |",
        "|---|---|---|",
        f"| record lines read | {result['record_lines']:,} | {result['lines_per_s']:,} |",
        f"| metric points (15 s cadence) | {result['points']:,} | {result['points_per_s']:,} |",
        f"| log records | {result['log_records']:,} | {result['log_records_per_s']:,} |",
        f"| spans | {result['spans']:,} | |",
        f"| request bytes | {result['request_bytes']:,} | |",
        f"| record | {result['record_bytes']:,} B | {result['record_mb_per_s']} MB |",
    ]


BENCHMARK = harness.Benchmark(
    name="sync_throughput",
    title="traintel sync's own cost: replay, OTLP items, encoding",
    profiles={
        "full": {"steps": 200_000, "repeat": 3},
        "quick": {"steps": 50_000, "repeat": 2},
        "tiny": {"steps": 600, "repeat": 1},
    },
    run=run,
    render=render,
)
