"""pythae 0.1.2 training the default model on real MNIST: benchmarks/throughput.py's peer row.

    <pythae env>/bin/python benchmarks/pythae_peer.py --root <data root> --epochs 3 --threads 1

Runs inside the benchmark's own environment (benchmarks/.envs/pythae: torch and pythae, not
vae_lab), so it imports only torch, numpy and pythae. The same model as vae_lab's default config:
784-200-200-50 tanh encoder and decoder, Bernoulli likelihood (pythae's ``reconstruction_loss="bce"``),
the closed-form KL; the same data: 50,000 training images of MNIST's training file (vae_lab holds
out 10,000 for validation; images per second do not depend on which), binarized afresh every epoch
(a Bernoulli draw per pixel, as vae_lab's default dynamic binarization); batch 100, Adam 1e-3
(pythae's default Adam), trained by pythae's own ``BaseTrainer`` with its default callbacks (the
progress bar) and no evaluation set. Each epoch is timed from its start (the redraw of the bits
included) to the end of its last training step, as vae_lab.run.epoch_timer times vae_lab's.
Prints one JSON line: a list of {"seconds", "cpu_seconds", "images"} per epoch.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from pythae.data.datasets import BaseDataset
from pythae.models import VAE, VAEConfig
from pythae.models.base.base_utils import ModelOutput
from pythae.models.nn import BaseDecoder, BaseEncoder
from pythae.trainers import BaseTrainer, BaseTrainerConfig
from pythae.trainers.training_callbacks import TrainingCallback
from torch import nn

TRAINING_IMAGES = 50_000
BATCH_SIZE = 100


def read_idx_images(path: Path) -> np.ndarray:
    """The images of an IDX file (MNIST's format: a 16-byte header, then uint8 pixels)."""
    data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    count, rows, columns = (int.from_bytes(data[offset : offset + 4].tobytes(), "big") for offset in (4, 8, 12))
    return data[16:].reshape(count, rows, columns)


class Encoder(BaseEncoder):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(784, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh())
        self.mean = nn.Linear(200, 50)
        self.log_variance = nn.Linear(200, 50)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        h = self.hidden(x.flatten(1))
        return ModelOutput(embedding=self.mean(h), log_covariance=self.log_variance(h))


class Decoder(BaseDecoder):
    def __init__(self) -> None:
        super().__init__()
        self.network = nn.Sequential(
            nn.Linear(50, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh(), nn.Linear(200, 784), nn.Sigmoid()
        )

    def forward(self, z: torch.Tensor) -> ModelOutput:
        return ModelOutput(reconstruction=self.network(z).reshape(-1, 1, 28, 28))


class EpochClock(TrainingCallback):
    """Redraws the training bits at the start of each epoch and times the epoch's training steps."""

    def __init__(self, dataset: BaseDataset, grey: torch.Tensor) -> None:
        self.dataset, self.grey = dataset, grey
        self.generator = torch.Generator().manual_seed(0)
        self.epochs: list[dict] = []
        self.started = self.cpu_started = self.ended = self.cpu_ended = 0.0
        self.images = 0

    def on_epoch_begin(self, training_config: BaseTrainerConfig, **kwargs) -> None:
        self.started, self.cpu_started, self.images = time.perf_counter(), time.process_time(), 0
        self.dataset.data.copy_(torch.bernoulli(self.grey, generator=self.generator))

    def on_train_step_end(self, training_config: BaseTrainerConfig, **kwargs) -> None:
        self.ended, self.cpu_ended = time.perf_counter(), time.process_time()
        self.images += BATCH_SIZE

    def on_epoch_end(self, training_config: BaseTrainerConfig, **kwargs) -> None:
        self.epochs.append(
            {
                "seconds": self.ended - self.started,
                "cpu_seconds": self.cpu_ended - self.cpu_started,
                "images": self.images,
            }
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="the data root (holds MNIST/raw/)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    torch.manual_seed(0)
    images = read_idx_images(arguments.root / "MNIST" / "raw" / "train-images-idx3-ubyte")[:TRAINING_IMAGES]
    grey = torch.from_numpy(images.copy()).float().div_(255.0).unsqueeze(1)  # [N, 1, 28, 28] in [0, 1]
    dataset = BaseDataset(torch.zeros_like(grey), torch.zeros(len(grey)))
    clock = EpochClock(dataset, grey)
    model = VAE(
        model_config=VAEConfig(input_dim=(1, 28, 28), latent_dim=50, reconstruction_loss="bce"),
        encoder=Encoder(),
        decoder=Decoder(),
    )
    with tempfile.TemporaryDirectory(prefix="pythae_peer_") as folder:
        config = BaseTrainerConfig(
            output_dir=folder,
            num_epochs=arguments.epochs,
            learning_rate=1e-3,
            per_device_train_batch_size=BATCH_SIZE,
            steps_saving=None,
            no_cuda=True,
        )
        BaseTrainer(model, dataset, None, config, callbacks=[clock]).train()
    print(json.dumps(clock.epochs))


if __name__ == "__main__":
    main()
