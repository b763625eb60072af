"""The Accelerate tracker, beyond the contract every integration keeps (test_all.py): the
``*_no_trainer.py`` examples' shape (one ``accelerator.log`` per epoch with the evaluation, the
epoch's mean training loss and the step), the tracker as Accelerate hands it out, and the main
process alone recording."""

from __future__ import annotations

import json

import pytest
import torch
from drivers import no_run_left_open  # noqa: F401
from torch.utils.data import DataLoader, TensorDataset

from conftest import read_lines


def test_one_log_per_epoch_counts_every_step_and_sorts_the_evaluation(tmp_path, quiet):
    from accelerate import Accelerator

    from traintel.integrations.accelerate import TraintelTracker

    tracker = TraintelTracker(project="clm", dir=str(tmp_path / "runs"), **quiet)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = DataLoader(TensorDataset(torch.randn(48, 4), torch.randn(48, 1)), batch_size=4)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    accelerator.init_trackers("clm", config={"learning_rate": 0.05, "num_train_epochs": 2})
    assert accelerator.get_tracker("traintel", unwrap=True) is tracker.run
    completed_steps, logged = 0, []
    for epoch in range(2):
        total_loss = 0.0
        for x, y in loader:
            loss = torch.nn.functional.mse_loss(model(x), y)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            completed_steps += 1
            total_loss += loss.item()
        eval_loss = total_loss / len(loader) * 1.1
        logged.append(
            {
                "perplexity": 2.0**eval_loss,
                "eval_loss": eval_loss,
                "train_loss": total_loss / len(loader),
                "epoch": epoch,
                "step": completed_steps,
            }
        )
        accelerator.log(logged[-1], step=completed_steps)
    run = tracker.run
    accelerator.end_training()
    assert run.finished

    lines = read_lines(run.dir)
    assert lines.of("config")[0]["config"] == {"learning_rate": 0.05, "num_train_epochs": 2}
    assert [(s["step"], s["metrics"]) for s in lines.of("step")] == [
        (12, {"loss": logged[0]["train_loss"]}),
        (24, {"loss": logged[1]["train_loss"]}),
    ]
    assert [(e["step"], e["metrics"]) for e in lines.of("eval")] == [
        (12, {"perplexity": logged[0]["perplexity"], "eval_loss": logged[0]["eval_loss"]}),
        (24, {"perplexity": logged[1]["perplexity"], "eval_loss": logged[1]["eval_loss"]}),
    ]
    summary = json.loads((run.dir / "summary.json").read_text())
    # the run started before the first step: the first line at step 12 stands for 12 steps
    assert (summary["steps"], summary["last_step"], summary["status"]) == (24, 24, "finished")
    assert summary["eval"]["perplexity"]["mode"] == "min"
    # the loop's epochs, from the "epoch" it logs (issue 29 finding 8: epochs were 0)
    assert [(e["epoch"], e["steps"], e["cut"]) for e in lines.of("epoch")] == [
        (0, 12, False),
        (1, 12, False),
    ]
    assert (summary["epochs"], summary["epoch"]) == (2, 1)


@pytest.mark.parametrize("every", [4, 5])
def test_the_epoch_mean_loss_stays_apart_from_the_step_losses(tmp_path, quiet, every):
    """Issue 29 finding 8: run_glue_no_trainer's end-of-epoch ``train_loss`` (the epoch's mean)
    landed in the loss curve as a step loss, or as a values line when a step line at that step
    was written already (logging every 4 steps of 12, not every 5), so ``loss.final`` and
    ``metrics.loss`` differed. Now it is an epoch-level value, ``train_loss_epoch``, either way."""
    from accelerate import Accelerator

    from traintel.integrations.accelerate import TraintelTracker

    tracker = TraintelTracker(project="glue", dir=str(tmp_path / "runs"), **quiet)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = DataLoader(TensorDataset(torch.randn(48, 4), torch.randn(48, 1)), batch_size=4)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    accelerator.init_trackers("glue", config={"num_train_epochs": 2})
    completed_steps, step_losses, means = 0, [], []
    for epoch in range(2):
        total_loss = 0.0
        for x, y in loader:
            loss = torch.nn.functional.mse_loss(model(x), y)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            completed_steps += 1
            total_loss += loss.item()
            if completed_steps % every == 0:
                step_losses.append((completed_steps, loss.item()))
                accelerator.log({"train_loss": loss.item()}, step=completed_steps)
        means.append(total_loss / len(loader))
        accelerator.log(
            {"accuracy": 0.5 + epoch / 10, "train_loss": means[-1], "epoch": epoch},
            step=completed_steps,
        )
    run = tracker.run
    accelerator.end_training()

    lines = read_lines(run.dir)
    assert [(s["step"], s["metrics"]["loss"]) for s in lines.of("step")] == step_losses
    assert [v["metrics"] for v in lines.of("values")] == [{"train_loss_epoch": m} for m in means]
    assert [(e["step"], e["metrics"]) for e in lines.of("eval")] == [
        (12, {"accuracy": 0.5}),
        (24, {"accuracy": 0.6}),
    ]
    summary = json.loads((run.dir / "summary.json").read_text())
    assert summary["loss"]["final"] == summary["metrics"]["loss"] == step_losses[-1][1]
    assert summary["metrics"]["train_loss_epoch"] == means[-1]
    # the step lines are the loop's own step reports: every 5 steps, the last is step 20
    last = step_losses[-1][0]
    assert (summary["steps"], summary["last_step"], summary["epochs"]) == (last, last, 2)


def test_a_dict_of_metrics_is_recorded_under_its_names(tmp_path, quiet):
    """Accelerate's ``log`` takes a dict of names to numbers as a value (TensorBoard's tracker
    writes it with ``add_scalars``), and run_glue_no_trainer.py logs its metric so:
    ``{"glue": {"accuracy": ...}, "train_loss": ...}``. Issue 29: the evaluation was left out
    as a non-number; now it is ``glue/accuracy``, an evaluation beside the epoch's loss."""
    from accelerate import Accelerator

    from traintel.integrations.accelerate import TraintelTracker

    tracker = TraintelTracker(project="glue", dir=str(tmp_path / "runs"), **quiet)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers("glue_no_trainer", config={"num_train_epochs": 2})
    for epoch, (accuracy, f1) in enumerate([(0.5, 0.25), (0.75, 0.5)]):
        accelerator.log(
            {
                "glue": {"accuracy": accuracy, "f1": f1, "name": "mrpc"},
                "train_loss": 0.7 - epoch / 10,
                "epoch": epoch,
                "step": 8 * (epoch + 1),
            },
            step=8 * (epoch + 1),
        )
    run = tracker.run
    accelerator.end_training()

    lines = read_lines(run.dir)
    assert [(e["step"], e["metrics"]) for e in lines.of("eval")] == [
        (8, {"glue/accuracy": 0.5, "glue/f1": 0.25}),
        (16, {"glue/accuracy": 0.75, "glue/f1": 0.5}),
    ]
    assert [(s["step"], s["metrics"]) for s in lines.of("step")] == [
        (8, {"loss": 0.7}),
        (16, {"loss": 0.6}),
    ]
    summary = json.loads((run.dir / "summary.json").read_text())
    assert summary["eval"]["glue/accuracy"]["best"] == 0.75


def test_an_epoch_said_at_its_end_has_its_own_steps_and_time(tmp_path, quiet):
    """Issue 29: the *_no_trainer examples name an epoch only in the call at its end, so
    epoch 0's line began there and ran through epoch 1: each epoch line had the next epoch's
    time (the last one's about 0 s) and the epoch's span likewise. Epoch 0 here waits 1 s,
    epoch 1 does not: the lines and the epoch spans say so."""
    import time

    from accelerate import Accelerator

    from traintel.integrations.accelerate import TraintelTracker
    from traintel.testing import capture

    with capture() as telemetry:
        tracker = TraintelTracker(project="glue", dir=str(tmp_path / "runs"), **quiet)
        accelerator = Accelerator(cpu=True, log_with=tracker)
        accelerator.init_trackers("glue_no_trainer", config={})
        completed_steps, took = 0, []
        for epoch in range(2):
            began = time.perf_counter()
            for _ in range(5 if epoch == 0 else 7):
                completed_steps += 1
                if epoch == 0:
                    time.sleep(0.2)
            took.append(time.perf_counter() - began)
            accelerator.log(
                {"glue": {"accuracy": 0.5}, "train_loss": 0.7, "epoch": epoch},
                step=completed_steps,
            )
        run = tracker.run
        accelerator.end_training()

    epochs = read_lines(run.dir).of("epoch")
    assert [(e["epoch"], e["step"], e["steps"], e["cut"]) for e in epochs] == [
        (0, 5, 5, False),
        (1, 12, 7, False),
    ]
    assert epochs[0]["duration_s"] >= took[0] >= 1.0 > epochs[1]["duration_s"] >= took[1]
    spans = [s for s in telemetry.spans.get_finished_spans() if s.name == "epoch"]
    assert [(s.attributes["epoch"], s.attributes["steps"]) for s in spans] == [(0, 5), (1, 7)]
    span_s = [(s.end_time - s.start_time) / 1e9 for s in spans]
    assert span_s[0] >= took[0] >= 1.0 > span_s[1] >= took[1]
