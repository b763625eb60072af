"""README.md's quick start runs as written on a tiny model and records what it says (issue 29,
finding 13: ``samples=len(batch)`` on an ``(x, y)`` batch counted 2 per step, ``train_acc`` was
never defined and the scheduler never stepped). The code block is taken from the README as it
is; only the objects it names (cfg, model, train_loader, train_step, sched, evaluate, save) are
defined around it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import read_lines

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()

PRELUDE = """
import torch
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
cfg = {"lr": 0.1, "batch_size": 32}
model = torch.nn.Linear(8, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
sched = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
data = TensorDataset(torch.randn(640, 8), torch.randint(0, 2, (640,)))
train_loader = DataLoader(data, batch_size=cfg["batch_size"])


def train_step(x, y):
    optimizer.zero_grad()
    out = model(x)
    loss = torch.nn.functional.cross_entropy(out, y)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.detach(), grad_norm, int((out.argmax(1) == y).sum())


def evaluate():
    with torch.no_grad():
        x, y = data.tensors
        out = model(x)
        return (torch.nn.functional.cross_entropy(out, y).item(),
                (out.argmax(1) == y).float().mean().item())


def save(model):
    torch.save(model.state_dict(), "model.pt")
"""


def test_the_quick_start_runs_as_written_and_records_what_it_says(tmp_path):
    block = re.search(r"## Quick start\n\n```python\n(.*?)```", README, re.S).group(1)
    (tmp_path / "quick_start.py").write_text(PRELUDE + "\n" + block)
    env = {
        **os.environ,
        "TRAINTEL_DIR": str(tmp_path / "runs"),
        "TRAINTEL_PROGRESS": "off",
        "OTEL_SDK_DISABLED": "true",
    }
    done = subprocess.run(
        [sys.executable, "quick_start.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (run_dir,) = list((tmp_path / "runs").glob("*"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["epochs"]) == ("finished", 10)
    assert summary["steps"] == 10 * 20 and summary["samples"] == 10 * 640  # 6,400, not 400
    lines = read_lines(run_dir)
    accuracy = [v["metrics"]["train_acc"] for v in lines if v["type"] == "values"]
    assert len(accuracy) == 10 and all(0 <= a <= 1 for a in accuracy)
    rates = [s["metrics"]["lr"] for s in lines if s["type"] == "step"]
    assert rates[0] == 0.1 and rates[-1] == 0.1 * 0.5**9  # the scheduler stepped each epoch
    assert summary["loss"]["count"] == 200
    assert len([e for e in lines if e["type"] == "eval"]) == 10
    assert (tmp_path / "model.pt").is_file()
