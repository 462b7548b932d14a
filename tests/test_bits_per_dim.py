"""Bits per dimension of models whose answer is known exactly, on real MNIST and CIFAR-10 pixels."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.distributions import Categorical, Independent, Uniform

from vae_lab.data import MNISTDataModule
from vae_lab.data.base import dequantize
from vae_lab.data.forms import DataForm
from vae_lab.model.likelihoods import BernoulliLikelihood


@pytest.fixture(scope="module")
def cifar_images(data_root: Path) -> torch.Tensor:
    """The first 100 real CIFAR-10 images of the sample, uint8 [N, 3, 32, 32]."""
    array = np.asarray(Image.open(data_root / "cifar10-sample" / "cifar10_batch_0.png")).reshape(1000, 32, 32, 3)
    return torch.from_numpy(array[:100].copy()).permute(0, 3, 1, 2)


def test_uniform_mass_over_256_values_is_8_bits(cifar_images: torch.Tensor) -> None:
    x = cifar_images.long()  # the discrete form: x in {0, ..., 255}
    model = Independent(Categorical(logits=torch.zeros(*x.shape, 256)), 3)
    nll = -model.log_prob(x)
    torch.testing.assert_close(nll, torch.full((100,), 3072 * math.log(256)))
    bits = DataForm.DISCRETE.bits_per_dim(nll, n_dims=3072)
    torch.testing.assert_close(bits, torch.full((100,), 8.0))


def test_uniform_density_on_dequantized_pixels_is_8_bits(cifar_images: torch.Tensor) -> None:
    y = dequantize(cifar_images, torch.Generator().manual_seed(0))  # (x + u) / 256 in [0, 1)
    assert y.min() >= 0 and y.max() < 1
    model = Independent(Uniform(torch.zeros(3, 32, 32), torch.ones(3, 32, 32)), 3)
    nll = -model.log_prob(y)  # density 1 on [0, 1)^D: 0 nats, which is 8 bits per 8-bit value
    bits = DataForm.CONTINUOUS.bits_per_dim(nll, n_dims=3072)
    torch.testing.assert_close(bits, torch.full((100,), 8.0))


def test_bernoulli_one_half_on_binary_pixels_is_one_bit(data_root: Path) -> None:
    datamodule = MNISTDataModule(root=str(data_root), data_form="binary", val_size=1000)
    datamodule.setup()
    x = datamodule.splits["test"][:100]
    nll = -BernoulliLikelihood(channels=1)(torch.zeros(100, 1, 28, 28)).log_prob(x)
    torch.testing.assert_close(nll, torch.full((100,), 784 * math.log(2)))
    bits = DataForm.BINARY.bits_per_dim(nll, n_dims=datamodule.n_dims)
    torch.testing.assert_close(bits, torch.full((100,), 1.0))
