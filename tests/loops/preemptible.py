"""A preemptible training loop: the SLURM / Kubernetes pattern.

SIGTERM sets a flag in the loop's own handler (installed first, before anything slow); the loop
writes a checkpoint at the end of the step it is in and exits 0, so that the job is requeued and
a new process resumes from the checkpoint. traintel records the signal, ends the segment
`preempted`, and the new process continues the same run (`resume=True`, one run id for the job).

    python preemptible.py OUT_DIR MAX_STEPS
"""

import signal
import sys

stop = False


def on_sigterm(signum, frame):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_sigterm)

import json  # noqa: E402  (the handler first: a signal may come while torch imports)
import os  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

import traintel  # noqa: E402

out_dir, max_steps = sys.argv[1], int(sys.argv[2])
checkpoint = os.path.join(out_dir, "ckpt.pt")
torch.manual_seed(0)
torch.set_num_threads(1)
model = torch.nn.Linear(16, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
step = 0
if os.path.exists(checkpoint):
    state = torch.load(checkpoint)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    step = state["step"]

with traintel.init(project="preempt", run_id="job-42", resume=True, dir=out_dir,
                   total_steps=max_steps, progress="off", sample_interval=0,
                   flush_interval=0.2) as run:
    print("started", step, flush=True)
    while step < max_steps:
        x = torch.randn(32, 16)
        loss = (model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        time.sleep(0.02)
        step += 1
        run.log(step=step, loss=loss.item())
        if stop:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "step": step}, checkpoint)
            print("checkpointed", json.dumps({"step": step,
                                              "stop_requested": run.stop_requested}),
                  flush=True)
            sys.exit(0)
print("done", step, flush=True)
