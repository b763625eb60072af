# Source: https://github.com/pytorch/examples/blob/77f55b912142e11fcfdf5b530231fb9c52f181e8/mnist/main.py (BSD-3-Clause, Copyright (c) 2017 Pytorch contributors)
# Adapted: random 28x28 images instead of the torchvision download (--train-size, --test-size), CPU
# only, one thread; "# traintel" marks the lines a user adds; the last line prints the figures the
# script measured itself, as JSON. 21 batches of 64 per epoch, so an epoch's last batch is logged.
import argparse
import json  # traintel: the script's own figures, printed last
import time  # traintel: the script's own throughput

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import TensorDataset

import traintel  # traintel

measured = {"losses": {}, "tests": {}, "log_times": []}  # traintel: what the script saw


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output


def train(args, model, device, train_loader, optimizer, epoch, run):
    model.train()
    for batch_idx, (data, target) in enumerate(train_loader):
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        if batch_idx % args.log_interval == 0:
            print('Train Epoch: {} [{}/{} ({:.0f}%)]\tLoss: {:.6f}'.format(
                epoch, batch_idx * len(data), len(train_loader.dataset),
                100. * batch_idx / len(train_loader), loss.item()))
            step = (epoch - 1) * len(train_loader) + batch_idx  # traintel
            run.log(step=step, loss=loss.item(), samples=len(data),  # traintel
                    lr=optimizer.param_groups[0]["lr"])  # traintel
            measured["losses"][step] = loss.item()  # traintel
            measured["log_times"].append((step, time.time(), len(data)))  # traintel
            if args.dry_run:
                break


def test(model, device, test_loader, run, step):
    model.eval()
    test_loss = 0
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += F.nll_loss(output, target, reduction='sum').item()  # sum up batch loss
            pred = output.argmax(dim=1, keepdim=True)  # get the index of the max log-probability
            correct += pred.eq(target.view_as(pred)).sum().item()

    test_loss /= len(test_loader.dataset)

    print('\nTest set: Average loss: {:.4f}, Accuracy: {}/{} ({:.0f}%)\n'.format(
        test_loss, correct, len(test_loader.dataset),
        100. * correct / len(test_loader.dataset)))
    accuracy = correct / len(test_loader.dataset)  # traintel
    run.log_eval(step=step, test_loss=test_loss, accuracy=accuracy)  # traintel
    measured["tests"][step] = {"test_loss": test_loss, "accuracy": accuracy}  # traintel


def main():
    # Training settings
    parser = argparse.ArgumentParser(description='PyTorch MNIST Example')
    parser.add_argument('--batch-size', type=int, default=64, metavar='N',
                        help='input batch size for training (default: 64)')
    parser.add_argument('--test-batch-size', type=int, default=1000, metavar='N',
                        help='input batch size for testing (default: 1000)')
    parser.add_argument('--epochs', type=int, default=14, metavar='N',
                        help='number of epochs to train (default: 14)')
    parser.add_argument('--lr', type=float, default=1.0, metavar='LR',
                        help='learning rate (default: 1.0)')
    parser.add_argument('--gamma', type=float, default=0.7, metavar='M',
                        help='Learning rate step gamma (default: 0.7)')
    parser.add_argument('--dry-run', action='store_true',
                        help='quickly check a single pass')
    parser.add_argument('--seed', type=int, default=1, metavar='S',
                        help='random seed (default: 1)')
    parser.add_argument('--log-interval', type=int, default=10, metavar='N',
                        help='how many batches to wait before logging training status')
    parser.add_argument('--train-size', type=int, default=21 * 64)  # adapted: synthetic data
    parser.add_argument('--test-size', type=int, default=256)  # adapted: synthetic data
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # adapted: a small CPU run
    device = torch.device("cpu")

    train_kwargs = {'batch_size': args.batch_size}
    test_kwargs = {'batch_size': args.test_batch_size}

    # adapted: random images and labels stand in for datasets.MNIST (no download)
    dataset1 = TensorDataset(torch.randn(args.train_size, 1, 28, 28),
                             torch.randint(0, 10, (args.train_size,)))
    dataset2 = TensorDataset(torch.randn(args.test_size, 1, 28, 28),
                             torch.randint(0, 10, (args.test_size,)))
    train_loader = torch.utils.data.DataLoader(dataset1, **train_kwargs)
    test_loader = torch.utils.data.DataLoader(dataset2, **test_kwargs)

    model = Net().to(device)
    optimizer = optim.Adadelta(model.parameters(), lr=args.lr)

    run = traintel.init(project="mnist", config=vars(args), total_epochs=args.epochs,  # traintel
                        total_steps=args.epochs * len(train_loader) - 1)  # traintel
    scheduler = StepLR(optimizer, step_size=1, gamma=args.gamma)
    for epoch in range(1, args.epochs + 1):
        run.begin_epoch(epoch)  # traintel
        train(args, model, device, train_loader, optimizer, epoch, run)
        test(model, device, test_loader, run, step=epoch * len(train_loader) - 1)  # traintel
        scheduler.step()
    run.finish()  # traintel
    print(json.dumps({"run_dir": str(run.dir), **measured}))  # traintel


if __name__ == '__main__':
    main()
