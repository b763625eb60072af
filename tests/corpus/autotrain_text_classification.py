# Source: https://github.com/huggingface/autotrain-advanced/blob/b5c98fbe3aab61101e9c8f7f6c64407cbb68e400/src/autotrain/trainers/text_classification/__main__.py (Apache-2.0, Copyright 2020-2023 The HuggingFace AutoTrain Authors)
# With, inlined from the same commit: TextClassificationParams (text_classification/params.py),
# TextClassificationDataset (text_classification/dataset.py), _binary_classification_metrics and
# create_model_card (text_classification/utils.py), LossLoggingCallback and TrainStartCallback
# (trainers/common.py). AutoTrain's text classifier: the Trainer evaluates and saves every epoch,
# EarlyStoppingCallback(early_stopping_patience, early_stopping_threshold), load_best_model_at_end,
# and the model card's trainer.evaluate() of the reloaded best model after training.
# Adapted: no hub and no `datasets`: the splits autotrain's preprocessor saves in
# {project_name}/autotrain-data are JSON files here, read by LocalSplit, and the base model is a
# tiny BERT with a word-level tokenizer saved to a local directory (make_local_inputs, run before
# train(); sentences labelled by whether they hold a good word, a quarter of the validation labels
# flipped); transformers 5's warmup_steps=ratio for warmup_ratio; sklearn's metrics computed with numpy; autotrain's loguru logger is stdlib logging;
# the hub parts are left out (monitor, UploadLogs, push_to_hub, pause_space, the dataset tag of
# the model card); torch uses one thread. traintel is one import and the params' `log: "traintel"`
# (autotrain's report_to); train() returns the trainer, and the last line prints the figures the
# Trainer and its EarlyStoppingCallback hold, as JSON.
import argparse
import json
import logging  # adapted: autotrain's logger
import os
import random  # adapted: the local data
from typing import Optional

import numpy as np
import torch
from pydantic import BaseModel, Field
from tokenizers import Tokenizer, models, pre_tokenizers  # adapted: a local tokenizer

import traintel  # noqa: F401  traintel: makes log="traintel" (report_to) known to transformers
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,  # adapted: a tiny local base model
    BertModel,  # adapted
    EarlyStoppingCallback,
    PreTrainedTokenizerFast,  # adapted
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_callback import PrinterCallback

logging.basicConfig(format="%(asctime)s | %(levelname)s | %(message)s", level=logging.INFO)
logger = logging.getLogger("autotrain")
ALLOW_REMOTE_CODE = False

WORDS = ["the", "a", "movie", "plot", "actor", "scene", "was", "is", "very", "quite", "good",
         "great", "bad", "dull", "and", "but", "story", "music"]


class TextClassificationParams(BaseModel):  # adapted: pydantic's BaseModel for AutoTrainParams
    data_path: str = Field(None, title="Data path")
    model: str = Field("bert-base-uncased", title="Model name")
    lr: float = Field(5e-5, title="Learning rate")
    epochs: int = Field(3, title="Number of training epochs")
    max_seq_length: int = Field(128, title="Max sequence length")
    batch_size: int = Field(8, title="Training batch size")
    warmup_ratio: float = Field(0.1, title="Warmup proportion")
    gradient_accumulation: int = Field(1, title="Gradient accumulation steps")
    optimizer: str = Field("adamw_torch", title="Optimizer")
    scheduler: str = Field("linear", title="Scheduler")
    weight_decay: float = Field(0.0, title="Weight decay")
    max_grad_norm: float = Field(1.0, title="Max gradient norm")
    seed: int = Field(42, title="Seed")
    train_split: str = Field("train", title="Train split")
    valid_split: Optional[str] = Field(None, title="Validation split")
    text_column: str = Field("text", title="Text column")
    target_column: str = Field("target", title="Target column")
    logging_steps: int = Field(-1, title="Logging steps")
    project_name: str = Field("project-name", title="Output directory")
    auto_find_batch_size: bool = Field(False, title="Auto find batch size")
    mixed_precision: Optional[str] = Field(None, title="fp16, bf16, or None")
    save_total_limit: int = Field(1, title="Save total limit")
    token: Optional[str] = Field(None, title="Hub Token")
    push_to_hub: bool = Field(False, title="Push to hub")
    eval_strategy: str = Field("epoch", title="Evaluation strategy")
    username: Optional[str] = Field(None, title="Hugging Face Username")
    log: str = Field("none", title="Logging using experiment tracking")
    early_stopping_patience: int = Field(5, title="Early stopping patience")
    early_stopping_threshold: float = Field(0.01, title="Early stopping threshold")


class LocalSplit(list):
    """adapted: a split as autotrain's preprocessor saves it (`autotrain_text`, and
    `autotrain_label` a ClassLabel), read from a JSON file: its rows, the label names, unique()."""

    def __init__(self, path, target_column):
        with open(path) as f:
            saved = json.load(f)
        super().__init__(saved["rows"])
        self.features = {target_column: argparse.Namespace(names=saved["names"])}

    def unique(self, column):
        return sorted({row[column] for row in self})


class TextClassificationDataset:
    def __init__(self, data, tokenizer, config):
        self.data = data
        self.tokenizer = tokenizer
        self.config = config
        self.text_column = self.config.text_column
        self.target_column = self.config.target_column

    def __len__(self):
        return len(self.data)

    def __getitem__(self, item):
        text = str(self.data[item][self.text_column])
        target = self.data[item][self.target_column]
        target = int(target)
        inputs = self.tokenizer(
            text,
            max_length=self.config.max_seq_length,
            padding="max_length",
            truncation=True,
        )

        ids = inputs["input_ids"]
        mask = inputs["attention_mask"]

        if "token_type_ids" in inputs:
            token_type_ids = inputs["token_type_ids"]
        else:
            token_type_ids = None

        if token_type_ids is not None:
            return {
                "input_ids": torch.tensor(ids, dtype=torch.long),
                "attention_mask": torch.tensor(mask, dtype=torch.long),
                "token_type_ids": torch.tensor(token_type_ids, dtype=torch.long),
                "labels": torch.tensor(target, dtype=torch.long),
            }
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
            "labels": torch.tensor(target, dtype=torch.long),
        }


BINARY_CLASSIFICATION_EVAL_METRICS = (
    "eval_loss",
    "eval_accuracy",
    "eval_f1",
    "eval_auc",
    "eval_precision",
    "eval_recall",
)

MODEL_CARD = """
---
library_name: transformers
tags:
- autotrain
- text-classification{base_model}
widget:
- text: "I love AutoTrain"
---

# Model Trained Using AutoTrain

- Problem type: Text Classification

## Validation Metrics
{validation_metrics}
"""


def _binary_classification_metrics(pred):
    raw_predictions, labels = pred
    predictions = np.argmax(raw_predictions, axis=1)
    # adapted: sklearn's f1_score, precision_score, recall_score, roc_auc_score, accuracy_score
    tp = float(np.sum((predictions == 1) & (labels == 1)))
    precision = tp / max(1, np.sum(predictions == 1))
    recall = tp / max(1, np.sum(labels == 1))
    scores = raw_predictions[:, 1]
    ranks = np.argsort(np.argsort(scores)) + 1.0  # no ties among float logits here
    positives, negatives = np.sum(labels == 1), np.sum(labels == 0)
    auc = (np.sum(ranks[labels == 1]) - positives * (positives + 1) / 2) / (positives * negatives)
    result = {
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "precision": precision,
        "recall": recall,
        "auc": float(auc),
        "accuracy": float(np.mean(predictions == labels)),
    }
    return result


def create_model_card(config, trainer, num_classes):
    if config.valid_split is not None:
        eval_scores = trainer.evaluate()
        valid_metrics = BINARY_CLASSIFICATION_EVAL_METRICS  # adapted: binary only
        eval_scores = [f"{k[len('eval_'):]}: {v}" for k, v in eval_scores.items() if k in valid_metrics]
        eval_scores = "\n\n".join(eval_scores)

    else:
        eval_scores = "No validation metrics available"

    if os.path.isdir(config.model):
        base_model = ""
    else:
        base_model = f"\nbase_model: {config.model}"

    model_card = MODEL_CARD.format(
        validation_metrics=eval_scores,
        base_model=base_model,
    )
    return model_card


class LossLoggingCallback(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        _ = logs.pop("total_flos", None)
        if state.is_local_process_zero:
            logger.info(logs)


class TrainStartCallback(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        logger.info("Starting to train...")


def parse_args():
    # get training_config.json from the end user
    parser = argparse.ArgumentParser()
    parser.add_argument("--training_config", type=str, required=True)
    return parser.parse_args()


def train(config):
    if isinstance(config, dict):
        config = TextClassificationParams(**config)

    train_data = None
    valid_data = None
    # adapted: the splits from {data_path}/{split}.json (autotrain: load_from_disk / load_dataset)
    if config.train_split is not None:
        train_data = LocalSplit(os.path.join(config.data_path, f"{config.train_split}.json"), config.target_column)

    if config.valid_split is not None:
        valid_data = LocalSplit(os.path.join(config.data_path, f"{config.valid_split}.json"), config.target_column)

    classes = train_data.features[config.target_column].names
    label2id = {c: i for i, c in enumerate(classes)}
    num_classes = len(classes)

    if num_classes < 2:
        raise ValueError("Invalid number of classes. Must be greater than 1.")

    if config.valid_split is not None:
        num_classes_valid = len(valid_data.unique(config.target_column))
        if num_classes_valid != num_classes:
            raise ValueError(
                f"Number of classes in train and valid are not the same. Training has {num_classes} and valid has {num_classes_valid}"
            )

    model_config = AutoConfig.from_pretrained(config.model, num_labels=num_classes)
    model_config._num_labels = len(label2id)
    model_config.label2id = label2id
    model_config.id2label = {v: k for k, v in label2id.items()}

    model = AutoModelForSequenceClassification.from_pretrained(
        config.model,
        config=model_config,
        trust_remote_code=ALLOW_REMOTE_CODE,
        token=config.token,
        ignore_mismatched_sizes=True,
    )

    tokenizer = AutoTokenizer.from_pretrained(config.model, token=config.token, trust_remote_code=ALLOW_REMOTE_CODE)
    train_data = TextClassificationDataset(data=train_data, tokenizer=tokenizer, config=config)
    if config.valid_split is not None:
        valid_data = TextClassificationDataset(data=valid_data, tokenizer=tokenizer, config=config)

    if config.logging_steps == -1:
        if config.valid_split is not None:
            logging_steps = int(0.2 * len(valid_data) / config.batch_size)
        else:
            logging_steps = int(0.2 * len(train_data) / config.batch_size)
        if logging_steps == 0:
            logging_steps = 1
        if logging_steps > 25:
            logging_steps = 25
        config.logging_steps = logging_steps
    else:
        logging_steps = config.logging_steps

    logger.info(f"Logging steps: {logging_steps}")

    training_args = dict(
        output_dir=config.project_name,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=2 * config.batch_size,
        learning_rate=config.lr,
        num_train_epochs=config.epochs,
        eval_strategy=config.eval_strategy if config.valid_split is not None else "no",
        logging_steps=logging_steps,
        save_total_limit=config.save_total_limit,
        save_strategy=config.eval_strategy if config.valid_split is not None else "no",
        gradient_accumulation_steps=config.gradient_accumulation,
        report_to=config.log,
        auto_find_batch_size=config.auto_find_batch_size,
        lr_scheduler_type=config.scheduler,
        optim=config.optimizer,
        warmup_steps=config.warmup_ratio,  # adapted: transformers 5 takes the ratio as a float warmup_steps
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        push_to_hub=False,
        load_best_model_at_end=True if config.valid_split is not None else False,
        ddp_find_unused_parameters=False,
        use_cpu=True,  # adapted: CPU
    )

    if config.mixed_precision == "fp16":
        training_args["fp16"] = True
    if config.mixed_precision == "bf16":
        training_args["bf16"] = True

    if config.valid_split is not None:
        early_stop = EarlyStoppingCallback(
            early_stopping_patience=config.early_stopping_patience,
            early_stopping_threshold=config.early_stopping_threshold,
        )
        callbacks_to_use = [early_stop]
    else:
        callbacks_to_use = []

    callbacks_to_use.extend([LossLoggingCallback(), TrainStartCallback()])

    args = TrainingArguments(**training_args)
    trainer_args = dict(
        args=args,
        model=model,
        callbacks=callbacks_to_use,
        compute_metrics=_binary_classification_metrics,  # adapted: binary only
    )

    trainer = Trainer(
        **trainer_args,
        train_dataset=train_data,
        eval_dataset=valid_data,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()

    logger.info("Finished training, saving model...")
    trainer.save_model(config.project_name)
    tokenizer.save_pretrained(config.project_name)

    model_card = create_model_card(config, trainer, num_classes)

    # save model card to output directory as README.md
    with open(f"{config.project_name}/README.md", "w") as f:
        f.write(model_card)

    return trainer  # adapted: for the figures printed last


def make_local_inputs(config):
    """adapted: what the hub and autotrain's preprocessor give: a base model and its tokenizer in
    config.model, the splits in config.data_path."""
    rng = random.Random(config.seed)
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                            cls_token="[CLS]", sep_token="[SEP]").save_pretrained(config.model)
    torch.manual_seed(config.seed)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=64)).save_pretrained(config.model)
    os.makedirs(config.data_path, exist_ok=True)
    for split, n, flipped in ((config.train_split, 128, 0.0), (config.valid_split, 48, 0.1)):
        rows = []
        for _ in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
            label = int(any(w in ("good", "great") for w in text.split()))
            rows.append({config.text_column: text,
                         config.target_column: label if rng.random() >= flipped else 1 - label})
        with open(os.path.join(config.data_path, f"{split}.json"), "w") as f:
            json.dump({"names": ["negative", "positive"], "rows": rows}, f)


if __name__ == "__main__":
    args = parse_args()
    training_config = json.load(open(args.training_config))
    config = TextClassificationParams(**training_config)
    torch.set_num_threads(1)  # adapted: a small CPU run
    make_local_inputs(config)  # adapted
    trainer = train(config)
    # adapted: the figures the Trainer and its EarlyStoppingCallback hold, printed last
    (stopper,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, EarlyStoppingCallback)]
    state = trainer.state
    print(json.dumps({
        "global_step": state.global_step,
        "max_steps": state.max_steps,
        "epoch": state.epoch,
        "log_history": state.log_history,
        "best_metric": state.best_metric,
        "best_global_step": state.best_global_step,
        "best_model_checkpoint": state.best_model_checkpoint,
        "metric_for_best_model": trainer.args.metric_for_best_model,
        "early_stopping_patience": stopper.early_stopping_patience,
        "early_stopping_patience_counter": stopper.early_stopping_patience_counter,
        "should_training_stop": trainer.control.should_training_stop,
    }))
