"""The transformers Trainer callback, beyond the contract every integration keeps (test_all.py):
what a Trainer run records and exports, report_to="traintel" after nothing but an import, a
resumed checkpoint continuing the run, predict() after training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from drivers import no_run_left_open  # noqa: F401
from torch.utils.data import Dataset

import traintel
from conftest import read_lines
from traintel.testing import capture

SRC = Path(__file__).resolve().parents[2] / "src"


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
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=100,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    )
    arguments = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        logging_steps=5,
        eval_strategy="steps",
        eval_steps=10,
        save_steps=10,
        use_cpu=True,
        per_device_train_batch_size=4,
        **{"max_steps": 20, "report_to": [], "disable_tqdm": True, **args},
    )
    return Trainer(
        model=model,
        args=arguments,
        train_dataset=Tokens(64, 0),
        eval_dataset=Tokens(16, 1),
        callbacks=callbacks,
    )


def point(telemetry, name: str, **labels: str) -> float:
    (value,) = [
        p.value
        for attrs, p in telemetry.points(name)
        if all(attrs.get(k) == v for k, v in labels.items())
    ]
    return value


def test_a_trainer_run_is_recorded_completely(tmp_path: Path, quiet) -> None:
    from traintel.integrations.huggingface import TraintelCallback

    callback = TraintelCallback(project="hf", dir=str(tmp_path / "runs"), **{**quiet, "otlp": None})
    with capture() as telemetry:
        trainer = hf_trainer(tmp_path, [callback], include_num_input_tokens_seen="all")
        trainer.train()
        trainer.predict(Tokens(8, 2))  # after training: the same run, at the last step
        run = callback.run
        callback.finish()

    lines, summary = read_lines(run.dir), json.loads((run.dir / "summary.json").read_text())
    steps = lines.of("step")
    assert [s["step"] for s in steps] == list(range(1, 21))
    assert all(s["metrics"]["samples"] == 4 and s["metrics"]["tokens"] == 32 for s in steps)
    logged = {s["step"]: s["metrics"] for s in steps if "loss" in s["metrics"]}
    assert sorted(logged) == [5, 10, 15, 20]
    assert all({"lr", "grad_norm"} <= set(m) for m in logged.values())
    assert {s["epoch"] for s in steps} == {0, 1}  # 16 batches per epoch
    evals = lines.of("eval")
    assert [(e["step"], sorted(e["metrics"])) for e in evals] == [
        (10, ["eval_loss"]),
        (20, ["eval_loss"]),
        (20, ["test_loss"]),
    ]
    checkpoints = lines.of("event", "checkpoint")
    assert [c["step"] for c in checkpoints] == [10, 20]
    assert all(Path(c["fields"]["path"]).is_dir() for c in checkpoints)
    assert lines.of("event", "trainer_summary")[0]["fields"]["train_loss"] > 0
    config = lines.of("config")[0]["config"]
    assert config["training_args"]["max_steps"] == 20
    assert config["model_config"]["hidden_size"] == 16
    (start,) = lines.of("run_start")
    assert (start["total_steps"], start["initial_step"]) == (20, 0)

    assert summary["status"] == "finished"
    assert summary["steps"] == 20 and summary["samples"] == 80 and summary["tokens"] == 640
    assert summary["step_time"]["mean_s"] > 0  # timed from on_step_begin to on_step_end
    assert summary["loss"]["count"] == 4
    assert set(summary["eval"]) == {"eval_loss", "test_loss"}

    assert telemetry.metric("traintel_steps_total") == [20]
    assert telemetry.metric("traintel_samples_total") == [80]
    assert telemetry.metric("traintel_loss") == [logged[20]["loss"]]
    assert (
        point(telemetry, "traintel_eval_value", metric="eval_loss")
        == evals[1]["metrics"]["eval_loss"]
    )
    assert point(telemetry, "traintel_events_total", event="checkpoint") == 2
    assert telemetry.span_names().count("epoch") == 2


def test_resume_from_checkpoint_continues_the_run(tmp_path: Path, quiet) -> None:
    """The run id is in each checkpoint's trainer_state.json; a new Trainer resuming from it
    (a new process would do the same) continues the record as its next segment."""
    from traintel.integrations.huggingface import TraintelCallback

    first = TraintelCallback(project="hf", dir=str(tmp_path / "runs"), **quiet)
    hf_trainer(tmp_path, [first], max_steps=10).train()
    run_id = first.run.id
    first.finish()
    state = json.loads((tmp_path / "out" / "checkpoint-10" / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["TraintelCallback"]["attributes"]["run_id"] == run_id

    second = TraintelCallback(project="hf", dir=str(tmp_path / "runs"), **quiet)
    hf_trainer(tmp_path, [second]).train(
        resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-10")
    )
    assert second.run.id == run_id
    second.finish()
    lines = read_lines(tmp_path / "runs" / run_id)
    assert [s["segment"] for s in lines.of("run_start")] == [1, 2]
    assert [s["step"] for s in lines.of("step")] == list(range(1, 21))
    summary = json.loads((tmp_path / "runs" / run_id / "summary.json").read_text())
    assert summary["steps"] == 20 and [s["steps"] for s in summary["segments"]] == [10, 10]


@pytest.mark.parametrize("order", ["traintel first", "transformers first"])
def test_report_to_traintel_needs_nothing_but_an_import(tmp_path: Path, order: str) -> None:
    """transformers looks report_to names up in a module dict; `import traintel` adds
    "traintel" whether transformers' integrations are imported before or after it."""
    imports = (
        "import traintel\nfrom transformers import Trainer, TrainingArguments\n"
        if order == "traintel first"
        else "from transformers import Trainer, TrainingArguments\n"
        "import transformers.integrations.integration_utils\nimport traintel\n"
    )
    script = imports + textwrap.dedent(f"""
        import torch
        args = TrainingArguments(output_dir={str(tmp_path / "out")!r}, report_to="traintel",
                                 use_cpu=True, disable_tqdm=True)
        trainer = Trainer(model=torch.nn.Linear(2, 2), args=args)
        print(sorted(type(c).__name__ for c in trainer.callback_handler.callbacks))
    """)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "TraintelCallback" in done.stdout.splitlines()[-1]


def test_report_to_joins_the_users_run(tmp_path: Path, quiet) -> None:
    from traintel.integrations.huggingface import TraintelCallback

    with traintel.init(project="hf", dir=str(tmp_path / "runs"), **quiet) as run:
        trainer = hf_trainer(tmp_path, report_to="traintel")
        assert any(isinstance(c, TraintelCallback) for c in trainer.callback_handler.callbacks)
        trainer.train()
        assert traintel.current_run() is run  # the user's run: left open for the user
        run.log_eval(test_accuracy=0.5)
    lines = read_lines(run.dir)
    assert lines.of("config")[0]["config"] == {}
    (framework,) = lines.of("event", "framework_config")
    assert framework["fields"]["source"] == "transformers"
    assert framework["fields"]["config"]["training_args"]["logging_steps"] == 5
    assert run.summary["steps"] == 20
    assert set(run.summary["eval"]) == {"eval_loss", "test_accuracy"}


def test_300_per_layer_names_never_stop_a_trainer_run(tmp_path: Path, quiet) -> None:
    """Issue 28, finding 1: a model logging more names than the run's budget (per-layer norms)
    crashed the training (`'layer256/grad_norm' would be name number 257`), and the checkpoint
    event raised once the budget was full. Now the names beyond it are refused, each said once
    and counted, and the training and its record go on."""
    from transformers import Trainer

    from traintel.integrations.huggingface import TraintelCallback

    class PerLayerNorms(Trainer):  # as a user adds per-layer figures to the Trainer's logs
        def log(self, logs: dict[str, float], *args: object, **kwargs: object) -> None:
            if "loss" in logs:
                logs.update({f"layer{i}/grad_norm": float(i) for i in range(300)})
            super().log(logs, *args, **kwargs)

    callback = TraintelCallback(project="hf", dir=str(tmp_path / "runs"), **quiet)
    base = hf_trainer(tmp_path, [callback])
    trainer = PerLayerNorms(
        model=base.model,
        args=base.args,
        train_dataset=base.train_dataset,
        eval_dataset=base.eval_dataset,
        callbacks=[callback],
    )
    trainer.train()
    run = callback.run
    callback.finish()
    lines, summary = read_lines(run.dir), json.loads((run.dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 20
    logged = [s["metrics"] for s in lines.of("step") if "loss" in s["metrics"]]
    assert len(logged) == 4 and all("layer0/grad_norm" in m for m in logged)
    assert all("layer299/grad_norm" not in m for m in logged)
    assert [e["step"] for e in lines.of("event", "checkpoint")] == [10, 20]
    refused = [
        line["message"] for line in lines.of("log") if "would be name number" in line["message"]
    ]
    assert len(refused) == len(set(refused)) and any("'layer299/grad_norm'" in m for m in refused)
    assert summary["refused"]["name_budget"] > 0


def test_early_stopping_is_an_event_and_the_best_models_evaluation_says_its_step(
    tmp_path: Path, quiet
) -> None:
    """Issue 29 finding 9: a run stopped by EarlyStoppingCallback said nothing of why, and the
    final evaluate() of the reloaded best model read as the last model's."""
    from transformers import EarlyStoppingCallback

    from traintel.integrations.huggingface import TraintelCallback

    callback = TraintelCallback(project="hf", dir=str(tmp_path / "runs"), **quiet)
    trainer = hf_trainer(
        tmp_path,
        [callback, EarlyStoppingCallback(early_stopping_patience=1, early_stopping_threshold=10.0)],
        max_steps=60,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
    )
    trainer.train()
    trainer.evaluate()
    run = callback.run
    callback.finish()
    state = trainer.state
    assert state.global_step < 60  # stopped early: the threshold makes no eval an improvement
    lines = read_lines(run.dir)
    (stopped,) = lines.of("event", "early_stopping")
    fields = stopped["fields"]
    assert stopped["step"] == state.global_step and fields["planned_steps"] == 60
    assert (fields["metric"], fields["patience"]) == ("eval_loss", 1)
    assert fields["best_metric"] == state.best_metric
    assert fields["best_step"] == int(state.best_model_checkpoint.rsplit("-", 1)[1]) == 10
    (tagged,) = lines.of("event", "best_model_evaluated")
    assert tagged["fields"]["model_step"] == 10 and tagged["step"] == state.global_step == 20
    # the epoch as HF reports it (1.25: 20 steps of 16 a epoch), not a count of epochs begun
    # or ended; the epoch the stop cut short is not counted as ended
    summary = json.loads((run.dir / "summary.json").read_text())
    assert 1 < state.epoch < 2
    assert summary["summary"]["epoch"] == state.epoch == state.log_history[-1]["epoch"]
    assert summary["epochs"] == 1
    assert summary["epoch"] == 1  # the epoch it was in, from 0: docs/record-format.md's three
    assert [line["cut"] for line in lines.of("epoch")] == [False, True]


def test_two_early_stopping_callbacks_and_the_default_metric(tmp_path: Path, quiet) -> None:
    """HF keeps the states of two callbacks of one class as a list (``TrainerState``): reading
    it as one state raised out of on_train_end and failed a training that had stopped well. The
    stop is said from the first one's state, and the default ``metric_for_best_model``
    ("loss") is named as the Trainer reads it, ``eval_loss``: the name of the eval series."""
    from transformers import EarlyStoppingCallback

    from traintel.integrations.huggingface import TraintelCallback

    callback = TraintelCallback(project="hf", dir=str(tmp_path / "runs"), **quiet)
    stoppers = [EarlyStoppingCallback(1, 10.0), EarlyStoppingCallback(3, 10.0)]
    trainer = hf_trainer(tmp_path, [callback, *stoppers], max_steps=60, load_best_model_at_end=True)
    trainer.train()
    run = callback.run
    callback.finish()
    assert trainer.args.metric_for_best_model == "loss" and trainer.state.global_step == 20
    lines = read_lines(run.dir)
    (stopped,) = lines.of("event", "early_stopping")
    assert (stopped["fields"]["metric"], stopped["fields"]["patience"]) == ("eval_loss", 1)
    assert all("eval_loss" in line["metrics"] for line in lines.of("eval"))
    summary = json.loads((run.dir / "summary.json").read_text())
    assert (summary["status"], summary["summary"]["stopped_by"]) == ("finished", "early_stopping")
