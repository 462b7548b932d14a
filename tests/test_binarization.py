"""How MNIST pixels are served: dynamic binarization redraws, static draws once, evaluation bits
are fixed for every run, on the real MNIST files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vae_lab.data import MNISTDataModule
from vae_lab.data.batches import InMemoryBatches

SUBSET = 500


def make_datamodule(data_root: Path, **overrides) -> MNISTDataModule:
    settings = dict(root=str(data_root), data_form="binary", batch_size=100, val_size=1000, train_subset=SUBSET)
    datamodule = MNISTDataModule(**{**settings, **overrides})
    datamodule.setup()
    return datamodule


def served_epoch(loader: InMemoryBatches, epoch: int) -> torch.Tensor:
    """Every training image as served in ``epoch``, put back in data-set order."""
    loader.epoch = lambda: epoch
    served = torch.cat(list(loader))
    images = torch.empty_like(served)
    images[loader.shard_indices()] = served
    return images


def test_dynamic_binarization_draws_fresh_bits_every_epoch(data_root: Path) -> None:
    datamodule = make_datamodule(data_root, seed=3)
    assert datamodule.binarization == "dynamic"  # the default for a Bernoulli likelihood
    grey = datamodule.splits["train"].float() / 255.0
    loader = datamodule.train_dataloader()
    first, second = served_epoch(loader, 0), served_epoch(loader, 1)
    assert first.shape == (SUBSET, 1, 28, 28)
    assert set(first.unique().tolist()) == {0.0, 1.0}
    # Different bits for the same images; pixels that are black or white in the original stay so.
    changed = (first != second).float().mean().item()
    expected_changed = (2 * grey * (1 - grey)).mean().item()  # P(two draws differ), averaged
    assert changed == pytest.approx(expected_changed, rel=0.1)
    assert (first[grey == 0] == 0).all() and (first[grey == 1] == 1).all()
    # Each pixel is Bernoulli(grey value): over 5 epochs the mean of the bits matches the grey mean.
    epochs = torch.stack([served_epoch(loader, epoch) for epoch in range(5)])
    n = epochs.numel()
    standard_error = (grey * (1 - grey)).sum().sqrt().item() * 5**0.5 / n
    assert abs(epochs.mean().item() - grey.mean().item()) < 4 * standard_error
    # A given (seed, epoch) always serves the same bits: a resumed run redraws the same epoch.
    torch.testing.assert_close(served_epoch(datamodule.train_dataloader(), 1), second)


def test_static_binarization_draws_once(data_root: Path) -> None:
    datamodule = make_datamodule(data_root, binarization="static")
    loader = datamodule.train_dataloader()
    first, second = served_epoch(loader, 0), served_epoch(loader, 1)
    torch.testing.assert_close(first, second)
    assert set(first.unique().tolist()) == {0.0, 1.0}
    grey = make_datamodule(data_root, data_form="continuous").splits["train"].float() / 255.0
    assert abs(first.mean().item() - grey.mean().item()) < 0.01
    # One draw for every run: the run's seed does not change the static bits.
    torch.testing.assert_close(
        served_epoch(make_datamodule(data_root, binarization="static", seed=5).train_dataloader(), 0), first
    )


def test_evaluation_bits_are_the_same_for_every_run_and_seed(data_root: Path) -> None:
    runs = [make_datamodule(data_root, seed=seed) for seed in (0, 0, 7)]
    for split, size in (("val", 1000), ("test", 10_000)):
        reference = runs[0].splits[split]
        assert reference.shape == (size, 1, 28, 28)
        assert set(reference.unique().tolist()) == {0.0, 1.0}
        for other in runs[1:]:
            assert torch.equal(other.splits[split], reference)
    # The same bits at every evaluation within a run: the loaders serve the stored tensor as it is.
    assert torch.equal(torch.cat(list(runs[0].test_dataloader())), runs[0].splits["test"])
    assert torch.equal(torch.cat(list(runs[0].test_dataloader())), runs[0].splits["test"])


def test_grey_pixels_are_served_unbinarized(data_root: Path) -> None:
    datamodule = make_datamodule(data_root, data_form="continuous")
    assert datamodule.binarization == "none"
    batch = next(iter(datamodule.train_dataloader()))
    assert batch.min() >= 0 and batch.max() < 1
    assert len(batch.unique()) > 256  # dequantized: (x + u) / 256, not 256 grey levels
