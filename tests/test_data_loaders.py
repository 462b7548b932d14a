"""The in-memory path and the torchvision DataLoader path serve the same images, in the same order,
with the same random draws (issue 6, acceptance 4), on the real MNIST files, through real fits."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import quiet_trainer

from vae_lab.data import MNISTDataModule
from vae_lab.data.base import binarize, dequantize
from vae_lab.data.batches import InMemoryBatches, shard_indices
from vae_lab.data.dataloader import EpochShardSampler
from vae_lab.data.forms import DataForm

EPOCHS = 3
#: (data form, binarization): every transform the training loader can apply.
FORMS = [
    (DataForm.BINARY, "dynamic"),
    (DataForm.BINARY, "static"),
    (DataForm.CONTINUOUS, "none"),  # dequantized
    (DataForm.DISCRETE, "none"),  # 8-bit values as floats
]


class RecordBatches(L.LightningModule):
    """Trains one scalar and keeps a copy of every batch it is served, per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.served: list[list[torch.Tensor]] = []

    def on_train_epoch_start(self) -> None:
        self.served.append([])

    def training_step(self, x: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.served[-1].append(x.detach().clone())
        return (self.weight * x.mean() - 1.0) ** 2

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def serve_epochs(data_root, data_form: DataForm, binarization: str, loader: str, num_workers: int = 0):
    datamodule = MNISTDataModule(
        root=str(data_root),
        data_form=data_form,
        batch_size=50,
        val_size=500,
        binarization=binarization,
        seed=7,
        train_subset=500,
        loader=loader,
        num_workers=num_workers,
    )
    recorder = RecordBatches()
    trainer = quiet_trainer(max_epochs=EPOCHS, limit_val_batches=0)
    trainer.fit(recorder, datamodule=datamodule)
    return datamodule, [torch.cat(batches) for batches in recorder.served]


@pytest.mark.parametrize(("data_form", "binarization"), FORMS, ids=[f"{f.value}-{b}" for f, b in FORMS])
def test_memory_and_torchvision_paths_serve_identical_batches(data_root, data_form, binarization):
    datamodule, memory = serve_epochs(data_root, data_form, binarization, "memory")
    _, torchvision = serve_epochs(data_root, data_form, binarization, "torchvision", num_workers=1)

    assert len(memory) == len(torchvision) == EPOCHS
    for epoch in range(EPOCHS):
        assert memory[epoch].shape == (500, 1, 28, 28)
        assert memory[epoch].dtype == torch.float32
        assert torch.equal(memory[epoch], torchvision[epoch]), f"epoch {epoch} differs"
    # A fresh order every epoch.
    assert not torch.equal(memory[0], memory[1])

    # The same set of images every epoch: each epoch is a permutation of the training split.
    grey = datamodule.splits["train"].float()  # uint8 grey values (static: the fixed bits)
    for epoch in range(EPOCHS):
        order = shard_indices(500, shuffle=True, seed=7, epoch=epoch)
        expected = grey[order]
        served = memory[epoch]
        if data_form is DataForm.CONTINUOUS:
            assert torch.equal(torch.floor(served * 256.0), expected)  # y = (x + u) / 256 keeps x
            assert served.sub(expected / 256.0).mul(256.0).mean().item() == pytest.approx(0.5, abs=0.01)
        elif binarization == "dynamic":
            assert torch.all((served == 0) | (served == 1))
            assert torch.all(served[expected == 0] == 0) and torch.all(served[expected == 255] == 1)
        else:  # static bits and 8-bit values are served as they are
            assert torch.equal(served, expected)
    if binarization == "dynamic":  # re-drawn each time an image is served
        first, second = (memory[epoch][torch.argsort(shard_indices(500, True, 7, epoch))] for epoch in (0, 1))
        assert not torch.equal(first, second)


def test_dynamic_binarization_matches_grey_values(data_root):
    """Per pixel, the mean over many draws is grey / 255: Bernoulli(grey / 255), not a threshold."""
    datamodule = MNISTDataModule(root=str(data_root), data_form=DataForm.BINARY, val_size=500, train_subset=200)
    datamodule.setup()
    images = datamodule.splits["train"]
    generator = torch.Generator().manual_seed(0)
    draws = 400
    mean = sum(binarize(images, generator) for _ in range(draws)) / draws
    probability = images.float() / 255.0
    standard_error = (probability * (1 - probability) / draws).sqrt().clamp_min(1e-3)
    z = (mean - probability) / standard_error
    grey = (probability > 0.05) & (probability < 0.95)
    assert grey.sum() > 10_000  # plenty of grey pixels to test on
    assert z[grey].mean().abs().item() < 0.05  # unbiased
    assert z[grey].std().item() == pytest.approx(1.0, abs=0.05)  # Bernoulli variance, draws independent
    assert torch.equal(mean[probability == 0], torch.zeros_like(mean[probability == 0]))
    assert torch.equal(mean[probability == 1], torch.ones_like(mean[probability == 1]))


def test_dequantization_is_uniform_within_each_grey_level():
    images = torch.arange(256, dtype=torch.uint8).repeat(2000)
    y = dequantize(images, torch.Generator().manual_seed(0))
    noise = y * 256.0 - images.float()
    assert noise.min().item() >= 0.0 and noise.max().item() < 1.0
    assert torch.equal(torch.floor(y * 256.0), images.float()) and y.max().item() < 1.0
    assert noise.mean().item() == pytest.approx(0.5, abs=0.005)
    assert noise.var().item() == pytest.approx(1 / 12, abs=0.002)


def test_ddp_shards_are_disjoint_and_the_same_on_both_paths():
    """Each rank draws its own shard of the epoch's permutation; both loader paths agree."""
    images = torch.arange(1001, dtype=torch.uint8).view(1001, 1, 1, 1).expand(1001, 1, 2, 2) % 251
    for epoch in range(2):
        shards = []
        for rank in range(2):
            memory = InMemoryBatches(
                images, 100, shuffle=True, seed=3, epoch=lambda e=epoch: e, rank=lambda r=rank: r, world_size=lambda: 2
            )
            sampler = EpochShardSampler(
                1001, True, 3, epoch=lambda e=epoch: e, rank=lambda r=rank: r, world_size=lambda: 2
            )
            assert memory.shard_indices().tolist() == list(sampler)
            assert len(memory) == 5 and len(sampler) == 500
            shards.append(set(memory.shard_indices().tolist()))
        assert not shards[0] & shards[1]
        assert len(shards[0] | shards[1]) == 1000
