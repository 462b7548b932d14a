"""CIFAR-10 (Krizhevsky 2009), read from the official python release ``<root>/cifar-10-batches-py/``."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from vae_lab.data.base import ImageDataModule
from vae_lab.errors import DataNotFoundError

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
FOLDER = "cifar-10-batches-py"


def read_batch(path: Path) -> np.ndarray:
    """One pickled batch of the official release: ``{b"data": uint8 [N, 3072], ...}``, each row
    the red, green and blue 32x32 planes. Returns uint8 [N, 3, 32, 32]."""
    try:
        with path.open("rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
    except Exception as error:  # a truncated or foreign file: say which one
        raise DataNotFoundError(
            f"{path} is not a CIFAR-10 batch of the official python release ({error}). "
            "Replace it with the file from cifar-10-python.tar.gz."
        ) from error
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DataNotFoundError(f"{path} holds data of shape {data.shape}, not [N, 3072]; it is not a CIFAR-10 batch.")
    return data.reshape(-1, 3, 32, 32)


class CIFAR10DataModule(ImageDataModule):
    """The 50,000 training images (of which ``val_size`` are held out) and the 10,000 test images,
    32x32 RGB.

    The batches are read directly rather than through torchvision's ``CIFAR10`` class, which also
    insists on the md5 of every official file; the format is the official one, so the same files
    work with both.
    """

    image_shape = (3, 32, 32)
    name = "CIFAR-10"
    binarizable = False
    n_train_and_val = 50_000

    def expected_files(self) -> list[Path]:
        return [self.root / FOLDER / name for name in (*TRAIN_BATCHES, TEST_BATCH)]

    def how_to_get(self) -> str:
        return (
            "Extract cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) into the data root, "
            "or run with data.download=true on a machine with network access."
        )

    def download_files(self) -> None:
        from torchvision.datasets import CIFAR10

        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / ".cifar10.lock")):
            CIFAR10(str(self.root), train=True, download=True)

    def load_uint8(self) -> tuple[torch.Tensor, torch.Tensor]:
        train = np.concatenate([read_batch(self.root / FOLDER / name) for name in TRAIN_BATCHES])
        test = read_batch(self.root / FOLDER / TEST_BATCH)
        return torch.from_numpy(train), torch.from_numpy(test)
