"""Honest non-finite values: the live view, /status, the summary and the command line show the
value as logged (NaN) and the first non-finite step; warnings say the first, then a count; a run
can stop at the first non-finite loss."""

from __future__ import annotations

import io
import json
import math
import sys
import urllib.request

import pytest

from conftest import logs_summary_json, read_lines
from traintel.core.errors import NonFiniteLossError
from traintel.reports.render import progress_text


def test_a_diverged_run_shows_nan_everywhere_not_its_last_finite_loss(quiet_run):
    with quiet_run(http_port=0, total_steps=50) as run:
        for step in range(1, 51):
            run.log(loss=1.0 / step if step < 12 else float("nan"), lr=0.1)
        run.flush()
        with urllib.request.urlopen(f"http://127.0.0.1:{run.server.port}/status") as response:
            status = json.load(response)
        line = progress_text(run.state, None)
    assert math.isnan(run.state.latest["loss"])
    assert status["latest"]["loss"] == "nan"
    assert status["nonfinite"] == {"loss": {"count": 39, "first_step": 12, "last_step": 50}}
    assert "loss nan" in line
    loss = run.summary["loss"]
    assert loss["final"] == "nan" and loss["last_finite"] == pytest.approx(1 / 11)
    assert loss["nonfinite"] == 39 and loss["first_nonfinite_step"] == 12
    assert run.summary["nonfinite"] == {"loss": {"count": 39, "first_step": 12, "last_step": 50}}
    shown = logs_summary_json(run.dir)
    assert shown["loss"]["final"] == "nan" and shown["loss"]["first_nonfinite_step"] == 12
    assert shown["nonfinite"]["loss"]["count"] == 39


def test_nonfinite_warnings_are_the_first_then_a_count(quiet_run, monkeypatch):
    import traintel.run.events as events

    with quiet_run() as run:
        for step in range(1, 1001):
            run.log(loss=float("nan"), grad_norm=float("inf") if step > 500 else 1.0)
            if step == 600:
                monkeypatch.setattr(events, "NONFINITE_REPORT_S", 0.0)  # a report is due
                run.log_values(probe=1.0)  # nothing to report for a values line alone
    warnings = [(e["event"], e["fields"]) for e in read_lines(run.dir).of("event")]
    assert warnings[0] == ("nonfinite_loss", {"metric": "loss", "value": "nan", "first": True})
    assert warnings[1] == (
        "nonfinite_value",
        {"metric": "grad_norm", "value": "inf", "first": True},
    )
    # then counts, never a line per step: at most one per metric per report interval, and the
    # rest at the end
    counts = [fields for _, fields in warnings[2:]]
    assert len(counts) <= 6
    assert sum(c["count"] for c in counts if c["metric"] == "loss") == 999
    assert sum(c["count"] for c in counts if c["metric"] == "grad_norm") == 499
    assert counts[-1]["total"] in (1000, 500)


def test_the_console_says_at_which_step_the_first_nonfinite_loss_came(quiet_run, monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    with quiet_run(console_logs=True) as run:
        for step in range(1, 200):
            run.log(loss=float("nan") if step >= 7 else 1.0)
    text = stream.getvalue()
    assert text.count("loss is nan at step 7: the first non-finite loss") == 1
    assert text.count("non-finite") <= 3  # the first, then a count at the end


def test_halt_on_nonfinite_stops_at_the_first_nonfinite_loss(quiet_run):
    with pytest.raises(
        NonFiniteLossError,
        match="loss is nan at step 4; the run stops at the first non-finite loss",
    ):
        with quiet_run(halt_on_nonfinite=True) as run:
            for step in range(1, 10):
                run.log(loss=float("nan") if step == 4 else 1.0, grad_norm=float("nan"))
    lines = read_lines(run.dir)
    assert [s["step"] for s in lines.of("step")] == [1, 2, 3, 4]  # the NaN step is kept
    (error,) = lines.of("error")
    assert error["error_type"] == "nonfinite_loss" and error["context"]["step"] == 4
    assert run.summary["status"] == "failed"


def test_halt_on_nonfinite_inside_track(quiet_run):
    with pytest.raises(NonFiniteLossError):
        with quiet_run(halt_on_nonfinite=True) as run:
            for batch in run.track(range(10)):
                run.log(loss=float("inf") if batch == 5 else 1.0)
    assert [s["metrics"]["loss"] for s in read_lines(run.dir).of("step")][-1] == "inf"


def test_a_nonfinite_loss_is_not_handed_to_the_otel_sdk(tmp_path, quiet, caplog):
    """Found auditing issue 29 (finding 2's NaN under ``train/loss``): the observable gauges
    handed the SDK the NaN loss, which it drops with a warning on the console at every export
    ("Callback returned a non-finite value nan for instrument traintel_loss"), twice (the loss and
    ``traintel_metric``) for as long as the run stays diverged. The NaN is counted by
    ``traintel_nonfinite_loss_total`` and ``traintel_logged_nonfinite_total`` instead; the
    gauges keep their finite series."""
    import traintel
    from traintel.testing import capture

    with caplog.at_level("WARNING"), capture() as telemetry:
        with traintel.init(project="t", dir=str(tmp_path), **{**quiet, "otlp": None}) as run:
            run.log({"train/loss": 0.5, "acc": 0.1})
            run.log({"train/loss": float("nan"), "acc": float("inf")})
            telemetry.collect()
    said = [r.getMessage() for r in caplog.records if "non-finite value" in r.getMessage()]
    assert said == []
    assert telemetry.metric("traintel_nonfinite_loss_total")[-1] == 1
    assert all(math.isfinite(v) for v in telemetry.metric("traintel_metric"))
