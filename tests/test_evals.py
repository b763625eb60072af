"""Best-so-far by meaning (traintel.run.evals): a metric's direction from goals=, else from the whole
tokens of its name; no best claim for a name that says nothing; the direction written into the
record and summary.json."""

from __future__ import annotations

import pytest

from conftest import read_lines
from traintel.run.evals import goal_from_name


@pytest.mark.parametrize(
    ("name", "goal"),
    [
        # what substring matching got wrong
        ("answer_f1", "max"),
        ("sentiment_accuracy", "max"),
        ("val_nll", "min"),
        ("val_bpc", "min"),
        ("val_kl", "min"),
        # the usual ones, in the usual spellings
        ("val_loss", "min"),
        ("eval/loss", "min"),
        ("valLoss", "min"),
        ("test.error", "min"),
        ("wer", "min"),
        ("dev_cer", "min"),
        ("val_ppl", "min"),
        ("perplexity", "min"),
        ("fid", "min"),
        ("val_mae", "min"),
        ("mse", "min"),
        ("rmse", "min"),
        ("top1_err", "min"),
        ("val_acc", "max"),
        ("eval/top1-acc", "max"),
        ("accuracy", "max"),
        ("macro_f1", "max"),
        ("roc_auc", "max"),
        ("bleu", "max"),
        ("bleu4", "max"),
        ("rouge1", "max"),
        ("rougeL", "max"),
        ("map50", "max"),
        ("precision", "max"),
        ("recall", "max"),
        # nothing said, or both: no guess
        ("val_time", None),
        ("latency_ms", None),
        ("score", None),
        ("loss_acc", None),
        ("losses_acc", "max"),
        ("precision_loss", None),
        ("wers", None),
    ],
)
def test_the_direction_comes_from_whole_name_tokens(name, goal):
    assert goal_from_name(name) == goal


def test_unknown_metrics_get_no_best_and_one_line_asking_for_goals(quiet_run):
    with quiet_run() as run:
        assert run.log_eval(score=1.0, val_loss=0.5) == {"score": False, "val_loss": True}
        assert run.log_eval(score=2.0, val_loss=0.6) == {"score": False, "val_loss": False}
    lines = read_lines(run.dir)
    asks = [line for line in lines.of("log") if "goals={'score': 'max'}" in line["message"]]
    assert len(asks) == 1 and asks[0]["level"] == "warning"
    last = lines.of("eval")[-1]
    assert last["mode"] == {"score": None, "val_loss": "min"}
    assert last["best"] == {"score": None, "val_loss": 0.5}
    assert last["best_step"] == {"score": None, "val_loss": 0}
    assert run.summary["eval"]["score"] == {
        "last": 2.0,
        "best": None,
        "best_step": None,
        "mode": None,
    }


def test_goals_from_init_and_from_log_eval(quiet_run):
    with quiet_run(goals={"score": "max"}, strict=True) as run:
        run.log(step=10, loss=1.0)
        assert run.log_eval(score=1.0, val_time=5.0, goals={"val_time": "min"}) == {
            "score": True,
            "val_time": True,
        }
        run.log(step=20, loss=1.0)
        assert run.log_eval(score=0.5, val_time=4.0) == {"score": False, "val_time": True}
        with pytest.raises(ValueError, match="the goal of 'bleu' must be one of 'min', 'max'"):
            run.log_eval(bleu=1.0, goals={"bleu": "up"})
        with pytest.raises(TypeError, match="goals must be a dict"):
            run.log_eval(bleu=1.0, goals=["bleu"])
    assert run.summary["eval"]["score"] == {
        "last": 0.5,
        "best": 1.0,
        "best_step": 10,
        "mode": "max",
    }
    assert run.summary["eval"]["val_time"]["best_step"] == 20


def test_a_nonfinite_eval_is_recorded_as_it_is_and_never_best(quiet_run):
    with quiet_run() as run:
        run.log_eval(val_loss=0.5)
        assert run.log_eval(val_loss=float("nan")) == {"val_loss": False}
    assert run.summary["eval"]["val_loss"] == {
        "last": "nan",
        "best": 0.5,
        "best_step": 0,
        "mode": "min",
    }
