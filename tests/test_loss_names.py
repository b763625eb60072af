"""The training loss by the names users give it (issue 29, finding 2): ``train/loss`` (W&B, HF),
``train_loss`` (Lightning), ``loss/train`` (TensorBoard) and the rest of ``LOSS_NAMES``, or the
name declared with ``traintel.init(loss=...)``, is the loss for the summary, the progress line,
``traintel_loss``, non-finite counts (``traintel_nonfinite_loss_total``, so ``LossNotFinite``)
and ``halt_on_nonfinite``, the same in ``traintel logs summary`` as in summary.json."""

from __future__ import annotations

import pytest

from conftest import logs_summary_json, read_lines
from traintel.core.errors import NonFiniteLossError
from traintel.export.readings import readers
from traintel.reports.render import progress_text


@pytest.mark.parametrize(
    "name", ["loss", "train/loss", "train_loss", "training_loss", "loss/train"]
)
def test_the_loss_is_recognised_by_the_names_users_use(quiet_run, name):
    with quiet_run(total_steps=20) as run:
        for i in range(1, 21):
            run.log({name: 1.0 / i, "eval_loss": 5.0, "lr": 0.1}, step=i)
        run.flush()
        shown = progress_text(run.state, None)
        ((exported, _),) = readers({})["traintel_loss"](run.state)
    loss = run.summary["loss"]
    assert (loss["key"], loss["final"], loss["count"]) == (name, 1 / 20, 20)
    assert loss["best"] == 1 / 20 and loss["max"] == 1.0
    assert "loss 0.05" in shown and exported == 1 / 20
    assert logs_summary_json(run.dir)["loss"] == loss


def test_a_nonfinite_train_loss_is_counted_and_halts(quiet_run):
    with pytest.raises(NonFiniteLossError, match="train/loss is nan at step 4"):
        with quiet_run(halt_on_nonfinite=True) as run:
            for i in range(1, 10):
                run.log(
                    {"train/loss": float("nan") if i == 4 else 1.0, "val/acc": float("nan")}, step=i
                )
    assert run.state.nonfinite_losses == 1  # traintel_nonfinite_loss_total: val/acc is no loss
    ((readout, _),) = readers({})["traintel_nonfinite_loss_total"](run.state)
    assert readout == 1
    lines = read_lines(run.dir)
    assert [s["step"] for s in lines.of("step")] == [1, 2, 3, 4]
    events = {e["event"] for e in lines.of("event")}
    assert {"nonfinite_loss", "nonfinite_value"} <= events
    assert (
        run.summary["loss"]["nonfinite"] == 1 and run.summary["loss"]["first_nonfinite_step"] == 4
    )


def test_a_declared_loss_name_wins_over_the_names(quiet_run):
    with quiet_run(loss="objective") as run:
        for i in range(1, 6):
            run.log(objective=2.0 / i, train_loss=9.0, step=i)
    lines = read_lines(run.dir)
    assert lines.of("run_start")[0]["loss_key"] == "objective"
    assert (run.summary["loss"]["key"], run.summary["loss"]["final"]) == ("objective", 0.4)
    assert logs_summary_json(run.dir)["loss"]["final"] == 0.4


def test_a_declared_loss_name_must_be_a_name(quiet_run):
    with pytest.raises(TypeError, match="loss must be the name the loss is logged under"):
        quiet_run(loss=3)


def test_epoch_level_values_do_not_pick_the_loss(quiet_run):
    """run_glue_no_trainer's end-of-epoch ``train_loss`` (an epoch mean, log_values) does not
    become the step loss: the step lines' ``loss`` does."""
    with quiet_run() as run:
        run.log_values(train_loss=3.0)
        for i in range(1, 4):
            run.log(loss=1.0 / i, step=i)
    assert (run.summary["loss"]["key"], run.summary["loss"]["count"]) == ("loss", 3)
    assert run.state.loss_key == "loss"
