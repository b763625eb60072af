"""The Lightning logger and callback, beyond the contract every integration keeps
(test_all.py): what each records of a fit, the loss under gradient accumulation, epoch
aggregates in the record, summary and export, test() after fit, the checkpoint directory named
by the run id, and the two refused together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from drivers import no_run_left_open  # noqa: F401
from torch.utils.data import DataLoader, TensorDataset

from conftest import read_lines
from traintel.testing import capture


def lightning_fit(tmp_path: Path, **trainer_args):
    """4 batches of 8 per epoch, 2 epochs; the module keeps the losses it computed."""
    import lightning as L

    class Regression(L.LightningModule):
        def __init__(self, lr: float = 0.05) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(4, 1)
            self.computed: list[float] = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.computed.append(loss.item())
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            self.log("train/abs_error", (self.layer(x) - y).abs().mean())
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

        def test_step(self, batch, batch_idx):
            x, y = batch
            self.log("test_loss", torch.nn.functional.mse_loss(self.layer(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    trainer = L.Trainer(
        **{
            "max_epochs": 2,
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(tmp_path / "pl"),
            **trainer_args,
        }
    )
    module = Regression()
    trainer.fit(module, DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))
    return trainer, module, DataLoader(data, batch_size=8)


def point(telemetry, name: str, **labels: str) -> float:
    (value,) = [
        p.value
        for attrs, p in telemetry.points(name)
        if all(attrs.get(k) == v for k, v in labels.items())
    ]
    return value


def test_the_logger_records_what_the_module_logs_and_what_the_loop_knows(tmp_path, quiet):
    from traintel.integrations.lightning import TraintelLogger

    logger = TraintelLogger(project="pl", dir=str(tmp_path / "runs"), **{**quiet, "otlp": None})
    with capture() as telemetry:
        trainer, module, data = lightning_fit(tmp_path, log_every_n_steps=1, logger=logger)
        trainer.test(module, data, verbose=False)
        run = logger.run
        logger.finish()
    lines = read_lines(run.dir)
    steps = lines.of("step")
    assert [s["step"] for s in steps] == list(range(1, 9))
    assert [s["epoch"] for s in steps] == [0] * 4 + [1] * 4
    # the loss the module logged, and samples, lr and step time from the loop
    assert [s["metrics"]["loss"] for s in steps] == pytest.approx(module.computed)
    assert all(s["metrics"]["samples"] == 8 and s["metrics"]["lr"] == 0.05 for s in steps)
    assert all("train/abs_error" in s["metrics"] for s in steps)  # as named
    assert run.summary["samples"] == 64 and run.summary["step_time"]["mean_s"] > 0
    assert [(e["step"], list(e["metrics"])) for e in lines.of("eval")] == [
        (4, ["val_loss"]),
        (8, ["val_loss"]),
        (8, ["test_loss"]),
    ]
    assert lines.of("config")[0]["config"]["hparams"] == {"lr": 0.05}
    # the per-epoch aggregate: a values line, in the summary and exported
    epoch_means = [v["metrics"]["train_loss_epoch"] for v in lines.of("values")]
    assert epoch_means == pytest.approx(
        [sum(module.computed[:4]) / 4, sum(module.computed[4:]) / 4]
    )
    assert run.summary["metrics"]["train_loss_epoch"] == epoch_means[-1]
    assert point(telemetry, "traintel_metric", metric="train_loss_epoch") == epoch_means[-1]
    assert point(telemetry, "traintel_eval_best", metric="val_loss") == min(
        e["metrics"]["val_loss"] for e in lines.of("eval") if "val_loss" in e["metrics"]
    )


def test_the_checkpoint_directory_is_named_by_the_run_id(tmp_path, quiet):
    from traintel.integrations.lightning import TraintelLogger

    logger = TraintelLogger(project="pl", dir=str(tmp_path / "runs"), **quiet)
    lightning_fit(tmp_path, logger=logger)
    run = logger.run
    logger.finish()
    checkpoints = read_lines(run.dir).of("event", "checkpoint")
    # one event per save, with its path (issue 29 finding 11: the logger wrote two, one blank)
    assert checkpoints and all(e["fields"].get("path") for e in checkpoints)
    assert len({e["fields"]["path"] for e in checkpoints}) == len(checkpoints)
    saved = checkpoints[-1]["fields"]["path"]
    assert Path(saved).is_file()
    assert Path(saved).parent == tmp_path / "pl" / "traintel" / run.id / "checkpoints"


def test_the_callback_records_the_loss_the_module_computed_under_accumulation(tmp_path, quiet):
    """Lightning divides training_step's loss by accumulate_grad_batches before the callback
    sees it; the record has the module's own loss, the mean over the step's micro-batches."""
    from traintel.integrations.lightning import TraintelCallback

    callback = TraintelCallback(project="pl", dir=str(tmp_path / "runs"), **quiet)
    trainer, module, _ = lightning_fit(
        tmp_path, logger=False, accumulate_grad_batches=2, callbacks=[callback]
    )
    run = callback.run
    callback.finish()
    steps = read_lines(run.dir).of("step")
    assert [s["step"] for s in steps] == [1, 2, 3, 4]  # 8 batches, 2 per optimizer step
    computed = module.computed
    assert [s["metrics"]["loss"] for s in steps] == [
        (computed[i] + computed[i + 1]) / 2 for i in range(0, 8, 2)
    ]
    assert all(s["metrics"]["samples"] == 16 for s in steps)
    assert run.summary["loss"]["final"] == (computed[6] + computed[7]) / 2


def test_logger_and_callback_together_are_refused(tmp_path, quiet):
    from traintel.integrations.lightning import TraintelCallback, TraintelLogger

    with pytest.raises(ValueError, match="not both"):
        lightning_fit(
            tmp_path,
            logger=TraintelLogger(dir=str(tmp_path / "runs"), **quiet),
            callbacks=[TraintelCallback(dir=str(tmp_path / "runs"), **quiet)],
        )


def test_a_crash_report_names_the_exception_under_the_logger(tmp_path, quiet):
    """Lightning calls the logger's finalize("failed") from its except block, before the
    exception reaches anyone: the logger takes it from there (it used to be lost)."""
    from traintel.integrations.lightning import TraintelLogger

    class Broken(RuntimeError):
        pass

    logger = TraintelLogger(project="pl", dir=str(tmp_path / "runs"), **quiet)
    logger.log_hyperparams({"lr": 0.1})
    run = None
    try:
        raise Broken("in training_step")
    except Broken:
        run = logger.run or logger.open_run({})
        logger.finalize("failed")
    crash = json.loads((run.dir / "crash-report.json").read_text())
    assert [e["exc_type"] for e in crash["errors"]] == ["Broken"]
    assert json.loads((run.dir / "summary.json").read_text())["status"] == "failed"
