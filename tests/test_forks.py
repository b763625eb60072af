"""A forked child (a data-loader worker) inherits a live run but none of its threads: each worker
resets itself there (traintel.core.forks), so the child never writes the parent's record, exports the
parent's telemetry, samples its GPUs or finishes its run."""

from __future__ import annotations

import json
import os
import sys

import pytest

import traintel
from traintel.testing import capture

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _in_child(check) -> dict:
    """Run ``check`` in a forked child; return what it reported (a dict) or fail with its error."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without atexit handlers or pytest's teardown
        os.close(read)
        try:
            result = {"ok": check()}
        except BaseException as exc:  # noqa: BLE001  (reported to the parent)
            result = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write, json.dumps(result, default=str).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        report = json.loads(pipe.read() or b"{}")
    os.waitpid(pid, 0)
    assert "error" not in report, report.get("error")
    return report["ok"]


def test_a_forked_child_leaves_the_parents_run_alone(tmp_path, recorded, quiet):
    excepthook = sys.excepthook
    with capture() as telemetry:
        with traintel.init(
            project="forks", dir=str(tmp_path), **{**quiet, "otlp": None, "sample_interval": 60}
        ) as run:
            run.log(loss=1.0)
            run.flush()
            size = (run.dir / "events.jsonl").stat().st_size
            snapshots = len(telemetry._collected)

            def child() -> dict:
                run.log(loss=2.0)
                run.event("from_the_child")
                run.flush()
                run.otlp.meter_provider.force_flush()  # exports nothing from here
                run.finish()  # the parent's to finish: nothing happens
                return {
                    "record_grew": (run.dir / "events.jsonl").stat().st_size != size,
                    "exported": len(telemetry._collected) != snapshots,
                    "finished_it": run.state.status != "running",
                    "current": traintel.current_run() is not None,
                    "sampling": bool(run.samplers.samplers),
                    "hooked": sys.excepthook is not excepthook,
                }

            assert _in_child(child) == {
                "record_grew": False,
                "exported": False,
                "finished_it": False,
                "current": False,
                "sampling": False,
                "hooked": False,
            }
            run.log(loss=3.0)
    steps = recorded(run.dir).of("step")
    assert [s["metrics"]["loss"] for s in steps] == [1.0, 3.0]
    assert not [e for e in recorded(run.dir).of("event") if e["event"] == "from_the_child"]
    assert run.summary["steps"] == 2 and run.summary["status"] == "finished"
