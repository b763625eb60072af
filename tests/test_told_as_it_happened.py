"""Small findings of issue 29, each as a user meets it: ``run.check_finite`` inside ``run.track``
names the step ``halt_on_nonfinite`` names and counts the loss (7); an all-NaN eval metric with a
known direction gets no "pass goals=" hint (12)."""

from __future__ import annotations

import pytest

from conftest import logs_summary, logs_summary_json, read_lines
from traintel.core.errors import NonFiniteLossError


def test_check_finite_inside_track_names_the_step_under_way_and_counts_it(quiet_run):
    with pytest.raises(NonFiniteLossError, match="loss is inf at step 7"):
        with quiet_run() as run:
            for i, _ in enumerate(run.track(range(10)), start=1):
                loss = run.check_finite(float("inf") if i == 7 else 1.0)
                run.log(loss=loss)
    (error,) = read_lines(run.dir).of("error")
    assert (error["operation"], error["context"]["step"]) == ("check_finite", 7)
    # the line's own step and the run's first error name it too, not step 6 (the last written)
    assert error["step"] == run.summary["errors"]["first"]["step"] == 7
    assert run.state.nonfinite_losses == 1  # traintel_nonfinite_loss_total
    assert run.summary["nonfinite"]["loss"]["count"] == 1
    assert run.summary["nonfinite"]["loss"]["first_step"] == 7


def test_an_all_nan_eval_metric_with_a_direction_is_not_asked_for_goals(quiet_run):
    with quiet_run() as run:
        run.log(loss=1.0)
        run.log_eval(val_loss=float("nan"))
        run.log_eval(val_loss=float("nan"))
    assert run.summary["eval"]["val_loss"]["mode"] == "min"
    shown = logs_summary(run.dir)
    assert "no finite value" in shown and "pass goals=" not in shown


def test_logs_metrics_filter_names_the_kinds_a_run_has(quiet_run):
    from click.testing import CliRunner

    from traintel.cli.logs import logs

    with quiet_run() as run:
        run.log(loss=1.0)
        with run.span("save"):
            pass
    said = CliRunner().invoke(logs, ["metrics", str(run.dir), "--filter", "timers"]).output
    assert "No timers recorded" in said and "operation" in said
    shown = CliRunner().invoke(logs, ["metrics", str(run.dir), "--filter", "operations"]).output
    assert "save" in shown


def test_an_epoch_cut_by_an_exception_is_not_counted_as_ended(quiet_run):
    """Issue 29 finding 9: an epoch the run ended inside (an exception) counted as ended."""
    with pytest.raises(RuntimeError):
        with quiet_run() as run:
            for epoch in run.epochs(3):
                for i in run.track(range(4)):
                    run.log(loss=1.0)
                    if epoch == 1 and i == 2:
                        raise RuntimeError("data shard missing")
    epochs = read_lines(run.dir).of("epoch")
    assert [(e["epoch"], e["cut"]) for e in epochs] == [(0, False), (1, True)]
    assert run.summary["epochs"] == 1
    assert logs_summary_json(run.dir)["epochs"] == 1
