# Source: https://github.com/facebookresearch/ConvNeXt/blob/048efcea897d999aed302f2639b6270aedf8d4c8/main.py with train_one_epoch and evaluate from engine.py, WandbLogger and cosine_scheduler from utils.py, ConvNeXt from models/convnext.py (MIT, Copyright (c) Meta Platforms, Inc. and affiliates)
# A W&B-instrumented script ported to traintel by docs/coming-from-wandb.md alone: every W&B
# call is replaced by the table's row, named on the line ("# traintel: row ..."). The W&B calls
# it makes, and what each became:
#   wandb.run is None / wandb.init(project=, config=args)  -> traintel.current_run() is None /
#       traintel.init(project=, config=args, loss=...)   (rows "wandb.init(project=...)" and
#       "wandb.log({"train/loss": l})": the loss is named 'Rank-0_Batch_Wise/train_loss')
#   names 'Rank-0 Batch Wise/...', 'Global Train/...', 'Global Test/...' -> '_' for each space
#       (row "metric names with spaces")
#   wandb.define_metric('Rank-0 Batch Wise/*', step_metric='Rank-0 Batch Wise/global_train_step')
#       and wandb.log({'Rank-0 Batch Wise/global_train_step': it})  -> no define_metric call;
#       run.log({... global_train_step: it}, step=it)   (row "define_metric(step_metric=...)")
#   wandb.log(d, commit=False) for the batch's values      -> run.log(d, commit=False)
#       (row "wandb.log(d, commit=False)")
#   wandb.define_metric('Global Train/*' / 'Global Test/*', step_metric='epoch'), then
#       wandb.log({...}, commit=False) and wandb.log({}) at the end of an epoch -> no
#       define_metric call; run.log_values(...) for the epoch's training figures and run.log_eval
#       for the test figures, where wandb.log({}) committed them (rows "define_metric(step_
#       metric=...)" and "wandb.log({"val/acc": a}, step=n) for evaluation")
#   wandb.summary['n_parameters'] = n                      -> run.summary['n_parameters'] = n
#       (row "wandb.run.summary[...]")
#   no wandb.finish(): W&B finishes the run at exit; traintel does too (row "no wandb.finish()")
# Adapted, besides: random images (no ImageNet; 10 classes, 32x32), the CPU, a ConvNeXt of one
# block per stage with dims 8-64, 3 epochs of 8 steps (batch 16), a cosine schedule with one
# warm-up epoch; no timm (its create_model, accuracy and MetricLogger give way to the model, a
# top-k accuracy and global averages written here), no distribution, mixup, label smoothing,
# EMA, AMP, TensorBoard or checkpoints (the defaults --model_ema false, --use_amp false; mixup
# and smoothing 0 here); "# traintel" marks the lines that changed, and the last line prints the
# figures the script measured itself (every value it logged, per step), as JSON.
import argparse
import datetime
import json
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import traintel  # traintel: was `import wandb` (utils.py)


def str2bool(v):
    if isinstance(v, bool):
        return v
    if v.lower() in ('yes', 'true', 't', 'y', '1'):
        return True
    elif v.lower() in ('no', 'false', 'f', 'n', '0'):
        return False
    else:
        raise argparse.ArgumentTypeError('Boolean value expected.')


def get_args_parser():
    parser = argparse.ArgumentParser('ConvNeXt training and evaluation script for image classification', add_help=False)
    parser.add_argument('--batch_size', default=16, type=int, help='Per GPU batch size')  # adapted: 64
    parser.add_argument('--epochs', default=3, type=int)  # adapted: 300
    parser.add_argument('--update_freq', default=1, type=int, help='gradient accumulation steps')
    parser.add_argument('--model', default='convnext_tiny', type=str, metavar='MODEL')
    parser.add_argument('--input_size', default=32, type=int, help='image input size')  # adapted: 224
    parser.add_argument('--layer_scale_init_value', default=1e-6, type=float)
    parser.add_argument('--head_init_scale', default=1.0, type=float)
    parser.add_argument('--weight_decay', type=float, default=0.05)
    parser.add_argument('--weight_decay_end', type=float, default=None)
    parser.add_argument('--lr', type=float, default=4e-3, metavar='LR')
    parser.add_argument('--min_lr', type=float, default=1e-6, metavar='LR')
    parser.add_argument('--warmup_epochs', type=int, default=1, metavar='N')  # adapted: 20
    parser.add_argument('--warmup_steps', type=int, default=-1, metavar='N')
    parser.add_argument('--nb_classes', default=10, type=int)  # adapted: 1000
    parser.add_argument('--train_size', default=128, type=int)  # adapted: random images
    parser.add_argument('--val_size', default=48, type=int)  # adapted: random images
    parser.add_argument('--seed', default=0, type=int)
    parser.add_argument('--start_epoch', default=0, type=int, metavar='N')
    parser.add_argument('--enable_wandb', type=str2bool, default=True)  # adapted: False
    parser.add_argument('--project', default='convnext', type=str)
    return parser


class Block(nn.Module):  # from models/convnext.py (drop_path 0: no timm DropPath)
    def __init__(self, dim, layer_scale_init_value=1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)  # depthwise conv
        self.norm = LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones((dim)),
                                  requires_grad=True) if layer_scale_init_value > 0 else None

    def forward(self, x):
        input = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = self.norm(x)
        x = self.pwconv1(x)
        x = self.act(x)
        x = self.pwconv2(x)
        if self.gamma is not None:
            x = self.gamma * x
        x = x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        return input + x


class ConvNeXt(nn.Module):  # from models/convnext.py; adapted: depths [1]*4, dims 8-64
    def __init__(self, in_chans=3, num_classes=1000, depths=(1, 1, 1, 1), dims=(8, 16, 32, 64),
                 layer_scale_init_value=1e-6, head_init_scale=1.):
        super().__init__()
        self.downsample_layers = nn.ModuleList()
        stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4),
            LayerNorm(dims[0], eps=1e-6, data_format="channels_first")
        )
        self.downsample_layers.append(stem)
        for i in range(3):
            downsample_layer = nn.Sequential(
                LayerNorm(dims[i], eps=1e-6, data_format="channels_first"),
                nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2),
            )
            self.downsample_layers.append(downsample_layer)
        self.stages = nn.ModuleList()
        for i in range(4):
            stage = nn.Sequential(
                *[Block(dim=dims[i], layer_scale_init_value=layer_scale_init_value) for j in range(depths[i])]
            )
            self.stages.append(stage)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)  # final norm layer
        self.head = nn.Linear(dims[-1], num_classes)
        self.apply(self._init_weights)
        self.head.weight.data.mul_(head_init_scale)
        self.head.bias.data.mul_(head_init_scale)

    def _init_weights(self, m):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=.02)  # adapted: torch's, for timm's
            nn.init.constant_(m.bias, 0)

    def forward_features(self, x):
        for i in range(4):
            x = self.downsample_layers[i](x)
            x = self.stages[i](x)
        return self.norm(x.mean([-2, -1]))  # global average pooling, (N, C, H, W) -> (N, C)

    def forward(self, x):
        x = self.forward_features(x)
        x = self.head(x)
        return x


class LayerNorm(nn.Module):  # from models/convnext.py
    def __init__(self, normalized_shape, eps=1e-6, data_format="channels_last"):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps
        self.data_format = data_format
        self.normalized_shape = (normalized_shape, )

    def forward(self, x):
        if self.data_format == "channels_last":
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        x = self.weight[:, None, None] * x + self.bias[:, None, None]
        return x


class Averages:  # adapted: in place of utils.MetricLogger, its global averages only
    def __init__(self):
        self.total, self.count = {}, {}

    def update(self, n=1, **kwargs):
        for k, v in kwargs.items():
            if v is None:
                continue
            if isinstance(v, torch.Tensor):
                v = v.item()
            self.total[k] = self.total.get(k, 0.0) + v * n
            self.count[k] = self.count.get(k, 0) + n

    def global_avg(self):
        return {k: self.total[k] / self.count[k] for k in self.total}


def accuracy(output, target, topk=(1,)):  # adapted: in place of timm.utils.accuracy, in %
    _, pred = output.topk(max(topk), 1, True, True)
    correct = pred.t().eq(target.reshape(1, -1).expand_as(pred.t()))
    return [correct[:k].reshape(-1).float().sum(0) * 100. / target.size(0) for k in topk]


def cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0,
                     start_warmup_value=0, warmup_steps=-1):  # from utils.py
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_steps > 0:
        warmup_iters = warmup_steps
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = np.array(
        [final_value + 0.5 * (base_value - final_value) * (1 + math.cos(math.pi * i / (len(iters)))) for i in iters])
    schedule = np.concatenate((warmup_schedule, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


class WandbLogger(object):  # from utils.py; the class keeps its name, the calls are traintel's
    def __init__(self, args):
        self.args = args
        # Initialize a W&B run
        if traintel.current_run() is None:  # traintel: was `self._wandb.run is None`
            self._run = traintel.init(  # traintel: row "wandb.init(project=, ..., config=)"
                project=args.project,
                config=args,
                loss='Rank-0_Batch_Wise/train_loss',  # traintel: row "wandb.log({"train/loss": l})"
            )
        else:
            self._run = traintel.current_run()
        OWN['config'] = dict(vars(args))  # traintel: the configuration the run started with

    def log_epoch_metrics(self, metrics):
        """
        Log train/test metrics onto W&B.
        """
        # Log number of model parameters as W&B summary
        self._run.summary['n_parameters'] = metrics.get('n_parameters', None)  # traintel: row "wandb.run.summary[...]"
        metrics.pop('n_parameters', None)

        # Log current epoch
        self._run.log_values({'epoch': metrics.get('epoch')})  # traintel: row "define_metric(step_metric=...)"
        metrics.pop('epoch')

        tests = {}  # traintel: the test figures, for one evaluation where wandb.log({}) was
        for k, v in metrics.items():
            if 'train' in k:
                self._run.log_values({f'Global_Train/{k}': v})  # traintel: row "define_metric(step_metric=...)"
            elif 'test' in k:
                tests[f'Global_Test/{k}'] = v  # traintel: row "... for evaluation", logged below

        self._run.log_eval(**tests)  # traintel: was self._wandb.log({}), which committed them

    def set_steps(self):
        # traintel: row "define_metric(step_metric=...)": one step axis, the loop's own counter,
        # passed as step= where the batch's values are committed (train_one_epoch)
        pass


OWN = {'logged': {}, 'uncommitted': {}, 'epochs': []}  # traintel: the script's own figures


def train_one_epoch(model, criterion, data_loader, optimizer, device, epoch, wandb_logger=None,
                    start_steps=None, lr_schedule_values=None, wd_schedule_values=None,
                    num_training_steps_per_epoch=None, update_freq=None):  # from engine.py
    model.train(True)
    metric_logger = Averages()
    optimizer.zero_grad()
    for data_iter_step, (samples, targets) in enumerate(data_loader):
        step = data_iter_step // update_freq
        if step >= num_training_steps_per_epoch:
            continue
        it = start_steps + step  # global training iteration
        # Update LR & WD for the first acc
        if lr_schedule_values is not None or wd_schedule_values is not None and data_iter_step % update_freq == 0:
            for i, param_group in enumerate(optimizer.param_groups):
                if lr_schedule_values is not None:
                    param_group["lr"] = lr_schedule_values[it] * param_group["lr_scale"]
                if wd_schedule_values is not None and param_group["weight_decay"] > 0:
                    param_group["weight_decay"] = wd_schedule_values[it]

        samples = samples.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        output = model(samples)
        loss = criterion(output, targets)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            print("Loss is {}, stopping training".format(loss_value))
            assert math.isfinite(loss_value)
        loss /= update_freq
        loss.backward()
        if (data_iter_step + 1) % update_freq == 0:
            optimizer.step()
            optimizer.zero_grad()

        class_acc = (output.max(-1)[-1] == targets).float().mean()
        metric_logger.update(loss=loss_value)
        metric_logger.update(class_acc=class_acc)
        min_lr = 10.
        max_lr = 0.
        for group in optimizer.param_groups:
            min_lr = min(min_lr, group["lr"])
            max_lr = max(max_lr, group["lr"])
        metric_logger.update(lr=max_lr)
        metric_logger.update(min_lr=min_lr)
        weight_decay_value = None
        for group in optimizer.param_groups:
            if group["weight_decay"] > 0:
                weight_decay_value = group["weight_decay"]
        metric_logger.update(weight_decay=weight_decay_value)

        if wandb_logger:
            batch = {  # traintel: names by row "metric names with spaces", here and below
                'Rank-0_Batch_Wise/train_loss': loss_value,
                'Rank-0_Batch_Wise/train_max_lr': max_lr,
                'Rank-0_Batch_Wise/train_min_lr': min_lr
            }
            wandb_logger._run.log(batch, commit=False)  # traintel: row "wandb.log(d, commit=False)"
            if class_acc:
                wandb_logger._run.log({'Rank-0_Batch_Wise/train_class_acc': class_acc}, commit=False)  # traintel: row "wandb.log(d, commit=False)"
                batch['Rank-0_Batch_Wise/train_class_acc'] = class_acc.item()
            OWN['uncommitted'][it] = sorted(batch)
            wandb_logger._run.log({'Rank-0_Batch_Wise/global_train_step': it}, step=it)  # traintel: row "define_metric(step_metric=...)"
            batch['Rank-0_Batch_Wise/global_train_step'] = it
            OWN['logged'][it] = {k: float(v) for k, v in batch.items()}

    print("Averaged stats:", metric_logger.global_avg())
    return metric_logger.global_avg()


@torch.no_grad()
def evaluate(data_loader, model, device):  # from engine.py
    criterion = torch.nn.CrossEntropyLoss()
    metric_logger = Averages()
    model.eval()
    for batch in data_loader:
        images = batch[0]
        target = batch[-1]
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        output = model(images)
        loss = criterion(output, target)
        acc1, acc5 = accuracy(output, target, topk=(1, 5))
        batch_size = images.shape[0]
        metric_logger.update(loss=loss.item())
        metric_logger.update(acc1=acc1.item(), n=batch_size)
        metric_logger.update(acc5=acc5.item(), n=batch_size)
    stats = metric_logger.global_avg()
    print('* Acc@1 {:.3f} Acc@5 {:.3f} loss {:.3f}'.format(stats['acc1'], stats['acc5'], stats['loss']))
    return stats


def main(args):
    print(args)
    device = torch.device('cpu')  # adapted: --device cuda
    torch.set_num_threads(1)  # adapted: a small CPU run
    seed = args.seed
    torch.manual_seed(seed)
    np.random.seed(seed)

    # adapted: random images and labels in place of build_dataset (ImageNet)
    dataset_train = torch.utils.data.TensorDataset(
        torch.randn(args.train_size, 3, args.input_size, args.input_size),
        torch.randint(0, args.nb_classes, (args.train_size,)))
    dataset_val = torch.utils.data.TensorDataset(
        torch.randn(args.val_size, 3, args.input_size, args.input_size),
        torch.randint(0, args.nb_classes, (args.val_size,)))

    if args.enable_wandb:
        wandb_logger = WandbLogger(args)
    else:
        wandb_logger = None

    data_loader_train = torch.utils.data.DataLoader(
        dataset_train, shuffle=True, batch_size=args.batch_size, drop_last=True)
    data_loader_val = torch.utils.data.DataLoader(
        dataset_val, batch_size=int(1.5 * args.batch_size), drop_last=False)

    model = ConvNeXt(num_classes=args.nb_classes, layer_scale_init_value=args.layer_scale_init_value,
                     head_init_scale=args.head_init_scale)
    model.to(device)
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print('number of params:', n_parameters)

    total_batch_size = args.batch_size * args.update_freq
    num_training_steps_per_epoch = len(dataset_train) // total_batch_size

    # optim_factory.get_parameter_groups: no weight decay for biases and norms
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if len(param.shape) == 1 or name.endswith(".bias") else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay, "lr_scale": 1.0},
         {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}], lr=args.lr)

    lr_schedule_values = cosine_scheduler(
        args.lr, args.min_lr, args.epochs, num_training_steps_per_epoch,
        warmup_epochs=args.warmup_epochs, warmup_steps=args.warmup_steps,
    )
    if args.weight_decay_end is None:
        args.weight_decay_end = args.weight_decay
    wd_schedule_values = cosine_scheduler(
        args.weight_decay, args.weight_decay_end, args.epochs, num_training_steps_per_epoch)
    criterion = torch.nn.CrossEntropyLoss()

    max_accuracy = 0.0
    print("Start training for %d epochs" % args.epochs)
    start_time = time.time()
    for epoch in range(args.start_epoch, args.epochs):
        if wandb_logger:
            wandb_logger.set_steps()
        train_stats = train_one_epoch(
            model, criterion, data_loader_train, optimizer, device, epoch,
            wandb_logger=wandb_logger, start_steps=epoch * num_training_steps_per_epoch,
            lr_schedule_values=lr_schedule_values, wd_schedule_values=wd_schedule_values,
            num_training_steps_per_epoch=num_training_steps_per_epoch, update_freq=args.update_freq,
        )
        test_stats = evaluate(data_loader_val, model, device)
        print(f"Accuracy of the model on the {len(dataset_val)} test images: {test_stats['acc1']:.1f}%")
        if max_accuracy < test_stats["acc1"]:
            max_accuracy = test_stats["acc1"]
        print(f'Max accuracy: {max_accuracy:.2f}%')
        log_stats = {**{f'train_{k}': v for k, v in train_stats.items()},
                     **{f'test_{k}': v for k, v in test_stats.items()},
                     'epoch': epoch,
                     'n_parameters': n_parameters}
        OWN['epochs'].append({'step': (epoch + 1) * num_training_steps_per_epoch - 1, **log_stats})  # traintel

        if wandb_logger:
            wandb_logger.log_epoch_metrics(log_stats)

    total_time = time.time() - start_time
    total_time_str = str(datetime.timedelta(seconds=int(total_time)))
    print('Training time {}'.format(total_time_str))
    print(json.dumps({  # traintel: the script's own figures
        'run_dir': str(wandb_logger._run.dir), 'iterations': args.epochs * num_training_steps_per_epoch,
        'n_parameters': n_parameters, 'max_accuracy': max_accuracy, **OWN,
    }))


if __name__ == '__main__':
    parser = argparse.ArgumentParser('ConvNeXt training and evaluation script', parents=[get_args_parser()])
    args = parser.parse_args()
    main(args)
