"""Run records written the way docs/record-format.md specifies, for testing readers without the
core library: one JSON object per line, rotation by renaming to ``events.jsonl.N``."""

from __future__ import annotations

from pathlib import Path

import orjson

T0 = 1_700_000_000.0
TRACEBACK = (
    'Traceback (most recent call last):\n  File "train.py", line 12, in step\n'
    "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
)


class RecordWriter:
    """Appends records to ``directory/events.jsonl`` with a fake clock advancing ``dt`` per line."""

    def __init__(
        self, directory: Path, run: str = "run-a", rank: int = 0, t0: float = T0, dt: float = 0.5
    ):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "events.jsonl"
        self.run, self.rank, self.ts, self.dt = run, rank, t0, dt
        self.file = open(self.path, "ab")

    def write(self, type: str, level: str = "info", **fields) -> dict:
        self.ts += self.dt
        record = {
            "ts": self.ts,
            "type": type,
            "level": level,
            "run": self.run,
            "rank": self.rank,
            **fields,
        }
        self.file.write(orjson.dumps(record) + b"\n")
        self.file.flush()
        return record

    def rotate(self) -> None:
        """As the core's writer does: ``.N`` becomes ``.N+1``, the live file ``.1``; reopen."""
        self.file.close()
        rotated = sorted(self.directory.glob("events.jsonl.*"), key=lambda p: -int(p.suffix[1:]))
        for p in rotated:
            p.rename(p.with_suffix(f".{int(p.suffix[1:]) + 1}"))
        self.path.rename(self.directory / "events.jsonl.1")
        self.file = open(self.path, "ab")

    def close(self) -> None:
        self.file.close()


def write_run(
    directory: Path,
    run: str = "run-a",
    steps: int = 20,
    lr: float = 0.001,
    rank: int = 0,
    world_size: int = 1,
    rotate_every: int | None = None,
    error: bool = True,
    status: str = "finished",
    truncated: bool = False,
) -> Path:
    """A complete small run: start, config, steps (loss 2.0 falling by 0.05, 32 samples, a memory
    metric), an eval every 10 steps, a warning, a checkpoint, an optional OOM error, instruments,
    run_end. ``truncated`` ends the file with a torn line, as a crash mid-write leaves it."""
    w = RecordWriter(directory, run, rank)
    w.write(
        "run_start",
        project="demo",
        name="tiny",
        host="node1",
        pid=1,
        world_size=world_size,
        local_rank=rank,
        traintel_version="0.1.0",
        total_epochs=2,
        total_steps=steps,
    )
    config = {"lr": lr, "batch_size": 32, "model": {"layers": 2, "api_key": "[redacted]"}}
    w.write("config", config=config, config_hash="sha256:abc", seed=0)
    for step in range(1, steps + 1):
        epoch = 0 if step <= steps // 2 else 1
        w.write(
            "step",
            step=step,
            epoch=epoch,
            step_s=0.5,
            data_wait_s=0.05,
            metrics={
                "loss": 2.0 - 0.05 * step,
                "lr": lr,
                "samples": 32,
                "gpu_mem_gb": 1.0 + step / 100,
            },
        )
        if step % 10 == 0:
            w.write(
                "eval",
                step=step,
                epoch=epoch,
                metrics={"val_loss": 2.5 - 0.1 * step},
                is_best={"val_loss": True},
                best={"val_loss": 2.5 - 0.1 * step},
            )
        if step == steps // 2:
            w.write("epoch", epoch=0, step=step, duration_s=5.0, steps=step)
            w.write(
                "log",
                level="warning",
                logger="train",
                message="loss spike at step 10",
                trace_id=None,
                span_id=None,
                fields={"spike": 3.2},
            )
            w.write(
                "event", event="checkpoint", fields={"path": "/ckpt/10.pt"}, step=step, epoch=epoch
            )
        if rotate_every and step % rotate_every == 0:
            w.rotate()
    if error:
        w.write(
            "error",
            level="error",
            error_type="oom",
            severity="high",
            exc_type="RuntimeError",
            message="CUDA out of memory. Tried to allocate 2.00 GiB",
            operation="forward",
            traceback=TRACEBACK,
            context={"batch_size": 32},
            hints=["Reduce the batch size."],
            step=steps,
            epoch=1,
            trace_id=None,
            span_id=None,
        )
    for name, kind in (("data_load", "timer"), ("batches", "counter")):
        w.write(
            "instrument",
            kind=kind,
            name=name,
            count=steps,
            total=steps * 0.1,
            mean=0.1,
            min=0.05,
            max=0.2,
            p50=0.1,
            p95=0.18,
            p99=0.2,
            last=0.1,
        )
    w.write("run_end", status=status, duration_s=w.ts + w.dt - T0, steps=steps)  # at its own ts
    if truncated:
        w.file.write(b'{"ts": 1700000999.0, "type": "step", "lev')
    w.close()
    return Path(directory)
