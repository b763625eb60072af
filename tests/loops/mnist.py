"""An epoch loop that logs every N batches, instrumented with traintel.

Adapted from pytorch/examples mnist/main.py (BSD 3-Clause licence): train() with
`if batch_idx % args.log_interval == 0`, test() with the test loss and accuracy, a StepLR
scheduler, epochs counted from 1. Random 28x28 images stand in for MNIST (no download), the model
is a small MLP and a 5 ms sleep per batch stands in for a larger one. Epoch-level figures (train
accuracy) go to run.log_values: they are not a step. The loop prints what it measured itself as
one JSON line (`MEASURED {...}`).

    python mnist.py OUT_DIR
"""

import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader, TensorDataset

import traintel

out_dir = sys.argv[1]
batch_size, epochs, lr, gamma, log_interval = 32, 3, 1.0, 0.7, 10
batches_per_epoch = 41  # batch 40 is the last of an epoch and logged: every step is counted


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return F.log_softmax(self.fc2(x), dim=1)


def train(model, train_loader, optimizer, epoch):
    model.train()
    correct = 0
    for batch_idx, (data, target) in enumerate(train_loader):
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        time.sleep(0.005)
        correct += output.argmax(dim=1).eq(target).sum().item()
        if batch_idx % log_interval == 0:
            print("Train Epoch: {} [{}/{} ({:.0f}%)]\tLoss: {:.6f}".format(
                epoch, batch_idx * len(data), len(train_loader.dataset),
                100. * batch_idx / len(train_loader), loss.item()))
            step = (epoch - 1) * len(train_loader) + batch_idx
            run.log(step=step, loss=loss.item(), samples=len(data))
            measured["losses"][step] = loss.item()
    return correct / len(train_loader.dataset)


def test(model, test_loader):
    model.eval()
    test_loss = 0
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            output = model(data)
            test_loss += F.nll_loss(output, target, reduction="sum").item()
            correct += output.argmax(dim=1).eq(target).sum().item()
    test_loss /= len(test_loader.dataset)
    return test_loss, correct / len(test_loader.dataset)


torch.manual_seed(1)
torch.set_num_threads(1)  # a small model: more threads only contend on a loaded machine
train_set = TensorDataset(torch.randn(batches_per_epoch * batch_size, 1, 28, 28),
                          torch.randint(10, (batches_per_epoch * batch_size,)))
test_set = TensorDataset(torch.randn(256, 1, 28, 28), torch.randint(10, (256,)))
train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True)
test_loader = DataLoader(test_set, batch_size=256)
model = Net()
optimizer = optim.Adadelta(model.parameters(), lr=lr)
scheduler = StepLR(optimizer, step_size=1, gamma=gamma)
run = traintel.init(project="loops", name="mnist", dir=out_dir, progress="off",
                    config={"batch_size": batch_size, "epochs": epochs, "lr": lr},
                    total_steps=epochs * batches_per_epoch - 1, sample_interval=0,
                    flush_interval=0.2)
measured = {"losses": {}, "tests": {}, "train_accuracy": {}}
started = time.time()
for epoch in range(1, epochs + 1):
    run.begin_epoch(epoch)
    train_accuracy = train(model, train_loader, optimizer, epoch)
    test_loss, accuracy = test(model, test_loader)
    last_step = epoch * len(train_loader) - 1
    run.log_eval(step=last_step, test_loss=test_loss, accuracy=accuracy)
    run.log_values(train_accuracy=train_accuracy)
    measured["tests"][epoch] = {"test_loss": test_loss, "accuracy": accuracy}
    measured["train_accuracy"][epoch] = train_accuracy
    run.end_epoch()
    scheduler.step()
measured["seconds"] = time.time() - started
measured["steps"] = epochs * len(train_loader)
measured["samples"] = epochs * len(train_loader.dataset)
measured["run_dir"] = str(run.dir)
run.finish()
print("MEASURED " + json.dumps(measured), flush=True)
