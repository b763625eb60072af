# Source: https://github.com/pytorch/examples/blob/77f55b912142e11fcfdf5b530231fb9c52f181e8/imagenet/main.py (BSD-3-Clause, Copyright (c) 2017 Pytorch contributors)
# Adapted, trimmed to the single-process path of --dummy (fake data) with --resume: random
# images instead of torchvision's FakeData, a small CNN instead of models.__dict__[arch], top-1
# accuracy only (top-5 of 10 classes says little), CPU. The preemption lines a user adds ("#
# traintel"): one run id for the job and resume=True, SIGTERM only flagged (sigterm="flag"), and
# after the epoch's checkpoint, a stop when one was asked for (exit 0: the scheduler requeues
# the job, which starts again with --resume). The last line prints the figures the script
# measured itself, as JSON.
import argparse
import json  # traintel: the script's own figures, printed last
import os
import shutil
import sys  # traintel: exit 0 after a preemption
import time

import torch
import torch.nn as nn
import torch.optim
import torch.utils.data
from torch.optim.lr_scheduler import StepLR

import traintel  # traintel

parser = argparse.ArgumentParser(description='PyTorch ImageNet Training')
parser.add_argument('--epochs', default=4, type=int, metavar='N',
                    help='number of total epochs to run')
parser.add_argument('--start-epoch', default=0, type=int, metavar='N',
                    help='manual epoch number (useful on restarts)')
parser.add_argument('-b', '--batch-size', default=32, type=int, metavar='N')
parser.add_argument('--lr', '--learning-rate', default=0.1, type=float,
                    metavar='LR', help='initial learning rate', dest='lr')
parser.add_argument('--momentum', default=0.9, type=float, metavar='M',
                    help='momentum')
parser.add_argument('--wd', '--weight-decay', default=1e-4, type=float,
                    metavar='W', help='weight decay (default: 1e-4)',
                    dest='weight_decay')
parser.add_argument('-p', '--print-freq', default=10, type=int,
                    metavar='N', help='print frequency (default: 10)')
parser.add_argument('--resume', default='', type=str, metavar='PATH',
                    help='path to latest checkpoint (default: none)')
parser.add_argument('--seed', default=0, type=int,
                    help='seed for initializing training. ')
parser.add_argument('--job-id', default='imagenet-job', help='traintel: the job, across requeues')  # traintel

best_acc1 = 0
measured = {"losses": {}, "acc1": {}, "train": {}, "log_times": []}  # traintel: what the script saw


def main():
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # adapted: a small CPU run
    main_worker(args)


def main_worker(args):
    global best_acc1
    device = torch.device("cpu")
    # create model (adapted: a small CNN for 32x32 images and 10 classes)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(32, 10))

    # define loss function (criterion), optimizer, and learning rate scheduler
    criterion = nn.CrossEntropyLoss().to(device)

    optimizer = torch.optim.SGD(model.parameters(), args.lr,
                                momentum=args.momentum,
                                weight_decay=args.weight_decay)

    """Sets the learning rate to the initial LR decayed by 10 every 30 epochs"""
    scheduler = StepLR(optimizer, step_size=30, gamma=0.1)

    # optionally resume from a checkpoint
    if args.resume:
        if os.path.isfile(args.resume):
            print("=> loading checkpoint '{}'".format(args.resume))
            checkpoint = torch.load(args.resume, weights_only=False)
            args.start_epoch = checkpoint['epoch']
            best_acc1 = checkpoint['best_acc1']
            model.load_state_dict(checkpoint['state_dict'])
            optimizer.load_state_dict(checkpoint['optimizer'])
            scheduler.load_state_dict(checkpoint['scheduler'])
            print("=> loaded checkpoint '{}' (epoch {})"
                  .format(args.resume, checkpoint['epoch']))
        else:
            print("=> no checkpoint found at '{}'".format(args.resume))

    # Data loading code (adapted: random images stand in for FakeData)
    print("=> Dummy data is used!")
    train_dataset = torch.utils.data.TensorDataset(torch.randn(640, 3, 32, 32),
                                                   torch.randint(0, 10, (640,)))
    val_dataset = torch.utils.data.TensorDataset(torch.randn(128, 3, 32, 32),
                                                 torch.randint(0, 10, (128,)))

    train_loader = torch.utils.data.DataLoader(
        train_dataset, batch_size=args.batch_size, shuffle=True)

    val_loader = torch.utils.data.DataLoader(
        val_dataset, batch_size=args.batch_size, shuffle=False)

    run = traintel.init(project="imagenet", run_id=args.job_id, resume=True,  # traintel
                        sigterm="flag", config=vars(args),  # traintel
                        total_steps=args.epochs * len(train_loader))  # traintel
    for epoch in range(args.start_epoch, args.epochs):
        run.begin_epoch(epoch)  # traintel
        # train for one epoch
        train(train_loader, model, criterion, optimizer, epoch, device, args, run)

        # evaluate on validation set
        acc1 = validate(val_loader, model, criterion, args)
        run.log_eval(acc1=acc1)  # traintel
        measured["acc1"][(epoch + 1) * len(train_loader)] = acc1  # traintel

        scheduler.step()

        # remember best acc@1 and save checkpoint
        is_best = acc1 > best_acc1
        best_acc1 = max(acc1, best_acc1)

        save_checkpoint({
            'epoch': epoch + 1,
            'state_dict': model.state_dict(),
            'best_acc1': best_acc1,
            'optimizer' : optimizer.state_dict(),
            'scheduler' : scheduler.state_dict()
        }, is_best)
        if run.stop_requested:  # traintel: preempted: the checkpoint is written, stop
            print(json.dumps({"run_dir": str(run.dir), "stopped_after_epoch": epoch, **measured}))  # traintel
            run.finish()  # traintel
            sys.exit(0)  # traintel
    run.finish()  # traintel
    print(json.dumps({"run_dir": str(run.dir), "best_acc1": best_acc1, **measured}))  # traintel


def train(train_loader, model, criterion, optimizer, epoch, device, args, run):
    batch_time = AverageMeter('Time', ':6.3f')
    data_time = AverageMeter('Data', ':6.3f')
    losses = AverageMeter('Loss', ':.4e')
    top1 = AverageMeter('Acc@1', ':6.2f')
    progress = ProgressMeter(
        len(train_loader),
        [batch_time, data_time, losses, top1],
        prefix="Epoch: [{}]".format(epoch))

    # switch to train mode
    model.train()

    end = time.time()
    for i, (images, target) in enumerate(train_loader):
        # measure data loading time
        data_time.update(time.time() - end)

        # move data to the same device as model
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)

        # compute output
        output = model(images)
        loss = criterion(output, target)

        # measure accuracy and record loss
        acc1, = accuracy(output, target, topk=(1,))
        losses.update(loss.item(), images.size(0))
        top1.update(acc1[0], images.size(0))

        # compute gradient and do SGD step
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

        # measure elapsed time
        batch_time.update(time.time() - end)
        end = time.time()
        step = epoch * len(train_loader) + i + 1  # traintel
        run.log(step=step, loss=loss.item(), samples=images.size(0), step_s=batch_time.val)  # traintel
        measured["losses"][step] = loss.item()  # traintel
        measured["log_times"].append((step, time.time(), images.size(0)))  # traintel

        if i % args.print_freq == 0:
            progress.display(i + 1)
            sys.stdout.flush()  # adapted: the test waits for these lines
    run.log_values(train_loss=losses.avg, train_acc1=top1.avg.item())  # traintel: the epoch's averages
    measured["train"][epoch] = {"train_loss": losses.avg, "train_acc1": top1.avg.item()}  # traintel


def validate(val_loader, model, criterion, args):
    batch_time = AverageMeter('Time', ':6.3f')
    losses = AverageMeter('Loss', ':.4e')
    top1 = AverageMeter('Acc@1', ':6.2f')
    progress = ProgressMeter(
        len(val_loader),
        [batch_time, losses, top1],
        prefix='Test: ')

    # switch to evaluate mode
    model.eval()

    with torch.no_grad():
        end = time.time()
        for i, (images, target) in enumerate(val_loader):
            # compute output
            output = model(images)
            loss = criterion(output, target)

            # measure accuracy and record loss
            acc1, = accuracy(output, target, topk=(1,))
            losses.update(loss.item(), images.size(0))
            top1.update(acc1[0], images.size(0))

            # measure elapsed time
            batch_time.update(time.time() - end)
            end = time.time()

    return top1.avg.item()


def save_checkpoint(state, is_best, filename='checkpoint.pth.tar'):
    torch.save(state, filename)
    if is_best:
        shutil.copyfile(filename, 'model_best.pth.tar')


class AverageMeter(object):
    """Computes and stores the average and current value"""
    def __init__(self, name, fmt=':f'):
        self.name = name
        self.fmt = fmt
        self.reset()

    def reset(self):
        self.val = 0
        self.avg = 0
        self.sum = 0
        self.count = 0

    def update(self, val, n=1):
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count

    def __str__(self):
        fmtstr = '{name} {val' + self.fmt + '} ({avg' + self.fmt + '})'
        return fmtstr.format(**self.__dict__)


class ProgressMeter(object):
    def __init__(self, num_batches, meters, prefix=""):
        self.batch_fmtstr = self._get_batch_fmtstr(num_batches)
        self.meters = meters
        self.prefix = prefix

    def display(self, batch):
        entries = [self.prefix + self.batch_fmtstr.format(batch)]
        entries += [str(meter) for meter in self.meters]
        print('\t'.join(entries))

    def _get_batch_fmtstr(self, num_batches):
        num_digits = len(str(num_batches // 1))
        fmt = '{:' + str(num_digits) + 'd}'
        return '[' + fmt + '/' + fmt.format(num_batches) + ']'


def accuracy(output, target, topk=(1,)):
    """Computes the accuracy over the k top predictions for the specified values of k"""
    with torch.no_grad():
        maxk = max(topk)
        batch_size = target.size(0)

        _, pred = output.topk(maxk, 1, True, True)
        pred = pred.t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))

        res = []
        for k in topk:
            correct_k = correct[:k].reshape(-1).float().sum(0, keepdim=True)
            res.append(correct_k.mul_(100.0 / batch_size))
        return res


if __name__ == '__main__':
    main()
