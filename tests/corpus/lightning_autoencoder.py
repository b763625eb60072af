# Source: https://github.com/Lightning-AI/pytorch-lightning/blob/7f0c3436cd3f6ad3753125672024fc415cbcb414/README.md ("main.py", the LitAutoEncoder) (Apache-2.0, Copyright The Lightning AI team)
# Adapted: random 28x28 images instead of the torchvision MNIST download; batches of 8; the
# module gains what the corpus asks of it: a validation_step, a StepLR scheduler, gradient
# accumulation (accumulate_grad_batches=2) and the default log_every_n_steps; "# traintel" marks
# the lines a user adds (--traintel logger|callback picks one of the two integrations); the last
# line prints the figures the script saw itself, as JSON.
import argparse  # traintel: which integration
import json  # traintel: the script's own figures, printed last

import torch, torch.nn as nn, torch.utils.data as data, torch.nn.functional as F
import lightning as L

from traintel.integrations.lightning import TraintelCallback, TraintelLogger  # traintel

computed = {"train": [], "val": []}  # traintel: the losses the module computed, in order

# --------------------------------
# Step 1: Define a LightningModule
# --------------------------------
# A LightningModule (nn.Module subclass) defines a full *system*
# (ie: an LLM, diffusion model, autoencoder, or simple image classifier).


class LitAutoEncoder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(28 * 28, 128), nn.ReLU(), nn.Linear(128, 3))
        self.decoder = nn.Sequential(nn.Linear(3, 128), nn.ReLU(), nn.Linear(128, 28 * 28))

    def forward(self, x):
        # in lightning, forward defines the prediction/inference actions
        embedding = self.encoder(x)
        return embedding

    def training_step(self, batch, batch_idx):
        # training_step defines the train loop. It is independent of forward
        x, _ = batch
        x = x.view(x.size(0), -1)
        z = self.encoder(x)
        x_hat = self.decoder(z)
        loss = F.mse_loss(x_hat, x)
        self.log("train_loss", loss)
        computed["train"].append(loss.item())  # traintel
        return loss

    def validation_step(self, batch, batch_idx):  # adapted: validation
        x, _ = batch
        x = x.view(x.size(0), -1)
        loss = F.mse_loss(self.decoder(self.encoder(x)), x)
        self.log("val_loss", loss)
        if not self.trainer.sanity_checking:  # traintel
            computed["val"].append((self.trainer.global_step, loss.item()))  # traintel

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-3)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)  # adapted
        return [optimizer], [scheduler]


parser = argparse.ArgumentParser()  # traintel
parser.add_argument("--traintel", choices=["logger", "callback"], default="logger")  # traintel
args = parser.parse_args()  # traintel
torch.manual_seed(0)  # adapted: reproducible
torch.set_num_threads(1)  # adapted: a small CPU run

# -------------------
# Step 2: Define data
# -------------------
dataset = data.TensorDataset(torch.rand(720, 1, 28, 28), torch.zeros(720))  # adapted: no download
train, val = data.random_split(dataset, [640, 80])

# -------------------
# Step 3: Train
# -------------------
autoencoder = LitAutoEncoder()
traintel_slot = {"logger": TraintelLogger(project="autoencoder")} if args.traintel == "logger" \
    else {"callbacks": [TraintelCallback(project="autoencoder")]}  # traintel
trainer = L.Trainer(max_epochs=2, accumulate_grad_batches=2, accelerator="cpu",  # adapted
                    enable_model_summary=False, **traintel_slot)  # traintel
trainer.fit(autoencoder, data.DataLoader(train, batch_size=8), data.DataLoader(val, batch_size=8))
integration = traintel_slot.get("logger") or traintel_slot["callbacks"][0]  # traintel
run = integration.run  # traintel
integration.finish()  # traintel
print(json.dumps({"run_dir": str(run.dir), "global_step": trainer.global_step,  # traintel
                  "accumulate": trainer.accumulate_grad_batches, **computed}))  # traintel
