"""``run.summary`` as W&B users write it (issue 29, finding 3): a mapping during the run, kept in
summary.json's ``summary`` with the bests of ``define_metric``; after the end it also reads the
computed summary."""

from __future__ import annotations

import json

import numpy as np
import torch

from conftest import read_lines
from traintel.export.readings import readers


def test_run_summary_is_a_mapping_users_write_into(quiet_run):
    with quiet_run() as run:
        run.define_metric("val/acc", summary="max")
        run.define_metric("train/loss", summary="min")
        run.define_metric("lr", summary="last")
        for i in range(1, 6):
            run.log({"train/loss": 1.0 / i, "lr": 0.1 * i}, step=i)
            run.log_eval(step=i, **{"val/acc": [0.5, 0.7, 0.9, 0.8, 0.6][i - 1]})
        run.summary["best_val_acc"] = torch.tensor(0.9)
        run.summary.update({"epochs_done": np.int64(3), "note": "ok", "curve": [1.0, 0.5]})
        run.summary["bad"] = object()  # refused with a warning, never raised
        assert run.summary["note"] == "ok" and "bad" not in run.summary
        exported = dict(
            (labels["key"], value)
            for value, labels in readers({})["traintel_summary_value"](run.state)
        )
        assert exported == {"best_val_acc": 0.8999999761581421, "epochs_done": 3.0}
    kept = json.loads((run.dir / "summary.json").read_text())["summary"]
    assert kept == {
        "best_val_acc": 0.8999999761581421,
        "epochs_done": 3,
        "note": "ok",
        "curve": [1.0, 0.5],
        "val/acc": {"max": 0.9},
        "train/loss": {"min": 0.2},
        "lr": {"last": 0.5},
    }
    (warning,) = [
        line for line in read_lines(run.dir).of("log") if "run.summary['bad']" in line["message"]
    ]
    assert warning["level"] == "warning"
    # after the end the mapping also reads the computed summary, the user's keys first
    assert run.summary["steps"] == 5 and run.summary["note"] == "ok"
    assert run.summary["summary"] == kept


def test_a_run_without_summary_values_writes_none(quiet_run):
    with quiet_run() as run:
        run.log(loss=1.0)
    assert "summary" not in json.loads((run.dir / "summary.json").read_text())
