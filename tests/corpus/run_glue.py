# Source: https://github.com/huggingface/transformers/blob/0055f834470c4662897181543b27d8cf8c50b9d6/examples/pytorch/text-classification/run_glue.py (Apache-2.0, Copyright 2020 The HuggingFace Inc. team)
# Adapted, trimmed to the path of local data with --do_train/--do_eval/--do_predict: the dataset is
# built in memory (sentences of words, labelled by whether they hold a "good" word; no `datasets`
# download), the tokenizer is a word-level one built from that vocabulary (tokenizers, no hub),
# the model a tiny BERT from a config, accuracy computed inline (no `evaluate`). Everything else
# is the Trainer with its defaults (logging_steps=500, save_steps=500, no eval during training):
# train, resume from the last checkpoint in output_dir, evaluate after training, predict. traintel
# is one import and `--report_to traintel`; the last line prints the figures the Trainer computed,
# as JSON.
import json  # the script's own figures, printed last
import logging
import os
import random
import sys
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

import traintel  # noqa: F401  traintel: makes --report_to traintel known to transformers
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    EvalPrediction,
    HfArgumentParser,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
    default_data_collator,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

logger = logging.getLogger(__name__)

WORDS = ["the", "a", "movie", "plot", "actor", "scene", "was", "is", "very", "quite", "good",
         "great", "bad", "dull", "and", "but", "story", "music"]


@dataclass
class DataTrainingArguments:
    max_seq_length: int = field(default=32, metadata={"help": "The maximum total input sequence length after tokenization."})
    max_train_samples: Optional[int] = field(default=512)
    max_eval_samples: Optional[int] = field(default=128)
    max_predict_samples: Optional[int] = field(default=128)


@dataclass
class ModelArguments:
    hidden_size: int = field(default=64, metadata={"help": "adapted: a small BERT from a config"})


def synthetic_split(n, seed):
    """adapted: a sentence per example, label 1 when it holds "good" or "great"."""
    rng = random.Random(seed)
    sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(n)]
    return [{"sentence": s, "label": int(any(w in ("good", "great") for w in s.split()))}
            for s in sentences]


def main():
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()

    # Setup logging
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)

    # Detecting last checkpoint.
    last_checkpoint = None
    if os.path.isdir(training_args.output_dir) and training_args.do_train:
        last_checkpoint = get_last_checkpoint(training_args.output_dir)
        if last_checkpoint is not None and training_args.resume_from_checkpoint is None:
            logger.info(f"Checkpoint detected, resuming training at {last_checkpoint}.")

    # Set seed before initializing model.
    set_seed(training_args.seed)
    torch.set_num_threads(1)  # adapted: a small CPU run

    raw_datasets = {"train": synthetic_split(data_args.max_train_samples, 0),
                    "validation": synthetic_split(data_args.max_eval_samples, 1),
                    "test": synthetic_split(data_args.max_predict_samples, 2)}
    label_list = [0, 1]
    num_labels = len(label_list)

    # adapted: a word-level tokenizer of the vocabulary, built here
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]",
                                        unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")
    config = BertConfig(vocab_size=len(vocab), hidden_size=model_args.hidden_size,
                        num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                        max_position_embeddings=64, num_labels=num_labels)
    model = BertForSequenceClassification(config)

    max_seq_length = data_args.max_seq_length

    def preprocess_function(examples):
        result = tokenizer([e["sentence"] for e in examples], padding="max_length",
                           max_length=max_seq_length, truncation=True)
        return [{"input_ids": result["input_ids"][i], "attention_mask": result["attention_mask"][i],
                 "label": e["label"]} for i, e in enumerate(examples)]

    train_dataset = preprocess_function(raw_datasets["train"])
    eval_dataset = preprocess_function(raw_datasets["validation"])
    predict_dataset = preprocess_function(raw_datasets["test"])

    def compute_metrics(p: EvalPrediction):
        preds = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        preds = np.argmax(preds, axis=1)
        return {"accuracy": (preds == p.label_ids).astype(np.float32).mean().item()}

    # Initialize our Trainer
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_dataset if training_args.do_eval else None,
        compute_metrics=compute_metrics,
        processing_class=tokenizer,
        data_collator=default_data_collator,
    )

    figures = {}  # the script's own figures
    # Training
    if training_args.do_train:
        checkpoint = None
        if training_args.resume_from_checkpoint is not None:
            checkpoint = training_args.resume_from_checkpoint
        elif last_checkpoint is not None:
            checkpoint = last_checkpoint
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        metrics = train_result.metrics
        metrics["train_samples"] = len(train_dataset)
        trainer.save_model()  # Saves the tokenizer too for easy upload
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        figures["train"] = metrics

    # Evaluation
    if training_args.do_eval:
        logger.info("*** Evaluate ***")
        metrics = trainer.evaluate(eval_dataset=eval_dataset)
        metrics["eval_samples"] = len(eval_dataset)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        figures["eval"] = metrics

    if training_args.do_predict:
        logger.info("*** Predict ***")
        predict_dataset = [{k: v for k, v in e.items()} for e in predict_dataset]
        output = trainer.predict(predict_dataset, metric_key_prefix="predict")
        figures["predict"] = output.metrics

    figures["global_step"] = trainer.state.global_step
    figures["log_history"] = trainer.state.log_history
    figures["resumed_from"] = checkpoint if training_args.do_train else None
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
