"""CIFAR-10 (Krizhevsky 2009), read from the official python release ``<root>/cifar-10-batches-py/``."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from vae_lab.data.base import ImageDataModule
from vae_lab.data.download import base_url, fetch_archive
from vae_lab.errors import DataFileError

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
FOLDER = "cifar-10-batches-py"
#: Images in each batch file of the official release.
PER_BATCH = 10_000
REPLACE = (
    "replace it with the file from cifar-10-python.tar.gz (delete it and run with data.download=true, "
    "or extract the archive again)"
)


def read_batch(path: Path) -> np.ndarray:
    """One pickled batch of the official release: ``{b"data": uint8 [N, 3072], ...}``, each row
    the red, green and blue 32x32 planes. Returns uint8 [N, 3, 32, 32]."""
    try:
        with path.open("rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
    except Exception as error:  # a truncated or foreign file: say which one
        raise DataFileError(
            f"{path} is not a CIFAR-10 batch of the official python release ({type(error).__name__}: {error}); "
            f"{REPLACE}."
        ) from error
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DataFileError(
            f"{path} holds data of shape {data.shape}, not [N, 3072]: it is not a CIFAR-10 batch; {REPLACE}."
        )
    return data.reshape(-1, 3, 32, 32)


def batch_problem(path: Path, md5: str, verify: bool) -> str | None:
    """What is wrong with one batch file, or None: with ``verify`` it must be the official file
    (its md5, from torchvision's CIFAR10 lists; one pass over the file when it is); without, a
    readable batch of 32x32 RGB rows of any length (hand-made files such as the tests' samples)."""
    from torchvision.datasets.utils import calculate_md5

    if verify and calculate_md5(str(path)) == md5:
        return None
    try:
        images = read_batch(path)
    except DataFileError as error:
        return str(error)
    if not verify:
        return None
    hand_made = "or set data.verify=false for hand-made batches"
    if images.shape[0] != PER_BATCH:
        count = images.shape[0]
        return f"{path} holds {count:,} images; an official batch holds {PER_BATCH:,}; {REPLACE}, {hand_made}."
    return f"{path} is not the official file (its md5 is not {md5}): it is damaged; {REPLACE}, {hand_made}."


class CIFAR10DataModule(ImageDataModule):
    """The 50,000 training images (of which ``val_size`` are held out) and the 10,000 test images,
    32x32 RGB.

    The batches are read directly rather than through torchvision's ``CIFAR10`` class, which also
    insists on the md5 of every official file (and of ``batches.meta``, which vae_lab does not
    read); the format is the official one, so the same files work with both. The md5s are checked
    here too unless ``verify=false``, which accepts hand-made batches of the official format.
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
            "or run with data.download=true on a machine with network access (data.mirror=<base URL> for a "
            "mirror of the archive)."
        )

    def file_problems(self) -> list[str]:
        from torchvision.datasets import CIFAR10

        official = dict(CIFAR10.train_list + CIFAR10.test_list)
        problems = (batch_problem(path, official[path.name], self.verify) for path in self.expected_files())
        return [problem for problem in problems if problem]

    def download_files(self) -> None:
        """The release's archive (torchvision's name and md5): the copy in the data root when it is
        there, else from ``data.mirror`` (the archive's name appended) or torchvision's URL."""
        from torchvision.datasets import CIFAR10

        url = base_url(self.mirror) + CIFAR10.filename if self.mirror else CIFAR10.url
        files = [f"{FOLDER}/{name}" for name in (*TRAIN_BATCHES, TEST_BATCH, CIFAR10.meta["filename"])]
        fetch_archive([url], CIFAR10.filename, CIFAR10.tgz_md5, self.root, files)

    def load_uint8(self) -> tuple[torch.Tensor, torch.Tensor]:
        train = np.concatenate([read_batch(self.root / FOLDER / name) for name in TRAIN_BATCHES])
        test = read_batch(self.root / FOLDER / TEST_BATCH)
        return torch.from_numpy(train), torch.from_numpy(test)
