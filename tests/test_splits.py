"""The validation split is held out of the 60,000 MNIST training images, disjoint and of the
configured size; the test set is the official 10,000 images."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from torchvision.datasets import MNIST

from vae_lab.data import MNISTDataModule


def image_counts(images: torch.Tensor) -> Counter:
    return Counter(bytes(row) for row in images.to(torch.uint8).reshape(images.shape[0], -1).numpy())


def test_train_and_validation_partition_the_training_images(data_root: Path) -> None:
    # The discrete form serves the 8-bit values themselves, so images can be compared exactly.
    datamodule = MNISTDataModule(root=str(data_root), data_form="discrete")
    datamodule.setup()
    train, val, test = (datamodule.splits[name] for name in ("train", "val", "test"))
    assert (train.shape[0], val.shape[0], test.shape[0]) == (50_000, 10_000, 10_000)  # the defaults
    official_train = MNIST(str(data_root), train=True).data
    assert image_counts(train) + image_counts(val) == image_counts(official_train)
    assert torch.equal(test.to(torch.uint8).squeeze(1), MNIST(str(data_root), train=False).data)


def test_split_size_subset_and_seed(data_root: Path) -> None:
    def splits(**settings):
        datamodule = MNISTDataModule(root=str(data_root), data_form="discrete", **settings)
        datamodule.setup()
        return datamodule.splits

    small = splits(val_size=500, train_subset=500)
    assert small["train"].shape[0] == 500 and small["val"].shape[0] == 500
    assert not set(image_counts(small["train"])) & set(image_counts(small["val"]))
    # The split depends on split_seed only, not on the run's seed.
    assert torch.equal(splits(val_size=500, seed=9)["val"], small["val"])
    assert not torch.equal(splits(val_size=500, split_seed=1)["val"], small["val"])
