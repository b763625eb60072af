"""A tiny multi-process training loop for tests/test_distributed.py, run by torchrun (gloo, CPU).

    torchrun --nproc_per_node=2 --master_port=PORT tests/dist_train.py --steps 20 [--sync]
        [--project NAME]
        [--seconds S] [--step-sleep S] [--slow-rank R --slow-sleep S] [--hang-rank R --timeout S]

The process group is initialised before ``traintel.init``, as in a DDP script, so that the run id
is agreed over it. ``--sync`` all-reduces every step like DDP; ``--hang-rank`` never joins that
collective, so the others fail with a real gloo timeout after ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta

import torch
import torch.distributed as dist

import traintel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--project", default="dist-test")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seconds", type=float, help="run for this long instead of --steps")
    parser.add_argument("--sync", action="store_true", help="all-reduce every step")
    parser.add_argument("--step-sleep", type=float, default=0.0)
    parser.add_argument("--slow-rank", type=int)
    parser.add_argument("--slow-sleep", type=float, default=0.0)
    parser.add_argument("--hang-rank", type=int)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()

    dist.init_process_group("gloo", timeout=timedelta(seconds=args.timeout))
    rank = dist.get_rank()
    with traintel.init(
        project=args.project, progress="off", sample_interval=0, console_logs=False
    ) as run:
        if rank == args.hang_rank:
            time.sleep(args.timeout + 30)  # alive but never joins: the others time out
        grad = torch.ones(1000)
        deadline = time.monotonic() + (args.seconds or 0)
        steps = iter(int, 1) if args.seconds else range(args.steps)  # forever / --steps
        for _ in run.track(steps):
            time.sleep(args.step_sleep + (args.slow_sleep if rank == args.slow_rank else 0))
            if args.sync or args.hang_rank is not None:
                dist.all_reduce(grad)
            run.log(loss=1.0 / (run.state.step + 1), samples=8)
            if args.seconds and time.monotonic() > deadline:
                break
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
