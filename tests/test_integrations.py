"""Integrations with real frameworks on CPU: a transformers Trainer and a Lightning Trainer, the
model watcher, and the capacity calculator against a real run and docs/scaling.md."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from torch.utils.data import DataLoader, Dataset, TensorDataset

import traintel
from traintel import capacity
from traintel.testing import capture
from traintel.watch import watch

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture
def options(quiet):
    """Quiet runs that still export: capture() takes what the integrations send."""
    return {**quiet, "otlp": None}


@pytest.fixture
def finished(recorded):
    """(record lines, summary.json) of the one run under a directory."""

    def read(directory: Path) -> tuple[list[dict], dict]:
        (run_dir,) = [p.parent for p in directory.rglob("summary.json")]
        return recorded(run_dir), json.loads((run_dir / "summary.json").read_text())
    return read


def point(telemetry, name: str, **labels: str) -> float:
    (value,) = [p.value for attrs, p in telemetry.points(name)
                if all(attrs.get(k) == v for k, v in labels.items())]
    return value


# ------------------------------------------------------------------------------------------
# Hugging Face
# ------------------------------------------------------------------------------------------
class Tokens(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 100, (n, 8), generator=generator)
        self.labels = torch.randint(0, 2, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def hf_trainer(tmp_path: Path, callbacks=None, **args):
    from transformers import (BertConfig, BertForSequenceClassification, Trainer,
                              TrainingArguments)

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32))
    arguments = TrainingArguments(
        output_dir=str(tmp_path / "out"), logging_steps=5, eval_strategy="steps",
        eval_steps=10, save_steps=10, use_cpu=True, per_device_train_batch_size=4,
        **{"max_steps": 20, "report_to": [], "disable_tqdm": True, **args})
    return Trainer(model=model, args=arguments, train_dataset=Tokens(64, 0),
                   eval_dataset=Tokens(16, 1), callbacks=callbacks)


def test_huggingface_trainer_run_is_recorded_completely(tmp_path: Path, options, finished) -> None:
    from traintel.integrations.huggingface import TraintelCallback

    callback = TraintelCallback(project="hf", dir=str(tmp_path / "runs"), **options)
    with capture() as telemetry:
        hf_trainer(tmp_path, [callback], include_num_input_tokens_seen="all").train()
    assert traintel.current_run() is None  # the callback started the run, so it finished it

    lines, summary = finished(tmp_path / "runs")
    steps = lines.of("step")
    assert [s["step"] for s in steps] == list(range(1, 21))
    assert all(s["metrics"]["samples"] == 4 and s["metrics"]["tokens"] == 32 for s in steps)
    logged = {s["step"]: s["metrics"] for s in steps if "loss" in s["metrics"]}
    assert sorted(logged) == [5, 10, 15, 20]
    assert all({"lr", "grad_norm"} <= set(m) for m in logged.values())
    assert {s["epoch"] for s in steps} == {0, 1}  # 16 batches per epoch
    evals = lines.of("eval")
    assert [(e["step"], list(e["metrics"])) for e in evals] == [(10, ["eval_loss"]),
                                                                (20, ["eval_loss"])]
    checkpoints = lines.of("event", "checkpoint")
    assert [c["step"] for c in checkpoints] == [10, 20]
    assert all(Path(c["fields"]["path"]).is_dir() for c in checkpoints)
    assert lines.of("event", "trainer_summary")[0]["fields"]["train_loss"] > 0
    config = lines.of("config")[0]["config"]
    assert config["training_args"]["max_steps"] == 20
    assert config["model_config"]["hidden_size"] == 16
    assert lines.of("run_start")[0]["total_steps"] == 20

    assert summary["status"] == "finished"
    assert summary["steps"] == 20 and summary["samples"] == 80 and summary["tokens"] == 640
    assert summary["step_time"]["mean_s"] > 0  # timed from on_step_begin to on_step_end
    assert summary["loss"]["count"] == 4
    assert set(summary["eval"]) == {"eval_loss"}

    assert telemetry.metric("traintel_steps_total") == [20]
    assert telemetry.metric("traintel_samples_total") == [80]
    assert telemetry.metric("traintel_loss") == [logged[20]["loss"]]
    assert point(telemetry, "traintel_eval_value", metric="eval_loss") == \
        evals[-1]["metrics"]["eval_loss"]
    assert point(telemetry, "traintel_events_total", event="checkpoint") == 2
    assert telemetry.span_names().count("epoch") == 2


@pytest.mark.parametrize("trainer_bar, asked, shown", [
    (True, None, "off"),  # one live bar per terminal: the Trainer's
    (False, None, "lines"),  # the Trainer shows none: traintel's (lines: not a terminal here)
    (True, "lines", "lines"),  # the user asked for traintel's too
])
def test_huggingface_progress_bar_is_left_to_the_trainer(tmp_path: Path, trainer_bar, asked,
                                                          shown) -> None:
    from traintel.integrations.huggingface import TraintelCallback

    class Spy(TraintelCallback):
        def on_train_begin(self, *args, **kwargs):
            super().on_train_begin(*args, **kwargs)
            self.shown = self.run.progress.mode

    spy = Spy(project="hf", dir=str(tmp_path / "runs"), sample_interval=0, console_logs=False,
              progress=asked)
    hf_trainer(tmp_path, [spy], disable_tqdm=not trainer_bar, max_steps=2).train()
    assert spy.shown == shown


def test_huggingface_report_to_joins_the_active_run(tmp_path: Path, options, finished) -> None:
    from transformers.integrations import integration_utils

    from traintel.integrations.huggingface import TraintelCallback, register

    register()
    try:
        with traintel.init(project="hf", dir=str(tmp_path / "runs"),
                           **{**options, "otlp": False}) as run:
            trainer = hf_trainer(tmp_path, report_to="traintel")
            assert any(isinstance(c, TraintelCallback) for c in trainer.callback_handler.callbacks)
            trainer.train()
            assert traintel.current_run() is run  # the user's run: left open for the user
            run.log_eval(test_accuracy=0.5)
    finally:
        integration_utils.INTEGRATION_TO_CALLBACK.pop("traintel", None)

    lines, summary = finished(tmp_path / "runs")
    assert lines.of("config")[0]["config"] == {}
    (framework,) = lines.of("event", "framework_config")
    assert framework["fields"]["source"] == "transformers"
    assert framework["fields"]["config"]["training_args"]["logging_steps"] == 5
    assert summary["steps"] == 20 and set(summary["eval"]) == {"eval_loss", "test_accuracy"}


# ------------------------------------------------------------------------------------------
# Lightning
# ------------------------------------------------------------------------------------------
def lightning_fit(tmp_path: Path, **trainer_args) -> None:
    import lightning as L

    class Regression(L.LightningModule):
        def __init__(self, lr: float = 0.05) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            self.log("train/abs_error", (self.layer(x) - y).abs().mean())
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    trainer = L.Trainer(**{"max_epochs": 2, "accelerator": "cpu", "enable_progress_bar": False,
                           "enable_model_summary": False,
                           "default_root_dir": str(tmp_path / "pl"), **trainer_args})
    trainer.fit(Regression(), DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))


def check_lightning_record(lines: list[dict], summary: dict) -> None:
    steps = lines.of("step")
    assert [s["step"] for s in steps] == list(range(1, 9))  # 4 batches x 2 epochs
    assert [s["epoch"] for s in steps] == [0] * 4 + [1] * 4
    assert all("loss" in s["metrics"] for s in steps)
    evals = lines.of("eval")
    assert [(e["step"], list(e["metrics"])) for e in evals] == [(4, ["val_loss"]),
                                                                (8, ["val_loss"])]
    assert [c["step"] for c in lines.of("event", "checkpoint")] == [4, 8]
    assert len(lines.of("epoch")) == 2
    assert summary["status"] == "finished" and summary["steps"] == 8


def test_lightning_logger_records_a_fit(tmp_path: Path, options, finished) -> None:
    from traintel.integrations.lightning import TraintelLogger

    with capture() as telemetry:
        lightning_fit(tmp_path, log_every_n_steps=1,
                      logger=TraintelLogger(project="pl", dir=str(tmp_path / "runs"), **options))
    assert traintel.current_run() is None

    lines, summary = finished(tmp_path / "runs")
    check_lightning_record(lines, summary)
    assert lines.of("config")[0]["config"] == {"lr": 0.05}
    assert all("train/abs_error" in s["metrics"] for s in lines.of("step"))  # as named
    checkpoint = lines.of("event", "checkpoint")[-1]["fields"]["path"]
    assert checkpoint.endswith("epoch=1-step=8.ckpt") and Path(checkpoint).is_file()
    # the per-epoch aggregate arrives after the epoch's last step was written
    assert "train_loss_epoch" in lines.of("values")[0]["metrics"]
    assert telemetry.metric("traintel_steps_total") == [8]
    assert point(telemetry, "traintel_metric", metric="train/abs_error") > 0
    assert point(telemetry, "traintel_eval_best", metric="val_loss") == \
        min(e["metrics"]["val_loss"] for e in lines.of("eval"))


def test_lightning_callback_records_every_step(tmp_path: Path, options, finished) -> None:
    from traintel.integrations.lightning import TraintelCallback

    with capture() as telemetry:
        lightning_fit(tmp_path, logger=False, log_every_n_steps=50, callbacks=[
            TraintelCallback(project="pl", dir=str(tmp_path / "runs"), **options)])

    lines, summary = finished(tmp_path / "runs")
    check_lightning_record(lines, summary)
    assert lines.of("config")[0]["config"]["hparams"] == {"lr": 0.05}
    assert lines.of("run_start")[0]["total_steps"] == 8
    assert all(s["metrics"]["samples"] == 8 and s["metrics"]["lr"] == 0.05
               for s in lines.of("step"))
    assert summary["samples"] == 64
    assert summary["step_time"]["mean_s"] > 0  # timed from the first micro-batch's start
    assert telemetry.metric("traintel_samples_total") == [64]
    assert telemetry.metric("traintel_learning_rate") == [0.05]


@pytest.mark.parametrize("enable_progress_bar, shown", [(True, "off"), (False, "lines")])
def test_lightning_progress_bar_is_left_to_the_trainer(tmp_path: Path, enable_progress_bar,
                                                        shown) -> None:
    from traintel.integrations.lightning import TraintelCallback

    class Spy(TraintelCallback):
        def on_train_start(self, trainer, pl_module):
            super().on_train_start(trainer, pl_module)
            self.shown = self.run.progress.mode

    spy = Spy(project="pl", dir=str(tmp_path / "runs"), sample_interval=0, console_logs=False)
    lightning_fit(tmp_path, logger=False, callbacks=[spy], enable_progress_bar=enable_progress_bar)
    assert spy.shown == shown


def test_lightning_logger_leaves_the_progress_bar_to_lightning(tmp_path: Path) -> None:
    from traintel.integrations.lightning import TraintelLogger

    class Spy(TraintelLogger):
        def log_hyperparams(self, params, *args, **kwargs):
            super().log_hyperparams(params, *args, **kwargs)
            self.shown = self.run.progress.mode

    spy = Spy(project="pl", dir=str(tmp_path / "runs"), sample_interval=0, console_logs=False)
    lightning_fit(tmp_path, logger=spy)
    assert spy.shown == "off"  # a Logger cannot see enable_progress_bar; Lightning's default


def test_lightning_logger_and_callback_together_are_refused(tmp_path: Path, options) -> None:
    from traintel.integrations.lightning import TraintelCallback, TraintelLogger

    with pytest.raises(ValueError, match="not both"):
        lightning_fit(tmp_path, logger=TraintelLogger(dir=str(tmp_path / "runs"), **options),
                      callbacks=[TraintelCallback(dir=str(tmp_path / "runs"), **options)])


# ------------------------------------------------------------------------------------------
# watch
# ------------------------------------------------------------------------------------------
def test_watch_records_size_and_the_gradient_norm_of_each_step(tmp_path: Path, options,
                                                                finished) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    model[0].bias.requires_grad_(False)
    other = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    other_optimizer = torch.optim.SGD(other.parameters(), lr=0.01)
    expected = []
    with capture() as telemetry:
        with traintel.init(project="watch", dir=str(tmp_path), **options) as run:
            watched = watch(run, model)
            for _ in run.track(range(3)):
                optimizer.zero_grad()
                model(torch.randn(4, 8)).pow(2).mean().backward()
                expected.append(torch.nn.utils.get_total_norm(
                    [p.grad for p in model.parameters() if p.grad is not None]).item())
                optimizer.step()
                other(torch.randn(1, 2)).sum().backward()
                other_optimizer.step()  # not the watched model's: ignored
                run.log(loss=1.0)
    total = 8 * 16 + 16 + 16 * 1 + 1
    assert (watched.parameters, watched.trainable, watched.bytes) == (total, total - 16, total * 4)

    lines, _ = finished(tmp_path)
    (event,) = lines.of("event", "model_parameters")
    assert event["fields"] == {"model": "Sequential", "parameters": total,
                               "trainable": total - 16, "bytes": total * 4}
    norms = [s["metrics"]["grad_norm"] for s in lines.of("step")]
    assert norms == pytest.approx(expected)
    assert telemetry.metric("traintel_grad_norm") == [pytest.approx(expected[-1])]
    assert point(telemetry, "traintel_user_value", metric="model_trainable_parameters") == \
        total - 16
    # the run is over: the hook takes itself out at the next step
    optimizer.step()
    assert watched._handle is None


# ------------------------------------------------------------------------------------------
# capacity
# ------------------------------------------------------------------------------------------
def test_capacity_counts_the_series_of_a_real_run(tmp_path: Path, options) -> None:
    workload = capacity.Workload(user_metrics=2, eval_metrics=1, counters=1, gauges=1,
                                 histograms=1, timers=1, operations=1, error_kinds=1,
                                 system=False, otlp=False,
                                 events=4)  # milestone, eval, best_eval, checkpoint
    with traintel.init(project="cap", dir=str(tmp_path), total_steps=4,
                       **{**options, "otlp": False}) as run:
        for _ in run.track(range(4)):
            run.log(loss=0.5, lr=0.1, grad_norm=1.0, samples=2, tokens=10, acc=0.5, f1=0.4)
            run.flush()  # rates (and so the ETA) need the record writer to have run
        run.log_eval(val_loss=0.3)
        run.counter("retries").inc()
        run.gauge("queue").set(3)
        run.histogram("batch_tokens").observe(100)
        with run.timer("load"), run.span("checkpoint"):
            pass
        run.event("checkpoint")
        run.error(ValueError("bad value"))
        run.flush()
        exposed = {family.name: len(family.samples) for family in
                   text_string_to_metric_families(generate_latest(run.registry).decode())}
    # prometheus-client drops the _total suffix from counter family names
    expected = {name.removesuffix("_total"): n
                for name, n in capacity.series_by_metric(workload).items() if n}
    assert exposed == expected


def test_scaling_doc_table_is_the_calculators_output() -> None:
    text = (DOCS / "scaling.md").read_text()
    table = re.search(r"<!-- capacity-table -->\n(.*?)\n<!-- /capacity-table -->", text, re.S)
    assert table, "docs/scaling.md lost its capacity-table markers"
    assert table.group(1) == capacity.render_table()


def test_series_grow_linearly_with_ranks() -> None:
    one = capacity.Workload(gpus_per_rank=1, user_metrics=3)
    many = capacity.Workload(ranks=256, gpus_per_rank=1, user_metrics=3)
    assert capacity.series_per_run(many) == 256 * capacity.series_per_run(one)
    more_metrics = capacity.Workload(gpus_per_rank=1, user_metrics=4)
    # a user metric: its latest value, and its logged min, max, count and non-finite count
    assert capacity.series_per_run(more_metrics) - capacity.series_per_run(one) == 5
    assert math.isclose(capacity.samples_per_second(one, 15), capacity.series_per_run(one) / 15)


def test_spanmetrics_buckets_match_the_collector_config() -> None:
    import yaml

    config = yaml.safe_load((DOCS.parent / "otel-collector" / "config.yaml").read_text())
    buckets = config["connectors"]["span_metrics"]["histogram"]["explicit"]["buckets"]
    assert capacity.SPANMETRICS_BUCKETS == len(buckets)
