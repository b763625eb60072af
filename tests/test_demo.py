"""The demo's pacing and the URLs it prints (the demo itself runs in test_end_to_end and, from an
installed wheel, in test_wheel_install)."""

from __future__ import annotations

import json

from traintel import demo


class Clock:
    """time.monotonic and time.sleep on a clock of the test's own: no real waiting."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def test_pace_spreads_the_steps_and_never_bursts_after_a_slow_step(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(demo.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(demo.time, "sleep", clock.sleep)
    pace = demo.Pace(duration_s=10.0, steps=100)  # 0.1 s per step
    clock.now += 0.02  # a step of 20 ms
    pace.wait()
    assert clock.slept == [0.08]
    clock.now += 0.5  # a slow step: the next one is not hurried
    pace.wait()
    assert clock.slept == [0.08]
    clock.now += 0.03
    pace.wait()
    assert clock.slept == [0.08, 0.07]
    unpaced = demo.Pace(duration_s=0.0, steps=100)
    unpaced.wait()
    assert clock.slept == [0.08, 0.07]


def test_the_urls_are_composes_unless_a_native_stack_runs(tmp_path, monkeypatch):
    """A stack.json whose collector is not running is a stopped stack: compose's URLs (the
    running case: test_stack_discovery.py)."""
    monkeypatch.setenv("TRAINTEL_STACK_DIR", str(tmp_path))
    for name in ("TRAINTEL_PROMETHEUS_URL", "TRAINTEL_GRAFANA_URL", "TRAINTEL_ALERTMANAGER_URL"):
        monkeypatch.delenv(name, raising=False)
    compose = {
        "prometheus": "http://127.0.0.1:9090",
        "grafana": "http://127.0.0.1:3000",
        "alertmanager": "http://127.0.0.1:9093",
    }
    assert demo.stack_urls("http://localhost:4318") == compose
    (tmp_path / "stack.json").write_text(
        json.dumps(
            {
                "endpoints": {
                    "otlp_http": "http://127.0.0.1:41318",
                    "prometheus": "http://127.0.0.1:49090",
                    "grafana": "http://127.0.0.1:43000",
                }
            }
        )
    )
    assert demo.stack_urls("http://127.0.0.1:41318") == compose
    monkeypatch.setenv("TRAINTEL_GRAFANA_URL", "https://grafana.example")
    assert demo.stack_urls("http://127.0.0.1:4318")["grafana"] == "https://grafana.example"


def test_the_demo_leaves_no_checkpoint_directory_in_tmp(tmp_path, monkeypatch, quiet):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    run = demo.train(
        demo.DemoConfig(epochs=2, steps_per_epoch=3, batch_size=8),
        dir=str(tmp_path / "runs"),
        **quiet,
    )
    assert run.summary is not None
    checkpoints = [
        line
        for line in (run.dir / "events.jsonl").read_text().splitlines()
        if '"checkpoint"' in line
    ]
    assert checkpoints  # it did write them, in its own temporary directory
    assert list((tmp_path / "tmp").glob("traintel-demo-ckpt-*")) == []
