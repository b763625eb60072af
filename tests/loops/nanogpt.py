"""A nanoGPT-style training loop, instrumented with traintel as the README's quick start says.

Adapted from karpathy/nanoGPT train.py (MIT licence): its loop is kept (iter_num, gradient
accumulation, eval_interval with estimate_loss, log_interval, the cosine learning-rate schedule,
dt per iteration, `if iter_num > max_iters: break`); the GPT is a tiny embedding model on random
tokens so that it runs on a CPU in seconds, and a 10 ms sleep per iteration stands in for the rest
of a real step. The loop prints what it measured itself as one JSON line (`MEASURED {...}`), which
tests compare with the record, summary.json, /status and the command line.

    python nanogpt.py OUT_DIR [RUN_ID]
"""

import json
import math
import sys
import time
import urllib.request

import torch
import torch.nn as nn
import torch.nn.functional as F

import traintel

out_dir = sys.argv[1]
run_id = sys.argv[2] if len(sys.argv) > 2 else None
# -----------------------------------------------------------------------------
max_iters, eval_interval, log_interval, eval_iters = 120, 40, 10, 4
gradient_accumulation_steps, batch_size, block_size, vocab_size = 4, 8, 16, 64
learning_rate, min_lr, warmup_iters, lr_decay_iters = 1e-3, 1e-4, 10, 120
grad_clip = 1.0
tokens_per_iter = gradient_accumulation_steps * batch_size * block_size
config = {k: v for k, v in globals().items() if isinstance(v, (int, float)) and k[0] != "_"}
# -----------------------------------------------------------------------------
torch.manual_seed(1337)
torch.set_num_threads(1)  # a small model: more threads only contend on a loaded machine
train_data, val_data = torch.randint(vocab_size, (20_000,)), torch.randint(vocab_size, (2_000,))


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, 32)
        self.head = nn.Linear(32, vocab_size)

    def forward(self, idx, targets):
        logits = self.head(self.embed(idx))
        return logits, F.cross_entropy(logits.view(-1, vocab_size), targets.view(-1))


def get_batch(split):
    data = train_data if split == "train" else val_data
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([data[i:i + block_size] for i in ix])
    y = torch.stack([data[i + 1:i + 1 + block_size] for i in ix])
    return x, y


@torch.no_grad()
def estimate_loss():
    out = {}
    model.eval()
    for split in ["train", "val"]:
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            X, Y = get_batch(split)
            logits, loss = model(X, Y)
            losses[k] = loss.item()
        out[split] = losses.mean()
    model.train()
    return out


def get_lr(it):
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


def status(run):
    with urllib.request.urlopen(f"http://127.0.0.1:{run.server.port}/status") as response:
        return json.load(response)


model = TinyLM()
optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
run = traintel.init(project="loops", name="nanogpt", run_id=run_id, dir=out_dir, config=config,
                    total_steps=max_iters, http_port=0, progress="off", flush_interval=0.2,
                    sample_interval=0)
measured = {"losses": {}, "evals": {}, "lrs": {}}

iter_num = 0
best_val_loss = 1e9
X, Y = get_batch("train")
t0 = started = time.time()
while True:
    lr = get_lr(iter_num)
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr

    if iter_num % eval_interval == 0:
        losses = estimate_loss()
        best = run.log_eval(step=iter_num, **{"train/loss": losses["train"],
                                              "val/loss": losses["val"]})
        measured["evals"][iter_num] = {"train/loss": losses["train"].item(),
                                       "val/loss": losses["val"].item(),
                                       "best": best["val/loss"]}
        if losses["val"] < best_val_loss:
            best_val_loss = losses["val"]

    for micro_step in range(gradient_accumulation_steps):
        logits, loss = model(X, Y)
        loss = loss / gradient_accumulation_steps
        X, Y = get_batch("train")
        loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    time.sleep(0.01)

    t1 = time.time()
    dt = t1 - t0
    t0 = t1
    if iter_num % log_interval == 0:
        lossf = loss.item() * gradient_accumulation_steps
        run.log({"loss": lossf, "lr": lr}, step=iter_num, step_s=dt, tokens=tokens_per_iter)
        measured["losses"][iter_num], measured["lrs"][iter_num] = lossf, lr
    if iter_num == max_iters // 2:
        run.flush()
        measured["eta_at_half"] = (max_iters - iter_num) * (t1 - started) / (iter_num + 1)
        measured["status_at_half"] = status(run)
    iter_num += 1
    if iter_num > max_iters:
        break

measured["iterations"] = iter_num
measured["seconds"] = t1 - started
measured["tokens"] = iter_num * tokens_per_iter
run.flush()
measured["status"] = status(run)
measured["run_dir"] = str(run.dir)
run.finish()
print("MEASURED " + json.dumps(measured), flush=True)
