"""A gradient-accumulation loop over run.track with the loop's own step numbers.

Not a public script, and so not in the corpus (tests/corpus/, where each script is a public one
adapted minimally): it has the shape of the loop in huggingface/transformers
examples/pytorch/language-modeling/run_clm_no_trainer.py (Apache-2.0 licence): `enumerate` over
the dataloader per epoch, an optimizer step every `gradient_accumulation_steps` batches,
`completed_steps` counted after it, `max_train_steps` ending the run. But the model, the data and
Accelerate are replaced (a small MLP on random data in one CPU process, a 4 ms sleep per batch
for a larger model) and it logs every optimizer step, where the script logs once an epoch through
accelerator.log. No corpus script wraps its loader in run.track with accumulation (Accelerate's
tracking example logs through the tracker, without accumulation at its defaults), so the pattern
is tested here: each batch goes through run.track, which times data wait and compute; the
batches between two logged step numbers belong to the next one. A minimal adaptation of
run_clm_no_trainer.py itself in the corpus would replace this file. Prints what the loop measured
itself as one JSON line (`MEASURED {...}`).

    python accelerate_style.py OUT_DIR
"""

import json
import sys
import time

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import traintel

out_dir = sys.argv[1]
num_train_epochs, gradient_accumulation_steps, per_device_train_batch_size = 2, 4, 16
max_train_steps = 45  # 2 epochs of 24 optimizer steps, stopped early at 45

torch.manual_seed(0)
torch.set_num_threads(1)  # a small model: more threads only contend on a loaded machine
dataset = TensorDataset(
    torch.randn(96 * per_device_train_batch_size, 32),
    torch.randn(96 * per_device_train_batch_size, 1),
)
train_dataloader = DataLoader(dataset, batch_size=per_device_train_batch_size, shuffle=True)
model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
lr_scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.1, max_train_steps)

run = traintel.init(
    project="loops",
    name="accelerate-style",
    dir=out_dir,
    progress="off",
    total_steps=max_train_steps,
    sample_interval=0,
    flush_interval=0.2,
)
measured = {"losses": {}, "batches": 0}
completed_steps = 0
started = time.time()
for epoch in range(num_train_epochs):
    run.begin_epoch(epoch)
    model.train()
    total_loss = 0.0
    for step, batch in enumerate(run.track(train_dataloader)):
        inputs, targets = batch
        loss = nn.functional.mse_loss(model(inputs), targets) / gradient_accumulation_steps
        total_loss += loss.item()
        loss.backward()
        time.sleep(0.004)
        measured["batches"] += 1
        if (step + 1) % gradient_accumulation_steps == 0 or step == len(train_dataloader) - 1:
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
            completed_steps += 1
            loss_value = loss.item() * gradient_accumulation_steps
            run.log(
                {
                    "train_loss": loss_value,
                    "lr": lr_scheduler.get_last_lr()[0],
                    "samples": per_device_train_batch_size * gradient_accumulation_steps,
                },
                step=completed_steps,
            )
            measured["losses"][completed_steps] = loss_value
        if completed_steps >= max_train_steps:
            break
    run.log_values(epoch_loss=total_loss / (step + 1))
    run.end_epoch()
    if completed_steps >= max_train_steps:
        break
measured["seconds"] = time.time() - started
measured["completed_steps"] = completed_steps
measured["run_dir"] = str(run.dir)
run.finish()
print("MEASURED " + json.dumps(measured), flush=True)
