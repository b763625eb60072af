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


def test_the_urls_are_a_native_stacks_when_it_runs_behind_the_endpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINTEL_STACK_DIR", str(tmp_path))
    monkeypatch.delenv("TRAINTEL_PROMETHEUS_URL", raising=False)
    monkeypatch.delenv("TRAINTEL_GRAFANA_URL", raising=False)
    assert demo.stack_urls("http://localhost:4318") == {
        "prometheus": "http://127.0.0.1:9090", "grafana": "http://127.0.0.1:3000"}
    (tmp_path / "stack.json").write_text(json.dumps({"endpoints": {
        "otlp_http": "http://127.0.0.1:41318", "prometheus": "http://127.0.0.1:49090",
        "grafana": "http://127.0.0.1:43000"}}))
    assert demo.stack_urls("http://127.0.0.1:41318")["prometheus"] == "http://127.0.0.1:49090"
    assert demo.stack_urls("http://127.0.0.1:4318")["prometheus"] == "http://127.0.0.1:9090"
    monkeypatch.setenv("TRAINTEL_GRAFANA_URL", "https://grafana.example")
    assert demo.stack_urls("http://127.0.0.1:4318")["grafana"] == "https://grafana.example"
