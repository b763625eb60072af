# Source: https://github.com/huggingface/accelerate/blob/16cb6eb80dd9aa8b4df1a63ef57863e455d53b83/examples/by_feature/tracking.py (Apache-2.0, Copyright 2021 The HuggingFace Inc. team)
# Adapted: the GLUE MRPC download, the bert-base-cased checkpoint and tokenizer and `evaluate`'s
# metric are replaced by random token-id pairs labelled by a rule, a tiny BERT built from a config
# and accuracy/F1 computed inline; CPU. The tracker is traintel's, passed as Accelerate takes a
# custom tracker: an instance in log_with ("# traintel"); the last line prints the figures the
# script computed itself, as JSON.
import argparse
import json  # traintel: the script's own figures, printed last
import time  # traintel: the script's own throughput

import torch
from torch.optim import AdamW
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForSequenceClassification, get_linear_schedule_with_warmup, set_seed

from accelerate import Accelerator

from traintel.integrations.accelerate import TraintelTracker  # traintel


########################################################################
# This is a fully working simple example to use Accelerate,
# specifically showcasing the experiment tracking capability,
# and builds off the `nlp_example.py` script.
########################################################################

MAX_GPU_BATCH_SIZE = 16
EVAL_BATCH_SIZE = 32


def get_dataloaders(accelerator: Accelerator, batch_size: int = 16):
    """adapted: pairs of random token ids, label 1 when the pair starts with the same token."""
    generator = torch.Generator().manual_seed(0)

    def split(n):
        ids = torch.randint(4, 64, (n, 16), generator=generator)
        same = torch.rand(n, generator=generator) < 0.5
        ids[same, 8] = ids[same, 0]
        return [{"input_ids": ids[i], "attention_mask": torch.ones(16, dtype=torch.long),
                 "labels": int(ids[i, 0] == ids[i, 8])} for i in range(n)]

    def collate_fn(examples):
        return {k: torch.stack([torch.as_tensor(e[k]) for e in examples]) for k in examples[0]}

    # Instantiate dataloaders.
    train_dataloader = DataLoader(split(256), shuffle=True, collate_fn=collate_fn, batch_size=batch_size)
    eval_dataloader = DataLoader(split(64), shuffle=False, collate_fn=collate_fn, batch_size=EVAL_BATCH_SIZE)

    return train_dataloader, eval_dataloader


def training_function(config, args):
    # Initialize Accelerator

    # New Code #
    # We pass in "all" to `log_with` to grab all available trackers in the environment
    # Note: If using a custom `Tracker` class, should be passed in here such as:
    # >>> log_with = ["all", MyCustomTrackerClassInstance()]
    if args.with_tracking:
        accelerator = Accelerator(cpu=args.cpu, log_with=TraintelTracker(project="tracking"))  # traintel
    else:
        accelerator = Accelerator(cpu=args.cpu)
    # Sample hyper-parameters for learning rate, batch size, seed and a few other HPs
    lr = config["lr"]
    num_epochs = int(config["num_epochs"])
    seed = int(config["seed"])
    batch_size = int(config["batch_size"])
    set_seed(seed)
    torch.set_num_threads(1)  # adapted: a small CPU run

    train_dataloader, eval_dataloader = get_dataloaders(accelerator, batch_size)

    # If the batch size is too big we use gradient accumulation
    gradient_accumulation_steps = 1
    if batch_size > MAX_GPU_BATCH_SIZE:
        gradient_accumulation_steps = batch_size // MAX_GPU_BATCH_SIZE
        batch_size = MAX_GPU_BATCH_SIZE

    # Instantiate the model (we build the model here so that the seed also control new weights initialization)
    model = BertForSequenceClassification(BertConfig(  # adapted: a tiny BERT from a config
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32))
    model = model.to(accelerator.device)

    # Instantiate optimizer
    optimizer = AdamW(params=model.parameters(), lr=lr)

    # Instantiate scheduler
    lr_scheduler = get_linear_schedule_with_warmup(
        optimizer=optimizer,
        num_warmup_steps=10,
        num_training_steps=(len(train_dataloader) * num_epochs) // gradient_accumulation_steps,
    )

    # Prepare everything
    # There is no specific order to remember, we just need to unpack the objects in the same order we gave them to the
    # prepare method.
    model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader, lr_scheduler
    )

    # New Code #
    # We need to initialize the trackers we use. Overall configurations can also be stored
    if args.with_tracking:
        accelerator.init_trackers("tracking", config)

    measured = {"logged": [], "log_times": []}  # traintel: what the script logged, and when
    # Now we train the model
    for epoch in range(num_epochs):
        model.train()
        # New Code #
        # For our tracking example, we will log the total loss of each epoch
        if args.with_tracking:
            total_loss = 0
        for step, batch in enumerate(train_dataloader):
            outputs = model(**batch)
            loss = outputs.loss
            # New Code #
            if args.with_tracking:
                total_loss += loss.detach().float()
            loss = loss / gradient_accumulation_steps
            accelerator.backward(loss)
            if step % gradient_accumulation_steps == 0:
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()

        model.eval()
        predictions_all, references_all = [], []
        for step, batch in enumerate(eval_dataloader):
            with torch.no_grad():
                outputs = model(**batch)
            predictions = outputs.logits.argmax(dim=-1)
            predictions, references = accelerator.gather_for_metrics((predictions, batch["labels"]))
            predictions_all.append(predictions)
            references_all.append(references)

        # adapted: evaluate.load("glue", "mrpc")'s accuracy and F1, inline
        predictions, references = torch.cat(predictions_all), torch.cat(references_all)
        tp = ((predictions == 1) & (references == 1)).sum().item()
        precision = tp / max(1, (predictions == 1).sum().item())
        recall = tp / max(1, (references == 1).sum().item())
        eval_metric = {"accuracy": (predictions == references).float().mean().item(),
                       "f1": 2 * precision * recall / max(1e-9, precision + recall)}
        # Use accelerator.print to print only on the main process.
        accelerator.print(f"epoch {epoch}:", eval_metric)

        # New Code #
        # To actually log, we call `Accelerator.log`
        # The values passed can be of `str`, `int`, `float` or `dict` of `str` to `float`/`int`
        if args.with_tracking:
            logged = {
                "accuracy": eval_metric["accuracy"],
                "f1": eval_metric["f1"],
                "train_loss": total_loss.item() / len(train_dataloader),
                "epoch": epoch,
            }
            accelerator.log(logged, step=epoch)
            measured["logged"].append(logged)  # traintel
            measured["log_times"].append(time.time())  # traintel

    tracker = accelerator.get_tracker("traintel", unwrap=True) if args.with_tracking else None  # traintel
    accelerator.end_training()
    print(json.dumps({"run_dir": str(tracker.dir) if tracker else None, **measured}))  # traintel


def main():
    parser = argparse.ArgumentParser(description="Simple example of training script.")
    parser.add_argument("--cpu", action="store_true", help="If passed, will train on the CPU.")
    parser.add_argument(
        "--with_tracking",
        action="store_true",
        help="Whether to load in all available experiment trackers from the environment and use them for logging.",
    )
    args = parser.parse_args()
    config = {"lr": 2e-4, "num_epochs": 3, "seed": 42, "batch_size": 16}
    training_function(config, args)


if __name__ == "__main__":
    main()
