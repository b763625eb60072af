"""One tiny training job per integration, run for real by its framework on CPU, so that the
contract test (test_all.py) asks every integration the same questions.

Every job: a linear model, 32 samples in batches of 8 (4 optimizer steps per epoch), 2 epochs, an
evaluation at the end of each epoch (at steps 4 and 8), ``train/mae`` logged where the framework
lets the module log. ``fail="step"`` raises in the forward pass of the 6th step; ``fail="data"``
raises in the dataset's ``__getitem__`` for sample 20 (the 3rd step).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import traintel

STEPS, EPOCHS, BATCH = 8, 2, 8
EVAL_STEPS = [4, 8]


@pytest.fixture(autouse=True)
def no_run_left_open() -> Iterator[None]:
    """Integrations leave their run open after training (for evaluation): none outlives its
    test. Test modules import this fixture."""
    yield
    while (run := traintel.current_run()) is not None:
        run.finish()


class Pairs(Dataset):
    """32 (x, y) pairs; ``broken`` names a sample whose label check fails."""

    def __init__(self, seed: int = 0, broken: int | None = None) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(32, 4, generator=generator)
        self.y = self.x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(32, 1, generator=generator)
        self.broken = broken

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if index == self.broken:
            raise ValueError(f"sample {index}: label out of range")
        return {"x": self.x[index], "labels": self.y[index]}


class Regression(torch.nn.Module):
    """A linear model that fails in its ``fail_at``-th forward pass in training, if asked."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 1)
        self.fail_at = fail_at
        self.calls = 0

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        if self.training:
            self.calls += 1
            if self.calls == self.fail_at:
                raise ValueError(f"the forward pass of step {self.calls} went wrong")
        out = self.layer(x)
        loss = torch.nn.functional.mse_loss(out, labels) if labels is not None else None
        return {"loss": loss, "logits": out}


def _datasets(fail: str | None) -> tuple[Pairs, Pairs]:
    return Pairs(0, broken=20 if fail == "data" else None), Pairs(1)


def _model(fail: str | None) -> Regression:
    return Regression(fail_at=6 if fail == "step" else None)


@dataclass
class Driver:
    """An integration and the framework that drives it."""

    name: str
    #: makes the integration (init options: project, dir, ...)
    make: Callable[..., Any]
    #: trains with it: ``train(integration, tmp_path, fail=None, bar=False)``
    train: Callable[..., Any]
    #: evaluates after training, with what ``train`` returned
    evaluate: Callable[[Any], None]
    #: why a second training call with the same integration is no new run ("": it is)
    same_run_next_time: str = ""
    #: whether the framework draws a progress bar when asked (``bar=True``)
    draws_bar: bool = True
    #: whether a failure reaches the integration (else it reaches the top of the program)
    sees_failures: bool = True
    #: whether it records the metrics the training code logs (``train/mae``)
    records_logged: bool = True


# -- Hugging Face Trainer -------------------------------------------------------------------
def _hf_train(
    integration: Any,
    tmp_path: Path,
    fail: str | None = None,
    bar: bool = False,
    trainer: Any = None,
) -> Any:
    from transformers import Trainer, TrainingArguments

    if trainer is None:
        train_set, eval_set = _datasets(fail)
        args = TrainingArguments(
            output_dir=str(tmp_path / "hf"),
            per_device_train_batch_size=BATCH,
            per_device_eval_batch_size=BATCH,
            num_train_epochs=EPOCHS,
            logging_steps=1,
            eval_strategy="epoch",
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            disable_tqdm=not bar,
            dataloader_num_workers=0,
            learning_rate=0.05,
            lr_scheduler_type="constant",
        )
        trainer = Trainer(
            model=_model(fail),
            args=args,
            train_dataset=train_set,
            eval_dataset=eval_set,
            callbacks=[integration],
        )
    trainer.train()
    return trainer


def _hf_make(**options: Any) -> Any:
    from traintel.integrations.huggingface import TraintelCallback

    return TraintelCallback(**options)


# -- Lightning ------------------------------------------------------------------------------
def _lightning_module(fail: str | None) -> Any:
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self, lr: float = 0.05) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.model = _model(fail)

        def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> Any:
            out = self.model(batch["x"], batch["labels"])
            self.log("train_loss", out["loss"])
            self.log("train/mae", (out["logits"] - batch["labels"]).abs().mean())
            return out["loss"]

        def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
            self.log("val_loss", self.model(batch["x"], batch["labels"])["loss"])

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    return Module()


def _lightning_train(where: str) -> Callable[..., Any]:
    def train(integration: Any, tmp_path: Path, fail: str | None = None, bar: bool = False) -> Any:
        import lightning as L

        train_set, eval_set = _datasets(fail)
        slot = (
            {"logger": integration}
            if where == "logger"
            else {"logger": False, "callbacks": [integration]}
        )
        trainer = L.Trainer(
            max_epochs=EPOCHS,
            accelerator="cpu",
            enable_progress_bar=bar,
            enable_model_summary=False,
            log_every_n_steps=1,
            default_root_dir=str(tmp_path / "pl"),
            num_sanity_val_steps=0,
            **slot,
        )
        module = _lightning_module(fail)
        val = DataLoader(eval_set, batch_size=BATCH)
        trainer.fit(module, DataLoader(train_set, batch_size=BATCH), val)
        return trainer, module, val

    return train


def _lightning_evaluate(trained: Any) -> None:
    trainer, module, val = trained
    trainer.validate(module, val, verbose=False)


def _lightning_make(kind: str) -> Callable[..., Any]:
    def make(**options: Any) -> Any:
        from traintel.integrations import lightning

        return getattr(lightning, kind)(**options)

    return make


# -- Accelerate -----------------------------------------------------------------------------
def _accelerate_train(
    integration: Any, tmp_path: Path, fail: str | None = None, bar: bool = False
) -> Any:
    """The shape of the ``*_no_trainer.py`` examples: a loss logged each step, an evaluation
    logged at each epoch's end, ``end_training`` left to the caller."""
    from accelerate import Accelerator

    train_set, eval_set = _datasets(fail)
    accelerator = Accelerator(cpu=True, log_with=integration)
    model = _model(fail)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    train_loader = DataLoader(train_set, batch_size=BATCH)
    eval_loader = DataLoader(eval_set, batch_size=BATCH)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(
        model, optimizer, train_loader, eval_loader
    )
    accelerator.init_trackers("contract", config={"lr": 0.05, "epochs": EPOCHS})
    completed_steps = 0
    for epoch in range(EPOCHS):
        model.train()
        for batch in train_loader:
            out = model(batch["x"], batch["labels"])
            accelerator.backward(out["loss"])
            optimizer.step()
            optimizer.zero_grad()
            completed_steps += 1
            mae = (out["logits"] - batch["labels"]).abs().mean().item()
            accelerator.log(
                {"train_loss": out["loss"].item(), "train/mae": mae, "epoch": epoch},
                step=completed_steps,
            )
        _accelerate_eval(accelerator, model, eval_loader, completed_steps)
    return accelerator, model, eval_loader, completed_steps


def _accelerate_eval(accelerator: Any, model: Any, eval_loader: Any, step: int) -> None:
    model.eval()
    with torch.no_grad():
        losses = [model(b["x"], b["labels"])["loss"].item() for b in eval_loader]
    accelerator.log({"eval_loss": sum(losses) / len(losses)}, step=step)


def _accelerate_evaluate(trained: Any) -> None:
    accelerator, model, eval_loader, step = trained
    _accelerate_eval(accelerator, model, eval_loader, step)


def _accelerate_make(**options: Any) -> Any:
    from traintel.integrations.accelerate import TraintelTracker

    return TraintelTracker(**options)


DRIVERS = [
    Driver(
        "huggingface",
        _hf_make,
        _hf_train,  # the Trainer logs none of the module's own
        lambda trainer: trainer.evaluate(),
        sees_failures=False,
        records_logged=False,
    ),
    Driver(
        "lightning-logger",
        _lightning_make("TraintelLogger"),
        _lightning_train("logger"),
        _lightning_evaluate,
        same_run_next_time="a Lightning logger is one version (one "
        "run), as Lightning's own loggers are: a new job takes a new logger",
    ),
    Driver(
        "lightning-callback",
        _lightning_make("TraintelCallback"),  # they stay with the
        _lightning_train("callback"),
        _lightning_evaluate,
        records_logged=False,
    ),  # logger
    Driver(
        "accelerate",
        _accelerate_make,
        _accelerate_train,
        _accelerate_evaluate,
        same_run_next_time="a tracker's run ends at accelerator.end_training()",
        draws_bar=False,
        sees_failures=False,
    ),
]
