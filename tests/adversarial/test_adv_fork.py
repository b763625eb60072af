"""Forked data-loader workers, against the real collector: a worker inherits the run but exports
nothing of it (its copy of the state is the parent's at the fork, frozen) and writes nothing to
its record, even when the user's dataset calls the run."""

from __future__ import annotations

import json

import pytest
from adv_helpers import run_script, script_env, step_numbers

from reliability_log import record
from stack_fixture import eventually

SCRIPT = """
import os, sys, time, torch, traintel
from torch.utils.data import DataLoader, Dataset

run = traintel.init(project="forks", dir=sys.argv[1], progress="off", sample_interval=0,
                    otlp=True, flush_interval=0.05, step_span_every=1)

class Slow(Dataset):
    def __init__(self, run):
        self.run = run  # user code that keeps the run, as datasets and collate_fns do
    def __len__(self):
        return 64
    def __getitem__(self, i):
        if i % 8 == 0:
            self.run.event("from_worker", pid=os.getpid())
            with self.run.span("worker_span"):
                pass
            self.run.logger("worker").warning("from worker %d", os.getpid())
        time.sleep(0.03)
        return torch.tensor([float(i)])

for i in range(10):
    run.log(loss=1.0, step_s=0.01)
loader = DataLoader(Slow(run), batch_size=4, num_workers=2)  # workers forked each epoch
for epoch in range(2):
    for batch in run.track(loader):
        run.log(loss=float(batch.mean()))
run.finish()
print(run.id)
"""


def _points(tap: bytes, run_id: str, name: str) -> list[tuple[int, float]]:
    """(time, value) of every data point of ``name`` for ``run_id`` the collector received."""
    points = []
    for line in tap.splitlines():
        for resource in json.loads(line).get("resourceMetrics", []):
            for scope in resource.get("scopeMetrics", []):
                for metric in scope.get("metrics", []):
                    if metric["name"] != name:
                        continue
                    for point in (metric.get("sum") or metric.get("gauge") or {}).get(
                        "dataPoints", []
                    ):
                        labels = {
                            a["key"]: next(iter(a["value"].values()))
                            for a in point.get("attributes", [])
                        }
                        if labels.get("run") == run_id:
                            value = point.get("asDouble", point.get("asInt"))
                            points.append((int(point["timeUnixNano"]), float(value)))
    return points


@pytest.mark.stack
def test_forked_workers_export_nothing_to_the_real_collector(stack, tmp_path):
    env = script_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=stack.endpoints["otlp_http"],
        OTEL_METRIC_EXPORT_INTERVAL="150",
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_BLRP_SCHEDULE_DELAY="100",
    )
    proc = run_script(SCRIPT, env=env, args=[str(tmp_path)], timeout=300)
    assert proc.returncode == 0, proc.stderr
    run_id = proc.stdout.strip().splitlines()[-1]

    def received():
        taps = {s: stack.tap_file(s).read_bytes() for s in ("metrics", "traces", "logs")}
        steps = _points(taps["metrics"], run_id, "traintel_steps_total")
        return (taps, steps) if steps and max(v for _, v in steps) == 42 else None

    taps, steps = eventually(received, 60, what="the run's final step count at the collector")
    values = [v for _, v in sorted(steps)]
    assert values == sorted(values), values  # a worker's frozen count would jump backwards
    ours = [
        line
        for line in taps["traces"].splitlines() + taps["logs"].splitlines()
        if run_id.encode() in line
    ]
    assert ours and not [
        line
        for line in ours
        if b"worker_span" in line or b"from_worker" in line or b"from worker" in line
    ]
    assert step_numbers(tmp_path / run_id) == list(range(1, 43))
    record(
        "forked DataLoader workers (2 per epoch, 2 epochs) whose dataset calls the run",
        "workers export nothing (real collector) and write nothing to the record",
        f"{len(values)} exported points of traintel_steps_total, never decreasing, last 42; "
        "0 worker spans, events or logs at the collector or in the record; 42/42 steps",
    )
