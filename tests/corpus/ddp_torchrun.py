# Source: https://github.com/pytorch/examples/blob/77f55b912142e11fcfdf5b530231fb9c52f181e8/distributed/ddp-tutorial-series/multigpu_torchrun.py with MyTrainDataset from datautils.py (BSD-3-Clause, Copyright (c) 2017 Pytorch contributors)
# Adapted: CPU and gloo instead of CUDA and NCCL; mse_loss instead of cross_entropy, which is
# identically 0 for the tutorial's one-output model; the snapshot under --snapshot_path; "#
# traintel" marks the lines a user adds; the last line prints the figures each rank measured
# itself, as JSON. Run as the tutorial says: torchrun --standalone --nproc_per_node=2 ...
# Adapted for a job whose one rank fails: --corrupt_sample N gives sample N 19 features instead of
# 20 (a bad record), so that default_collate's torch.stack raises on the rank the
# DistributedSampler gives it to (N % world size), at its batch N // world size // batch size;
# main is wrapped in torchrun's @record, as its docs recommend, so that its "Root Cause" names
# the exception (without it, only an exit code).
import json  # traintel: the script's own figures, printed last
import time  # traintel: the script's own throughput

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, DataLoader

import torch.multiprocessing as mp
from torch.utils.data.distributed import DistributedSampler
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.distributed import init_process_group, destroy_process_group
from torch.distributed.elastic.multiprocessing.errors import record  # adapted: --corrupt_sample
import os

import traintel  # traintel


class MyTrainDataset(Dataset):  # from datautils.py
    def __init__(self, size, corrupt_sample=None):
        self.size = size
        self.data = [(torch.rand(20), torch.rand(1)) for _ in range(size)]
        if corrupt_sample is not None:  # adapted: one bad record
            self.data[corrupt_sample] = (torch.rand(19), torch.rand(1))

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        return self.data[index]


def ddp_setup():
    init_process_group(backend="gloo")  # adapted: CPU


class Trainer:
    def __init__(
        self,
        model: torch.nn.Module,
        train_data: DataLoader,
        optimizer: torch.optim.Optimizer,
        save_every: int,
        snapshot_path: str,
    ) -> None:
        self.gpu_id = int(os.environ["LOCAL_RANK"])
        self.model = model
        self.train_data = train_data
        self.optimizer = optimizer
        self.save_every = save_every
        self.epochs_run = 0
        self.snapshot_path = snapshot_path
        if os.path.exists(snapshot_path):
            print("Loading snapshot")
            self._load_snapshot(snapshot_path)

        self.model = DDP(self.model)  # adapted: CPU
        self.run = traintel.init(project="ddp-tutorial")  # traintel: every rank, after the group
        self.measured = {"batches": 0, "samples": 0, "losses": []}  # traintel

    def _load_snapshot(self, snapshot_path):
        snapshot = torch.load(snapshot_path)
        self.model.load_state_dict(snapshot["MODEL_STATE"])
        self.epochs_run = snapshot["EPOCHS_RUN"]
        print(f"Resuming training from snapshot at Epoch {self.epochs_run}")

    def _run_batch(self, source, targets):
        self.optimizer.zero_grad()
        output = self.model(source)
        loss = F.mse_loss(output, targets)  # adapted: a loss that is not identically 0
        loss.backward()
        self.optimizer.step()
        self.run.log(loss=loss.item(), samples=len(source))  # traintel
        self.measured["losses"].append(loss.item())  # traintel

    def _run_epoch(self, epoch):
        b_sz = len(next(iter(self.train_data))[0])
        print(f"[GPU{self.gpu_id}] Epoch {epoch} | Batchsize: {b_sz} | Steps: {len(self.train_data)}")
        self.train_data.sampler.set_epoch(epoch)
        for source, targets in self.train_data:
            self._run_batch(source, targets)
            self.measured["batches"] += 1  # traintel
            self.measured["samples"] += len(source)  # traintel
            self.measured.setdefault("first_batch_end", time.time())  # traintel
            self.measured["last_batch_end"] = time.time()  # traintel
            self.measured.setdefault("first_batch_samples", len(source))  # traintel

    def _save_snapshot(self, epoch):
        snapshot = {
            "MODEL_STATE": self.model.module.state_dict(),
            "EPOCHS_RUN": epoch,
        }
        torch.save(snapshot, self.snapshot_path)
        print(f"Epoch {epoch} | Training snapshot saved at {self.snapshot_path}")

    def train(self, max_epochs: int):
        for epoch in range(self.epochs_run, max_epochs):
            self._run_epoch(epoch)
            if self.gpu_id == 0 and epoch % self.save_every == 0:
                self._save_snapshot(epoch)
        self.run.finish()  # traintel
        print(json.dumps({"rank": int(os.environ["RANK"]), "run_id": self.run.id,  # traintel
                          "run_dir": str(self.run.dir), **self.measured}))  # traintel


def load_train_objs(corrupt_sample=None):
    train_set = MyTrainDataset(2048, corrupt_sample)  # load your dataset
    model = torch.nn.Linear(20, 1)  # load your model
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    return train_set, model, optimizer


def prepare_dataloader(dataset: Dataset, batch_size: int):
    return DataLoader(
        dataset,
        batch_size=batch_size,
        pin_memory=False,  # adapted: CPU
        shuffle=False,
        sampler=DistributedSampler(dataset)
    )


@record  # adapted: torchrun's Root Cause names the exception
def main(save_every: int, total_epochs: int, batch_size: int, snapshot_path: str = "snapshot.pt",
         corrupt_sample=None):
    ddp_setup()
    torch.set_num_threads(1)  # adapted: two ranks on a small CPU
    dataset, model, optimizer = load_train_objs(corrupt_sample)
    train_data = prepare_dataloader(dataset, batch_size)
    trainer = Trainer(model, train_data, optimizer, save_every, snapshot_path)
    trainer.train(total_epochs)
    destroy_process_group()


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description='simple distributed training job')
    parser.add_argument('total_epochs', type=int, help='Total epochs to train the model')
    parser.add_argument('save_every', type=int, help='How often to save a snapshot')
    parser.add_argument('--batch_size', default=32, type=int, help='Input batch size on each device (default: 32)')
    parser.add_argument('--snapshot_path', default='snapshot.pt')  # adapted
    parser.add_argument('--corrupt_sample', type=int)  # adapted: a job whose one rank fails
    args = parser.parse_args()

    main(args.save_every, args.total_epochs, args.batch_size, args.snapshot_path, args.corrupt_sample)
