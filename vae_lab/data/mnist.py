"""MNIST (LeCun et al. 1998), read with torchvision's dataset class from ``<root>/MNIST/raw/``."""

from __future__ import annotations

from pathlib import Path

import torch
from filelock import FileLock
from torch.utils.data import Dataset

from vae_lab.data.base import ImageDataModule

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class MNISTDataModule(ImageDataModule):
    """60,000 training images (of which ``val_size`` are held out for validation) and the official
    10,000 test images, 28x28 grey."""

    image_shape = (1, 28, 28)
    name = "MNIST"
    n_train_and_val = 60_000

    def expected_files(self) -> list[Path]:
        return [self.root / "MNIST" / "raw" / name for name in RAW_FILES]

    def how_to_get(self) -> str:
        return (
            "Copy the four original MNIST files (uncompressed, or the .gz files beside them) into that "
            "folder, or run with data.download=true on a machine with network access."
        )

    def download_files(self) -> None:
        from torchvision.datasets import MNIST

        self.root.mkdir(parents=True, exist_ok=True)
        # Parallel sweep jobs share the data root: one downloads, the others wait and then find it.
        with FileLock(str(self.root / ".mnist.lock")):
            MNIST(str(self.root), train=True, download=True)

    def torchvision_train_set(self) -> Dataset:
        """torchvision's ``MNIST`` with ``PILToTensor``: per image, a PIL image turned into uint8 [1, 28, 28]."""
        from torchvision.datasets import MNIST
        from torchvision.transforms import PILToTensor

        return MNIST(str(self.root), train=True, download=False, transform=PILToTensor())

    def load_uint8(self) -> tuple[torch.Tensor, torch.Tensor]:
        # torchvision's class (issue 2). Lightning imports torchvision anyway (through torchmetrics),
        # so reading the IDX files with a reader of our own would save only ~0.1 s of a run's start.
        from torchvision.datasets import MNIST

        train = MNIST(str(self.root), train=True, download=False).data
        test = MNIST(str(self.root), train=False, download=False).data
        return train.unsqueeze(1), test.unsqueeze(1)
