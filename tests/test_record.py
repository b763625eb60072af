"""The local run record: the demo's record is complete and its summary can be recomputed;
secrets are redacted; rotation and unwritable directories lose nothing silently."""

from __future__ import annotations

import json
import math
import os
import statistics

import pytest

from traintel.demo import DemoConfig, train
from traintel.testing import capture


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, quiet):
    run_dir = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig(epochs=2, steps_per_epoch=25, batch_size=16, nan_at_step=7)
    return train(
        cfg, dir=str(run_dir), **{k: v for k, v in quiet.items() if k != "otlp"}, otlp=False
    )


def test_demo_record_has_every_step(demo_run, recorded):
    lines = recorded(demo_run.dir)
    steps = lines.of("step")
    assert [s["step"] for s in steps] == list(range(1, 51))
    assert all(s["step_s"] > 0 and s["data_wait_s"] >= 0 for s in steps)
    assert {t for line in lines for t in [line["type"]]} >= {
        "run_start",
        "config",
        "step",
        "eval",
        "epoch",
        "event",
        "milestone",
        "instrument",
        "run_end",
    }
    config = json.loads((demo_run.dir / "config.json").read_text())
    assert config["seed"] == 0 and config["config"]["epochs"] == 2
    assert config["config_hash"].startswith("sha256:")


def test_demo_summary_equals_what_the_record_says(demo_run, recorded):
    lines = recorded(demo_run.dir)
    summary = json.loads((demo_run.dir / "summary.json").read_text())
    steps = lines.of("step")
    losses = [s["metrics"]["loss"] for s in steps]
    finite = [x for x in losses if not isinstance(x, str)]
    assert summary["steps"] == len(steps) == 50
    assert summary["samples"] == sum(s["metrics"]["samples"] for s in steps)
    assert summary["tokens"] == sum(s["metrics"]["tokens"] for s in steps)
    assert summary["loss"]["nonfinite"] == losses.count("nan") == 1
    assert summary["loss"]["count"] == len(finite)
    assert summary["loss"]["final"] == finite[-1]
    assert summary["loss"]["min"] == summary["loss"]["best"] == min(finite)
    assert summary["loss"]["max"] == max(finite)
    assert summary["loss"]["mean"] == pytest.approx(statistics.fmean(finite))
    assert summary["loss"]["std"] == pytest.approx(statistics.pstdev(finite))
    active = steps[-1]["ts"] - (steps[0]["ts"] - steps[0]["step_s"])
    assert summary["throughput"]["steps_per_s"] == pytest.approx(50 / active)
    step_times = [s["step_s"] for s in steps]
    assert summary["step_time"]["mean_s"] == pytest.approx(statistics.fmean(step_times))
    assert summary["step_time"]["p50_s"] == pytest.approx(statistics.median(step_times))
    waits = sum(s["data_wait_s"] for s in steps)
    assert summary["step_time"]["data_wait_fraction"] == pytest.approx(waits / sum(step_times))
    evals = lines.of("eval")
    assert summary["eval"]["val_loss"]["best"] == min(e["metrics"]["val_loss"] for e in evals)
    assert summary["eval"]["accuracy"]["best"] == max(e["metrics"]["accuracy"] for e in evals)
    assert summary["errors"]["total"] == len(lines.of("error")) == 0
    assert summary["record"] == {"lines": len(lines), "dropped": 0}
    timer = next(i for i in lines.of("instrument") if i["name"] == "forward_backward")
    assert summary["instruments"]["forward_backward"]["count"] == timer["count"] == 50


def test_secrets_never_reach_the_record(monkeypatch, quiet_run):
    monkeypatch.setenv("WANDB_API_KEY", "env-secret-value-123")
    config = {"lr": 0.1, "db": {"password": "hunter2hunter2"}, "hf_token": "hf_abcdefghij"}
    with capture() as telemetry:
        with pytest.raises(RuntimeError):
            with quiet_run(config=config, otlp=None) as run:
                run.logger("data").info("connecting with hunter2hunter2")
                run.event("login", token="hf_abcdefghij", note="key is env-secret-value-123")
                with run.span("connect"):
                    raise RuntimeError("auth failed for hf_abcdefghij")
    written = "".join(p.read_text() for p in run.dir.iterdir())
    assert (run.dir / "crash-report.json").exists()
    exported = repr([(r.body, dict(r.attributes or {})) for r in telemetry.log_records()]) + repr(
        [
            (
                s.name,
                dict(s.attributes),
                [(e.name, dict(e.attributes)) for e in s.events],
                s.status.description,
            )
            for s in telemetry.spans.get_finished_spans()
        ]
    )
    assert "auth failed for" in exported and "connecting with" in exported
    for secret in ("hunter2hunter2", "hf_abcdefghij", "env-secret-value-123"):
        assert secret not in written
        assert secret not in exported
    assert "[REDACTED]" in (run.dir / "config.json").read_text()
    assert run.config["lr"] == 0.1


def test_config_hash_is_stable_and_key_order_independent(quiet_run):
    hashes = set()
    for config in ({"a": 1, "b": {"c": 2}}, {"b": {"c": 2}, "a": 1}):
        with quiet_run(config=config) as run:
            pass
        hashes.add(run.config_hash)
    assert len(hashes) == 1


def test_rotation_keeps_every_line(quiet_run, recorded):
    with quiet_run(max_record_bytes=20_000) as run:
        for i in range(1500):
            run.log(loss=float(i))
    rotated = sorted(run.dir.glob("events.jsonl.*"))
    assert len(rotated) >= 2
    steps = recorded(run.dir).of("step")
    assert [s["step"] for s in steps] == list(range(1, 1501))


@pytest.mark.skipif(
    os.geteuid() == 0,
    reason="root ignores directory permissions; the RLIMIT_FSIZE test covers "
    "write failures for root",
)
def test_unwritable_directory_warns_once_and_training_continues(tmp_path, caplog, quiet_run):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with quiet_run(dir=str(locked)) as run:
        for _ in range(10):
            run.log(loss=1.0)
    assert run.summary["steps"] == 10
    assert run.state.dropped > 0
    assert sum("cannot write the run record" in r.message for r in caplog.records) == 1


def test_file_size_limit_warns_once_and_training_continues(tmp_path, recorded):
    """RLIMIT_FSIZE makes writes fail with EFBIG (SIGXFSZ is ignored by the run), as a full disk
    would with ENOSPC."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import resource, json, traintel
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
        run = traintel.init(project="t", dir={str(tmp_path)!r}, progress="off", otlp=False,
                            sample_interval=0, flush_interval=0.01)
        for i in range(3000):
            run.log(loss=1.0)
        run.finish()
        print(json.dumps({{"steps": run.state.step, "dropped": run.state.dropped}}))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["steps"] == 3000 and result["dropped"] > 0
    assert proc.stderr.count("cannot write the run record") == 1
    lines = recorded(next(tmp_path.iterdir()))  # whatever was written still parses
    assert lines and all(math.isfinite(line["ts"]) for line in lines)
