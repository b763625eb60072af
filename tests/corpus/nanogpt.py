# Source: https://github.com/karpathy/nanoGPT/blob/3adf61e154c3fe3fca428ad6bc3818b27a3b8291/train.py (MIT, Copyright (c) 2022 Andrej Karpathy)
# Adapted: config/train_shakespeare_char.py's settings scaled down (log_interval 10,
# eval_interval 40, max_iters 240) as configurator.py would set them; a character-level corpus from the text of
# Python's argparse module in memory instead of data/*.bin; model.py's GPT replaced by
# transformers' GPT2LMHeadModel built from a tiny GPT2Config (no download); CPU, float32, no
# compile, no DDP, no MFU estimate, no checkpoint; "# traintel" marks the lines a user adds and
# those that read the run's /status at half the run and at its end; the last line prints the
# figures the script measured itself, as JSON.
import argparse
import inspect
import json  # traintel: the script's own figures, printed last
import math
import os
import time
import urllib.request  # traintel: the script reads /status as a dashboard would
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

import traintel  # traintel

# -----------------------------------------------------------------------------
# default config values designed to train a gpt2 (124M) on OpenWebText
# I/O
out_dir = 'out'
eval_interval = 40
log_interval = 10
eval_iters = 4
# data
gradient_accumulation_steps = 2 # used to simulate larger batch sizes
batch_size = 4 # if gradient_accumulation_steps > 1, this is the micro-batch size
block_size = 32
# model
n_layer = 2
n_head = 2
n_embd = 32
dropout = 0.0 # for pretraining 0 is good, for finetuning try 0.1+
# adamw optimizer
learning_rate = 1e-3 # max learning rate
max_iters = 240 # total number of training iterations
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.99
grad_clip = 1.0 # clip gradients at this value, or disable if == 0.0
# learning rate decay settings
decay_lr = True # whether to decay the learning rate
warmup_iters = 10 # how many steps to warm up for
lr_decay_iters = 240 # should be ~= max_iters per Chinchilla
min_lr = 1e-4 # minimum learning rate, should be ~= learning_rate/10 per Chinchilla
# system
device = 'cpu' # examples: 'cpu', 'cuda', 'cuda:0', 'cuda:1' etc., or try 'mps' on macbooks
dtype = 'float32'
# -----------------------------------------------------------------------------
config_keys = [k for k,v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
config = {k: globals()[k] for k in config_keys} # will be useful for logging
# -----------------------------------------------------------------------------
master_process = True
seed_offset = 0
ddp_world_size = 1
tokens_per_iter = gradient_accumulation_steps * ddp_world_size * batch_size * block_size
print(f"tokens per iteration will be: {tokens_per_iter:,}")

torch.manual_seed(1337 + seed_offset)
torch.set_num_threads(1)  # adapted: a small CPU run
device_type = 'cuda' if 'cuda' in device else 'cpu' # for later use in torch.autocast
ctx = nullcontext()

# adapted: data/shakespeare_char/prepare.py's character encoding, in memory
text = inspect.getsource(argparse)
chars = sorted(set(text))
stoi = {ch: i for i, ch in enumerate(chars)}
encoded = np.array([stoi[c] for c in text], dtype=np.uint16)
split_at = int(len(encoded) * 0.9)
splits = {'train': encoded[:split_at], 'val': encoded[split_at:]}
meta_vocab_size = len(chars)

# poor man's data loader
def get_batch(split):
    data = splits[split]
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([torch.from_numpy((data[i:i+block_size]).astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy((data[i+1:i+1+block_size]).astype(np.int64)) for i in ix])
    x, y = x.to(device), y.to(device)
    return x, y

# init these up here, can override if init_from='resume' (i.e. from a checkpoint)
iter_num = 0
best_val_loss = 1e9


class GPT(torch.nn.Module):
    """adapted: model.py's GPT(config)(X, Y) -> (logits, loss), on transformers' GPT-2."""

    def __init__(self):
        super().__init__()
        self.lm = GPT2LMHeadModel(GPT2Config(vocab_size=meta_vocab_size, n_positions=block_size,
                                             n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                                             resid_pdrop=dropout, embd_pdrop=dropout,
                                             attn_pdrop=dropout))

    def forward(self, idx, targets):
        logits = self.lm(input_ids=idx).logits
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


model = GPT()
model.to(device)
optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(beta1, beta2),
                              weight_decay=weight_decay)

# helps estimate an arbitrarily accurate loss over either split using many batches
@torch.no_grad()
def estimate_loss():
    out = {}
    model.eval()
    for split in ['train', 'val']:
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            X, Y = get_batch(split)
            with ctx:
                logits, loss = model(X, Y)
            losses[k] = loss.item()
        out[split] = losses.mean()
    model.train()
    return out

# learning rate decay scheduler (cosine with warmup)
def get_lr(it):
    # 1) linear warmup for warmup_iters steps
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    # 2) if it > lr_decay_iters, return min learning rate
    if it > lr_decay_iters:
        return min_lr
    # 3) in between, use cosine decay down to min learning rate
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio)) # coeff ranges 0..1
    return min_lr + coeff * (learning_rate - min_lr)

# logging
run = traintel.init(project="nanogpt", config=config, total_steps=max_iters, http_port=0,  # traintel
                    flush_interval=0.2)  # traintel: rates over most of this short run
measured = {"losses": {}, "lrs": {}, "evals": {}, "best": {}, "log_times": []}  # traintel: what the script saw

def status():  # traintel: the run's /status, flushed up to this iteration
    run.flush()  # traintel
    with urllib.request.urlopen(f"http://127.0.0.1:{run.server.port}/status") as response:  # traintel
        return json.load(response)  # traintel

# training loop
X, Y = get_batch('train') # fetch the very first batch
t0 = time.time()
local_iter_num = 0 # number of iterations in the lifetime of this process
raw_model = model
while True:

    # determine and set the learning rate for this iteration
    lr = get_lr(iter_num) if decay_lr else learning_rate
    for param_group in optimizer.param_groups:
        param_group['lr'] = lr

    # evaluate the loss on train/val sets and write checkpoints
    if iter_num % eval_interval == 0 and master_process:
        losses = estimate_loss()
        print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        best = run.log_eval(step=iter_num, **{"val/loss": losses['val']})  # traintel
        measured["evals"][iter_num] = losses['val'].item()  # traintel
        measured["best"][iter_num] = best["val/loss"]  # traintel
        if losses['val'] < best_val_loss:
            best_val_loss = losses['val']

    # forward backward update, with optional gradient accumulation to simulate larger batch size
    for micro_step in range(gradient_accumulation_steps):
        with ctx:
            logits, loss = model(X, Y)
            loss = loss / gradient_accumulation_steps # scale the loss to account for gradient accumulation
        # immediately async prefetch next batch while model is doing the forward pass on the GPU
        X, Y = get_batch('train')
        loss.backward()
    # clip the gradient
    if grad_clip != 0.0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    # flush the gradients as soon as we can, no need for this memory anymore
    optimizer.zero_grad(set_to_none=True)

    # timing and logging
    t1 = time.time()
    dt = t1 - t0
    t0 = t1
    if iter_num % log_interval == 0 and master_process:
        # get loss as float. note: this is a CPU-GPU sync point
        # scale up to undo the division above, approximating the true total loss (exact would have been a sum)
        lossf = loss.item() * gradient_accumulation_steps
        print(f"iter {iter_num}: loss {lossf:.4f}, time {dt*1000:.2f}ms")
        run.log({"loss": lossf, "lr": lr}, step=iter_num, step_s=dt,  # traintel
                tokens=tokens_per_iter)  # traintel
        measured["losses"][iter_num], measured["lrs"][iter_num] = lossf, lr  # traintel
        measured["log_times"].append((iter_num, time.time(), tokens_per_iter))  # traintel
    if iter_num == max_iters // 2:  # traintel
        measured["status_at_half"] = status()  # traintel
    iter_num += 1
    local_iter_num += 1

    # termination conditions
    if iter_num > max_iters:
        break

measured["status"] = status()  # traintel
run.finish()  # traintel
print(json.dumps({"run_dir": str(run.dir), "iterations": iter_num,  # traintel
                  "best_val_loss": best_val_loss.item(), **measured}))  # traintel
