"""log p(x|z) of every likelihood against its closed form, on real MNIST pixels.

A per-pixel mean instead of a sum, a wrong sign, a missing log sigma or a floor that is not applied
all change these values.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Independent

from vae_lab.data import MNISTDataModule
from vae_lab.model.likelihoods import BernoulliLikelihood, GaussianLikelihood

SAMPLES, BATCH = 2, 16  # decoder outputs carry a sample dimension L in front of the batch


def pixels_summed(values: torch.Tensor) -> torch.Tensor:
    return values.sum(dim=(-3, -2, -1))


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """sum_i [-1/2 log(2 pi) - log sigma_i - (x_i - mu_i)^2 / (2 sigma_i^2)], written out."""
    sigma = sigma.expand_as(mean)
    return pixels_summed(-0.5 * math.log(2 * math.pi) - torch.log(sigma) - (x - mean) ** 2 / (2 * sigma**2))


@pytest.fixture(scope="module")
def mnist_test_images(data_root: Path) -> dict[str, torch.Tensor]:
    """The first test images of real MNIST, binarized once and dequantized once."""
    images = {}
    for form in ("binary", "continuous"):
        datamodule = MNISTDataModule(root=str(data_root), data_form=form, val_size=1000)
        datamodule.setup()
        images[form] = datamodule.splits["test"][:BATCH]
    return images


def decoder_output(channels: int, seed: int = 0) -> torch.Tensor:
    return 2.0 * torch.randn(SAMPLES, BATCH, channels, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_bernoulli_log_prob_is_minus_summed_binary_cross_entropy(mnist_test_images) -> None:
    x = mnist_test_images["binary"]
    assert set(x.unique().tolist()) == {0.0, 1.0}
    logits = decoder_output(1)
    log_prob = BernoulliLikelihood(channels=1)(logits).log_prob(x)
    assert log_prob.shape == (SAMPLES, BATCH)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
    torch.testing.assert_close(log_prob, -pixels_summed(cross_entropy))
    # The same with the probabilities written out: x log p + (1 - x) log(1 - p).
    p = torch.sigmoid(logits.double())
    written_out = pixels_summed(x * torch.log(p) + (1 - x) * torch.log1p(-p))
    torch.testing.assert_close(log_prob.double(), written_out, rtol=1e-5, atol=1e-3)
    # Nats per image: hundreds of nats for random logits, not a per-pixel mean of order one.
    assert (log_prob < -100).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bernoulli_log_prob_and_gradient_equal_torch_bernoulli(dtype: torch.dtype) -> None:
    """vae_lab's Bernoulli computes log p(x|z) with its own kernel (vectorized softplus, gradient
    written out); values and gradients equal torch.distributions.Bernoulli's, extremes included,
    with logits broadcast over L samples of z against one batch of images."""
    generator = torch.Generator().manual_seed(0)
    logits = 4.0 * torch.randn(SAMPLES, BATCH, 1, 28, 28, generator=generator, dtype=dtype)
    logits[0, 0, 0, 0, :8] = torch.tensor([-1e4, -88.0, -30.0, -1e-3, 0.0, 1e-3, 30.0, 1e4], dtype=dtype)
    x = (torch.rand(BATCH, 1, 28, 28, generator=generator) < 0.3).to(dtype)
    mine, reference = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    log_prob = BernoulliLikelihood(channels=1)(mine).log_prob(x)
    expected = Independent(Bernoulli(logits=reference), 3).log_prob(x)
    assert log_prob.dtype == dtype and log_prob.shape == (SAMPLES, BATCH)
    # float32: sums of 784 terms of ~1 nat each agree to their rounding (a few parts in 1e7).
    torch.testing.assert_close(log_prob, expected, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0)
    # Each pixel's term is as close to the exact value as torch's: 1e-6 nats in float32 (relative above 1 nat).
    from vae_lab.model.likelihoods.bernoulli import LogitBernoulli

    exact = Bernoulli(logits=logits.double()).log_prob(x.double())
    for pixel_terms in (LogitBernoulli(logits=logits).log_prob(x), Bernoulli(logits=logits).log_prob(x)):
        error = (pixel_terms.double() - exact).abs() / (1 + exact.abs())
        assert error.max() <= (1e-6 if dtype == torch.float32 else 2e-15)
    weights = torch.randn(SAMPLES, BATCH, generator=generator, dtype=dtype)
    (log_prob * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(mine.grad, reference.grad)
    # A gradient with respect to the data (never needed in training) is torch's own.
    data = x.clone().requires_grad_()
    BernoulliLikelihood(channels=1)(logits).log_prob(data).sum().backward()
    torch.testing.assert_close(data.grad, logits.sum(0))


def test_gaussian_fixed_sigma(mnist_test_images) -> None:
    y = mnist_test_images["continuous"]
    mean = torch.sigmoid(decoder_output(1))
    likelihood = GaussianLikelihood(channels=1, variance="fixed", fixed_sigma=0.05)
    assert likelihood.parameters_per_channel == 1 and not list(likelihood.parameters())
    torch.testing.assert_close(likelihood(mean).log_prob(y), gaussian_log_density(y, mean, torch.tensor(0.05)))


def test_gaussian_learned_sigma_per_channel() -> None:
    channels = 3
    likelihood = GaussianLikelihood(channels=channels, variance="per_channel", min_sigma=1e-3)
    assert likelihood.parameters_per_channel == 1
    # The learned scale starts at 0.1 and is min_sigma + softplus(raw) per channel.
    torch.testing.assert_close(likelihood.sigma(torch.zeros(())).flatten(), torch.full((channels,), 0.1))
    with torch.no_grad():
        likelihood.raw_sigma.copy_(torch.tensor([-3.0, 0.0, 1.5]).view(channels, 1, 1))
    expected_sigma = 1e-3 + torch.log1p(torch.exp(torch.tensor([-3.0, 0.0, 1.5]))).view(channels, 1, 1)
    generator = torch.Generator().manual_seed(1)
    mean = torch.rand(SAMPLES, BATCH, channels, 28, 28, generator=generator)
    y = torch.rand(BATCH, channels, 28, 28, generator=generator)
    log_prob = likelihood(mean).log_prob(y)
    assert log_prob.shape == (SAMPLES, BATCH)
    torch.testing.assert_close(log_prob, gaussian_log_density(y, mean, expected_sigma))
    # The scale is learned: log p has a gradient with respect to it.
    log_prob.sum().backward()
    assert likelihood.raw_sigma.grad is not None and likelihood.raw_sigma.grad.abs().min() > 0


def test_gaussian_learned_sigma_per_pixel(mnist_test_images) -> None:
    y = mnist_test_images["continuous"]
    likelihood = GaussianLikelihood(channels=1, variance="per_pixel", min_sigma=1e-3)
    assert likelihood.parameters_per_channel == 2
    output = decoder_output(2)  # channel 0: mean, channel 1: raw sigma of each pixel
    expected_sigma = 1e-3 + F.softplus(output[:, :, 1:])
    torch.testing.assert_close(
        likelihood(output).log_prob(y), gaussian_log_density(y, output[:, :, :1], expected_sigma)
    )


def test_gaussian_sigma_floor_keeps_log_prob_finite(mnist_test_images) -> None:
    y = mnist_test_images["continuous"]
    min_sigma = 1e-2
    likelihood = GaussianLikelihood(channels=1, variance="per_pixel", min_sigma=min_sigma)
    mean = y.expand(SAMPLES, *y.shape)  # a perfect mean: only the floor keeps log p from +inf
    collapsed = torch.cat([mean, torch.full_like(mean, -1e4)], dim=2)
    torch.testing.assert_close(likelihood.sigma(collapsed), torch.full_like(mean, min_sigma))
    log_prob = likelihood(collapsed).log_prob(y)
    assert torch.isfinite(log_prob).all()
    expected = 784 * (-0.5 * math.log(2 * math.pi) - math.log(min_sigma))
    torch.testing.assert_close(log_prob, torch.full_like(log_prob, expected))
    # The floor applies to the per-channel scale too.
    per_channel = GaussianLikelihood(channels=1, variance="per_channel", min_sigma=min_sigma)
    with torch.no_grad():
        per_channel.raw_sigma.fill_(-1e4)
    assert per_channel.sigma(mean).item() == pytest.approx(min_sigma)
    assert torch.isfinite(per_channel(mean).log_prob(y)).all()
