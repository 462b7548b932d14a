"""The likelihood families: normalisation over their support, exact constants, pixel sums, supports,
served data forms, bits/dim, impossible pairs, and one real epoch on MNIST and CIFAR-10 each."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY, quiet_trainer, run_cli
from hydra import compose, initialize_config_module

from vae_lab.data.forms import DataForm
from vae_lab.errors import ConfigError
from vae_lab.model.build import build_datamodule, build_model
from vae_lab.model.likelihoods import (
    BernoulliLikelihood,
    CategoricalLikelihood,
    ContinuousBernoulliLikelihood,
    DiscretizedLogisticLikelihood,
    GaussianLikelihood,
    LaplaceLikelihood,
)
from vae_lab.model.likelihoods.continuous_bernoulli import StableContinuousBernoulli
from vae_lab.model.likelihoods.discretized_logistic import DiscretizedLogisticMixture

#: The form each new likelihood must be served (it is a distribution over that form).
SERVED_FORM = {
    "continuous_bernoulli": DataForm.CONTINUOUS,
    "laplace": DataForm.CONTINUOUS,
    "discretized_logistic": DataForm.DISCRETE,
    "categorical": DataForm.DISCRETE,
}
NEW_LIKELIHOODS = tuple(SERVED_FORM)


def simpson_weights(grid: torch.Tensor) -> torch.Tensor:
    """Simpson's rule on an odd number of evenly spaced points: int f = sum(weights * f) (float64)."""
    weights = torch.ones(grid.shape[-1], dtype=torch.float64)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    return weights * (grid[1] - grid[0]).double() / 3.0


def simpson(log_density: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """int exp(log_density) over the last axis."""
    return (log_density.double().exp() * simpson_weights(grid)).sum(-1)


# ---------------------------------------------------------------------------------------- continuous Bernoulli
UNIT_GRID = torch.linspace(0.0, 1.0, 200_001, dtype=torch.float64)


def quadrature_log_normalizer(lam: float) -> float:
    """-log int_0^1 lambda^x (1 - lambda)^(1 - x) dx by Simpson quadrature in float64 (log-space)."""
    log_unnormalised = UNIT_GRID * math.log(lam) + (1 - UNIT_GRID) * math.log1p(-lam)
    peak = log_unnormalised.max()
    return -(peak + torch.log(simpson(log_unnormalised - peak, UNIT_GRID))).item()


LAMBDAS = [1e-6, 1e-3, 0.05, 0.3, 0.49, 0.499, 0.4999, 0.5, 0.5001, 0.501, 0.51, 0.7, 0.95, 0.999, 1 - 1e-6]


@pytest.mark.parametrize("lam", LAMBDAS)
def test_continuous_bernoulli_log_normalizer_matches_quadrature(lam: float) -> None:
    """log C(lambda) of Loaiza-Ganem & Cunningham (2019, eq. 7) against numerical integration, in
    float32 as training computes it, across (0, 1) and at 0.5 +- 1e-4..1e-2."""
    logit = math.log(lam) - math.log1p(-lam)
    distribution = StableContinuousBernoulli(logits=torch.tensor([logit], dtype=torch.float32))
    computed = distribution._cont_bern_log_norm().item()
    assert computed == pytest.approx(quadrature_log_normalizer(lam), abs=5e-7)


@pytest.mark.parametrize("logit", [-700.0, -50.0, -16.5, 16.5, 50.0, 700.0])
def test_continuous_bernoulli_log_normalizer_at_extreme_logits(logit: float) -> None:
    """For |eta| >> 1, C = eta / tanh(eta / 2) -> |eta|: log C = log|eta| (to e^-|eta|). torch's own
    ContinuousBernoulli clamps lambda and stays at log 16 here."""
    distribution = StableContinuousBernoulli(logits=torch.tensor([logit]))
    assert distribution._cont_bern_log_norm().item() == pytest.approx(math.log(abs(logit)), abs=1e-6)


CONTINUOUS_BERNOULLI_LOGITS = [-700.0, -50.0, -5.0, -0.04, -4e-4, 0.0, 4e-4, 0.04, 0.5, 5.0, 50.0, 700.0]


def test_continuous_bernoulli_density_integrates_to_one_and_moments_match() -> None:
    logits = torch.tensor(CONTINUOUS_BERNOULLI_LOGITS)
    likelihood = ContinuousBernoulliLikelihood(channels=1)
    distribution = likelihood.pixel_distribution(logits.view(-1, 1, 1, 1))
    grid = UNIT_GRID.float().view(-1, 1, 1, 1, 1)
    log_density = distribution.log_prob(grid).view(grid.shape[0], -1).T  # [logits, grid]
    ones = torch.ones(len(logits), dtype=torch.float64)
    torch.testing.assert_close(simpson(log_density, UNIT_GRID), ones, atol=2e-6, rtol=0)
    density_weights = log_density.double().exp() * simpson_weights(UNIT_GRID)
    integral_mean = (density_weights * UNIT_GRID).sum(-1)
    torch.testing.assert_close(distribution.mean.flatten().double(), integral_mean, atol=2e-6, rtol=0)
    integral_variance = (density_weights * (UNIT_GRID - integral_mean.unsqueeze(-1)) ** 2).sum(-1)
    torch.testing.assert_close(distribution.variance.flatten().double(), integral_variance, atol=1e-6, rtol=1e-4)
    integral_entropy = -(density_weights * log_density.double()).sum(-1)
    torch.testing.assert_close(distribution.entropy().flatten().double(), integral_entropy, atol=2e-5, rtol=0)
    # The mean image of a grid is E[x] on [0, 1] (continuous data is served on [0, 1] already).
    torch.testing.assert_close(likelihood.mean_image(distribution).flatten(), distribution.mean.flatten())


def test_continuous_bernoulli_samples_follow_the_cdf() -> None:
    distribution = StableContinuousBernoulli(logits=torch.tensor(CONTINUOUS_BERNOULLI_LOGITS))
    samples = distribution.sample((20_000,))
    assert samples.min() >= 0.0 and samples.max() <= 1.0
    # Sample means within 5 standard errors of the exact mean; the CDF inverts the inverse CDF.
    standard_error = (distribution.variance / samples.shape[0]).sqrt()
    assert ((samples.mean(0) - distribution.mean).abs() < 5 * standard_error + 1e-6).all()
    u = torch.tensor([0.01, 0.3, 0.5, 0.9, 0.999]).view(-1, 1)
    round_trip = distribution.cdf(distribution.icdf(u))
    torch.testing.assert_close(round_trip, u.expand(-1, len(CONTINUOUS_BERNOULLI_LOGITS)), atol=2e-5, rtol=0)


# ---------------------------------------------------------------------------------------- Gaussian and Laplace
@pytest.mark.parametrize("likelihood_class", [GaussianLikelihood, LaplaceLikelihood])
def test_location_scale_density_integrates_to_one(likelihood_class) -> None:
    likelihood = likelihood_class(1, "per_pixel", 0.1, 1e-3)
    loc = torch.tensor([-1.0, 0.0, 0.3, 1.0, 2.0])
    raw_scale = torch.tensor([-100.0, -4.0, -1.0, 0.0, 1.0])  # scales 1e-3 (the floor), ..., 1.3
    decoder_output = torch.stack([loc, raw_scale]).view(1, 2, 1, 5)  # [B, 2C, H, W]: loc map, scale map
    grid = torch.linspace(-20.0, 20.0, 800_001, dtype=torch.float64)
    log_density = likelihood.pixel_distribution(decoder_output.double()).log_prob(grid.view(-1, 1, 1, 1, 1))
    integrals = simpson(log_density.view(grid.shape[0], -1).T, grid)
    torch.testing.assert_close(integrals, torch.ones(5, dtype=torch.float64), atol=1e-4, rtol=0)


def test_laplace_scale_modes_and_floor() -> None:
    x = torch.rand(2, 3, 4, 4)
    fixed = LaplaceLikelihood(3, scale="fixed", fixed_scale=0.05)
    assert fixed.parameters_per_channel == 1
    expected = (-(x - 0.5).abs() / 0.05 - math.log(2 * 0.05)).sum((-3, -2, -1))
    torch.testing.assert_close(fixed(torch.full_like(x, 0.5)).log_prob(x), expected)
    per_channel = LaplaceLikelihood(3, scale="per_channel")
    torch.testing.assert_close(per_channel.pixel_scale(x).flatten(), torch.full((3,), 0.1))
    assert dict(per_channel.named_parameters()).keys() == {"raw_scale"}
    per_pixel = LaplaceLikelihood(1, scale="per_pixel", min_scale=1e-2)
    assert per_pixel.parameters_per_channel == 2
    collapsed = torch.cat([x[:, :1], torch.full_like(x[:, :1], -1e4)], dim=1)  # the scale map -> floor
    torch.testing.assert_close(per_pixel(collapsed).log_prob(x[:, :1]), torch.full((2,), 16 * -math.log(2e-2)))
    with pytest.raises(ConfigError, match="likelihood.scale='learned' is not a scale mode"):
        LaplaceLikelihood(1, scale="learned")
    with pytest.raises(ConfigError, match="likelihood.min_scale=0"):
        LaplaceLikelihood(1, min_scale=0)


# ---------------------------------------------------------------------------------------- discretized logistic
VALUES = torch.arange(256, dtype=torch.float64)


def all_bin_log_masses(distribution: DiscretizedLogisticMixture) -> torch.Tensor:
    """log P(x) for x = 0..255, ``[256, *batch]``."""
    return distribution.log_prob(VALUES.to(distribution.means.dtype).view(-1, *[1] * len(distribution.batch_shape)))


def reference_bin_masses(means: torch.Tensor, log_scales: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """P(x) written out in float64 from the logistic CDF, each bin as a difference of CDFs taken in
    the tail where it does not cancel (upper tail: S(lower) - S(upper), S = 1 - CDF)."""
    scale = log_scales.double().exp()
    x = VALUES.view(-1, *[1] * means.dim()) / 127.5 - 1.0
    upper = (x + 1 / 255 - means.double()) / scale
    lower = (x - 1 / 255 - means.double()) / scale
    cdf_difference = torch.sigmoid(upper) - torch.sigmoid(lower)
    survival_difference = torch.sigmoid(-lower) - torch.sigmoid(-upper)
    mass = torch.where(lower > 0, survival_difference, cdf_difference)
    mass[0] = torch.sigmoid(upper[0])
    mass[-1] = torch.sigmoid(-lower[-1])
    return (mass * torch.softmax(logits.double(), -1)).sum(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_components", [1, 3])
def test_discretized_logistic_bin_masses_sum_to_one(n_components: int, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(n_components)
    means = torch.tensor([-1.5, -1.0, -0.9, 0.0, 0.37, 0.999, 1.0, 1.5])  # incl. at and beyond the edges
    log_scales = torch.tensor([-7.0, -5.0, -3.0, -1.0, 0.0, 2.0])
    shape = (len(means), len(log_scales), n_components)
    means = means.view(-1, 1, 1).expand(shape) + 0.01 * torch.randn(shape, generator=generator)
    log_scales = log_scales.view(1, -1, 1).expand(shape) + 0.1 * torch.rand(shape, generator=generator)
    logits = 2 * torch.randn(shape, generator=generator)
    distribution = DiscretizedLogisticMixture(logits.to(dtype), means.to(dtype), log_scales.to(dtype))
    log_masses = all_bin_log_masses(distribution)
    assert torch.isfinite(log_masses).all()
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    ones = torch.ones(shape[:-1], dtype=torch.float64)
    torch.testing.assert_close(log_masses.double().exp().sum(0), ones, atol=tolerance, rtol=0)
    reference = reference_bin_masses(means, log_scales, logits)
    torch.testing.assert_close(log_masses.double().exp(), reference, atol=10 * tolerance, rtol=0)
    # The mean is the expected pixel value over the 256 bins.
    expected_value = (log_masses.double().exp() * VALUES.view(-1, 1, 1)).sum(0)
    relative = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(distribution.mean.double(), expected_value, atol=tolerance, rtol=relative)


def test_discretized_logistic_tail_masses_are_exact_where_pixelcnn_falls_back() -> None:
    """Bins far in a tail: sigma(upper) - sigma(lower) is 0 in float32 (PixelCNN++ then uses the
    centre density times the bin width); the log-space identity matches the float64 reference."""
    means, log_scales, logits = torch.tensor([[-1.0]]), torch.tensor([[-4.0]]), torch.zeros(1, 1)
    distribution = DiscretizedLogisticMixture(logits, means, log_scales)
    values = torch.tensor([[60.0], [128.0], [200.0], [254.0]])
    upper = (values / 127.5 - 1 + 1 / 255 - means) / log_scales.exp()
    lower = (values / 127.5 - 1 - 1 / 255 - means) / log_scales.exp()
    assert (torch.sigmoid(upper) - torch.sigmoid(lower) == 0).all()  # float32 cancels completely
    reference = reference_bin_masses(means[0], log_scales[0], logits[0]).log()[values.long().flatten()]
    assert reference.max() < -20  # masses ~1e-9 and far below
    torch.testing.assert_close(distribution.log_prob(values).double().flatten(), reference, rtol=1e-6, atol=0)


def test_discretized_logistic_edge_bins_are_open() -> None:
    mean, log_scale = torch.tensor([[0.2]]), torch.tensor([[-2.0]])
    distribution = DiscretizedLogisticMixture(torch.zeros(1, 1), mean, log_scale)
    scale = math.exp(-2.0)
    mass_0 = torch.sigmoid((-1 + 1 / 255 - mean) / scale)  # everything below bin 0's upper edge
    mass_255 = 1 - torch.sigmoid((1 - 1 / 255 - mean) / scale)  # everything above bin 255's lower edge
    edge_masses = distribution.log_prob(torch.tensor([[0.0], [255.0]])).exp()
    torch.testing.assert_close(edge_masses, torch.cat([mass_0, mass_255]))


#: Means far outside [-1, 1] (a decoder that diverged), log scales over the whole range and beyond.
FAR_MEANS = (0.0, 1e3, -1e3, 1e6, -1e6)
LOG_SCALES = tuple(float(v) for v in range(-7, 8)) + (100.0,)
PIXELS = (0, 1, 2, 60, 127, 128, 200, 253, 254, 255)


def exact_log_mass(pixel: int, mean: float, log_scale: float) -> float:
    """log P(pixel) with 60-digit arithmetic (mpmath) from the logistic CDF, the parameters taken as
    the exact values of their floats; an interior bin as a difference of CDFs, or of survival functions
    S(t) = 1 - CDF(t) = 1 / (1 + e^t) above the mean (60 digits would not hold 1 - CDF(1e9))."""
    import mpmath

    with mpmath.workdps(60):
        inverse_scale, half_bin = mpmath.exp(-mpmath.mpf(log_scale)), mpmath.mpf(1) / 255
        centred = mpmath.mpf(2 * pixel) / 255 - 1 - mpmath.mpf(mean)
        upper, lower = (centred + half_bin) * inverse_scale, (centred - half_bin) * inverse_scale
        cdf, survival = (lambda t: 1 / (1 + mpmath.exp(-t))), (lambda t: 1 / (1 + mpmath.exp(t)))
        if pixel == 0:
            mass = cdf(upper)
        elif pixel == 255:
            mass = survival(lower)
        else:
            mass = survival(lower) - survival(upper) if lower > 0 else cdf(upper) - cdf(lower)
        return float(mpmath.log(mass))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_discretized_logistic_is_exact_and_differentiable_far_outside_the_data_range(dtype: torch.dtype) -> None:
    """Issue 12: the bin width came from upper - lower, two edges that round to the same float once
    |mu| is large: log(0) = -inf and NaN gradients at mu = 1e6, 0.004 nats off at mu = 1e3 in float32.
    Now every log mass matches the 60-digit reference to the rounding of the dtype itself: the
    spacing of log P and of the edges (x' - mu) / s, whose rounding no formula can undo, plus 1e-6
    nats (float32) or 1e-12 (float64); in float64 that is also within 1e-6 nats everywhere."""
    epsilon = torch.finfo(dtype).eps
    means, log_scales = torch.meshgrid(
        torch.tensor(FAR_MEANS, dtype=dtype), torch.tensor(LOG_SCALES, dtype=dtype), indexing="ij"
    )
    means, log_scales = means.reshape(-1, 1).requires_grad_(), log_scales.reshape(-1, 1).requires_grad_()
    distribution = DiscretizedLogisticMixture(torch.zeros_like(means), means, log_scales)
    log_masses = distribution.log_prob(torch.tensor(PIXELS, dtype=dtype).view(-1, 1))  # [pixels, settings]
    assert torch.isfinite(log_masses).all()
    reference = torch.tensor(
        [[exact_log_mass(x, m, s) for m in FAR_MEANS for s in LOG_SCALES] for x in PIXELS], dtype=torch.float64
    )
    edge = (1.0 + means.detach().double().abs().T) * (-log_scales.detach().double().T).exp()  # |a|, |b| bound
    floor = 1e-6 if dtype == torch.float32 else 1e-12
    tolerance = floor + 2 * epsilon * reference.abs() + 4 * epsilon * edge
    error = (log_masses.detach().double() - reference).abs()
    assert (error <= tolerance).all(), f"worst excess {(error - tolerance).max():.3g} nats"
    if dtype == torch.float64:
        assert error.max() < 1e-6
    mean_gradient, log_scale_gradient = torch.autograd.grad(log_masses.sum(), [means, log_scales])
    assert torch.isfinite(mean_gradient).all() and torch.isfinite(log_scale_gradient).all()
    # At mu = +-1e6 (and s <= e^7) every bin but the open edge bin holding all the mass has
    # log P = (x' -+ 1/255 - mu) / s + c, so d log P / d mu = -+1/s, and the edge bin's gradient is
    # +-e^(-1e6 / s) / s = 0: summed over the pixels, -+(len(PIXELS) - 1) / s.
    mean_gradient = mean_gradient.double().view(len(FAR_MEANS), len(LOG_SCALES))[:, : LOG_SCALES.index(7.0) + 1]
    inverse_scales = (-torch.tensor(LOG_SCALES[: LOG_SCALES.index(7.0) + 1], dtype=torch.float64)).exp()
    for mean, sign in ((1e6, -1.0), (-1e6, 1.0)):
        expected = sign * (len(PIXELS) - 1) * inverse_scales
        torch.testing.assert_close(mean_gradient[FAR_MEANS.index(mean)], expected, rtol=1e-6, atol=0)


def test_discretized_logistic_likelihood_layout_and_samples() -> None:
    n_components, channels = 2, 3
    likelihood = DiscretizedLogisticLikelihood(channels, n_components=n_components)
    assert likelihood.parameters_per_channel == 6 and likelihood.data_form is DataForm.DISCRETE
    decoder_output = torch.randn(4, 6 * channels, 2, 2, generator=torch.Generator().manual_seed(0))
    decoder_output[:, 4 * channels :] -= 20.0  # log scales below the floor get clamped
    distribution = likelihood.pixel_distribution(decoder_output)
    assert distribution.batch_shape == (4, channels, 2, 2)
    # Map j * C + c is parameter j of channel c: logits 0..K-1, means K..2K-1, log scales 2K..3K-1.
    torch.testing.assert_close(distribution.means[:, 1, :, :, 0], decoder_output[:, 2 * channels + 1])
    torch.testing.assert_close(distribution.mixture_logits[:, 2, :, :, 1], decoder_output[:, channels + 2])
    assert (distribution.log_scales == -7.0).all()
    samples = distribution.sample((500,))
    assert samples.shape == (500, 4, channels, 2, 2) and samples.dtype == torch.float32
    assert samples.min() >= 0 and samples.max() <= 255 and (samples == samples.round()).all()
    # Sample means within 5 standard errors of the exact mean.
    log_masses = all_bin_log_masses(distribution)
    variance = (log_masses.exp() * (VALUES.float().view(-1, 1, 1, 1, 1) - distribution.mean) ** 2).sum(0)
    assert ((samples.mean(0) - distribution.mean).abs() <= 5 * (variance / 500).sqrt() + 0.5).all()
    # Grids show E[x] / 255.
    torch.testing.assert_close(likelihood.mean_image(distribution), distribution.mean / 255)


# ---------------------------------------------------------------------------------------- categorical
def test_categorical_layout_normalisation_mean_and_samples() -> None:
    channels = 3
    likelihood = CategoricalLikelihood(channels)
    decoder_output = 3 * torch.randn(2, 256 * channels, 2, 2, generator=torch.Generator().manual_seed(0))
    distribution = likelihood.pixel_distribution(decoder_output)
    assert distribution.batch_shape == (2, channels, 2, 2)
    # The classes are split_parameters' maps: map v * C + c is value v of channel c.
    expected_logits = torch.stack(likelihood.split_parameters(decoder_output), dim=-1).log_softmax(-1)
    log_masses = distribution.log_prob(VALUES.float().view(-1, 1, 1, 1, 1))  # [256, 2, C, 2, 2]
    torch.testing.assert_close(log_masses, expected_logits.movedim(-1, 0))
    ones = torch.ones(2, channels, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(log_masses.double().exp().sum(0), ones, atol=2e-6, rtol=0)
    torch.testing.assert_close(distribution.mean, (log_masses.exp() * VALUES.float().view(-1, 1, 1, 1, 1)).sum(0))
    samples = distribution.sample((3,))
    assert samples.dtype == torch.float32 and samples.min() >= 0 and samples.max() <= 255
    assert (samples == samples.round()).all()


# ---------------------------------------------------------------------------------------- all likelihoods
def served_example(data_form: DataForm, shape: tuple[int, ...]) -> torch.Tensor:
    """Pixels in the form a data module serves for ``data_form``."""
    generator = torch.Generator().manual_seed(1)
    if data_form is DataForm.BINARY:
        return torch.randint(0, 2, shape, generator=generator).float()
    if data_form is DataForm.CONTINUOUS:
        return (torch.randint(0, 256, shape, generator=generator) + torch.rand(shape, generator=generator)) / 256
    return torch.randint(0, 256, shape, generator=generator).float()


ALL_LIKELIHOODS = [
    BernoulliLikelihood(3),
    GaussianLikelihood(3, variance="per_pixel"),
    ContinuousBernoulliLikelihood(3),
    LaplaceLikelihood(3, scale="per_pixel"),
    DiscretizedLogisticLikelihood(3, n_components=2),
    CategoricalLikelihood(3),
]


@pytest.mark.parametrize("likelihood", ALL_LIKELIHOODS, ids=lambda likelihood: type(likelihood).__name__)
def test_log_prob_is_the_sum_over_pixels(likelihood) -> None:
    samples, batch, image = 2, 4, (3, 5, 6)
    decoder_output = torch.randn(samples, batch, likelihood.parameters_per_channel * 3, 5, 6)
    x = served_example(likelihood.data_form, (batch, *image))
    log_prob = likelihood(decoder_output).log_prob(x)
    assert log_prob.shape == (samples, batch)
    per_pixel = likelihood.pixel_distribution(decoder_output).log_prob(x)
    assert per_pixel.shape == (samples, batch, *image)
    torch.testing.assert_close(log_prob, per_pixel.sum((-3, -2, -1)))
    assert torch.isfinite(log_prob).all()
    # Samples lie in the served form's support and score finitely.
    sample = likelihood(decoder_output).sample()
    assert sample.shape == (samples, batch, *image)
    if likelihood.data_form is DataForm.DISCRETE:
        assert ((sample >= 0) & (sample <= 255) & (sample == sample.round())).all()
    elif likelihood.data_form is DataForm.BINARY:
        assert ((sample == 0) | (sample == 1)).all()
    assert torch.isfinite(likelihood(decoder_output).log_prob(sample)).all()
    image_mean = likelihood.mean_image(likelihood(decoder_output))
    assert image_mean.shape == (samples, batch, *image) and image_mean.min() >= 0 and image_mean.max() <= 1


def test_bits_per_dim_of_uniform_models_is_eight() -> None:
    """A uniform density on [0, 1] (CB with logit 0) and a uniform mass on 256 values (categorical
    with equal logits) are both 8 bits/dim: the +8 applies to the density only."""
    shape = (2, 3, 4, 4)
    n_dims = 48
    density = ContinuousBernoulliLikelihood(3)
    log_p = density(torch.zeros(shape)).log_prob(served_example(DataForm.CONTINUOUS, shape))
    torch.testing.assert_close(log_p, torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(density.data_form.bits_per_dim(-log_p, n_dims), torch.full((2,), 8.0))
    mass = CategoricalLikelihood(3)
    log_p = mass(torch.zeros(2, 256 * 3, 4, 4)).log_prob(served_example(DataForm.DISCRETE, shape))
    torch.testing.assert_close(log_p, torch.full((2,), -n_dims * math.log(256)))
    torch.testing.assert_close(mass.data_form.bits_per_dim(-log_p, n_dims), torch.full((2,), 8.0))
    # A discretized logistic is a mass too: one centred on each pixel value with s = e^-7 gives every
    # interior bin sigma(h) - sigma(-h) = tanh(h / 2), h = (1/255) / s, and no +8.
    sharp = DiscretizedLogisticLikelihood(3)
    x = torch.randint(1, 255, shape, generator=torch.Generator().manual_seed(2)).float()
    decoder_output = torch.cat([torch.zeros(shape), x / 127.5 - 1, torch.full(shape, -7.0)], dim=1)
    log_p = sharp(decoder_output).log_prob(x)
    per_pixel = math.log(math.tanh(math.exp(7.0) / 255 / 2))
    torch.testing.assert_close(log_p, torch.full((2,), n_dims * per_pixel), rtol=1e-4, atol=1e-4)
    expected_bits = torch.full((2,), -per_pixel / math.log(2))
    torch.testing.assert_close(sharp.data_form.bits_per_dim(-log_p, n_dims), expected_bits, rtol=1e-4, atol=1e-6)
    assert {type(likelihood).__name__: likelihood.data_form.is_density for likelihood in ALL_LIKELIHOODS} == {
        "BernoulliLikelihood": False,
        "GaussianLikelihood": True,
        "ContinuousBernoulliLikelihood": True,
        "LaplaceLikelihood": True,
        "DiscretizedLogisticLikelihood": False,
        "CategoricalLikelihood": False,
    }


# ---------------------------------------------------------------------------------------- configs and data
def compose_config(*overrides: str):
    with initialize_config_module(config_module="vae_lab.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize(
    ("overrides", "phrases"),
    [
        (
            ["likelihood=categorical", "data.binarization=dynamic"],
            [
                "data.binarization=dynamic serves binary pixels",
                "8-bit pixel values",
                "data.binarization=none",
                "likelihood=bernoulli",
            ],
        ),
        (
            ["likelihood=continuous_bernoulli", "data.binarization=static"],
            ["data.binarization=static", "dequantized to [0, 1]", "data.binarization=none"],
        ),
        (
            ["likelihood=bernoulli", "data=cifar"],
            ["binary pixels", "CIFAR-10 is colour data", "likelihood=discretized_logistic", "likelihood=gaussian"],
        ),
        (
            ["likelihood=bernoulli", "data.binarization=none"],
            ["data.binarization=none serves grey values", "data.binarization=dynamic or static"],
        ),
    ],
)
def test_impossible_pairs_are_refused_naming_the_fix(overrides: list[str], phrases: list[str], tmp_path: Path) -> None:
    cfg = compose_config(f"data.root={tmp_path}", *overrides)  # no data there: the pair is refused first
    with pytest.raises(ConfigError) as refused:
        build_datamodule(cfg)
    for phrase in phrases:
        assert phrase in str(refused.value)


def test_impossible_pair_fails_at_start_up_on_the_command_line(tmp_path: Path) -> None:
    overrides = ("likelihood=bernoulli", "data=cifar", f"hydra.run.dir={tmp_path}/run")
    result = run_cli("vae_lab.train", *overrides, cwd=tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "CIFAR-10 is colour data" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def check_served_form(datamodule, data_form: DataForm) -> None:
    batch = next(iter(datamodule.train_dataloader()))
    test = datamodule.splits["test"]
    for pixels in (batch, test):
        assert pixels.dtype == torch.float32
        if data_form is DataForm.CONTINUOUS:  # y = (x + u) / 256 in [0, 1), not on the 1/256 grid
            assert pixels.min() >= 0 and pixels.max() < 1 and (pixels * 256 != (pixels * 256).round()).any()
        else:  # 8-bit values as floats
            assert pixels.min() >= 0 and pixels.max() <= 255 and pixels.max() > 1 and (pixels == pixels.round()).all()


def fit_one_epoch(cfg, data_form: DataForm) -> dict[str, float]:
    L.seed_everything(0, verbose=False)
    datamodule = build_datamodule(cfg)
    assert datamodule.data_form is data_form
    datamodule.setup()
    check_served_form(datamodule, data_form)
    model = build_model(cfg, datamodule)
    trainer = quiet_trainer(max_epochs=1, limit_test_batches=5)
    trainer.fit(model, datamodule=datamodule)
    metrics = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    assert trainer.global_step > 0
    generated = model.generate(4)
    assert generated.shape == (4, *datamodule.image_shape) and generated.min() >= 0 and generated.max() <= 1
    return metrics


def tiny(*overrides: str) -> list[str]:
    """TINY without a tracker and with the evaluation batch cut to 100 (256-way outputs are large);
    ``overrides`` replace TINY's entries for the same keys."""
    keys = {override.split("=")[0] for override in overrides} | {"logger"}
    kept = [o for o in TINY if o.split("=")[0] not in keys and not o.startswith("data.eval_batch_size")]
    return [*kept, "data.eval_batch_size=100", *overrides]


def check_bits_per_dim(metrics: dict[str, float], data_form: DataForm, n_dims: int) -> None:
    """Finite metrics, and bits/dim = -elbo / (D ln 2) (+ 8 for a density) from the same run."""
    for key in ("test/elbo", "test/reconstruction", "test/kl", "test/bpd"):
        assert math.isfinite(metrics[key]), metrics
    offset = 8.0 if data_form.is_density else 0.0
    assert metrics["test/bpd"] == pytest.approx(-metrics["test/elbo"] / (n_dims * math.log(2)) + offset, rel=1e-4)
    # A loose sanity range (the line above pins the +8): a few steps in the model is still near its
    # initialisation, e.g. Laplace on CIFAR starts at ~12 bits/dim (scale 0.1 around a grey of 0).
    assert 1.0 < metrics["test/bpd"] < 16.0, metrics


#: 256 logits per pixel make the MLP decoder's output layer 200 x 200,704: keep that epoch to 3 steps.
CHEAPER = {"categorical": ("data.train_subset=150", "data.val_size=100")}


@pytest.mark.parametrize("name", NEW_LIKELIHOODS)
def test_one_epoch_on_real_mnist_grey(name: str, data_root: Path) -> None:
    cfg = compose_config(*tiny(f"likelihood={name}", f"data.root={data_root}", *CHEAPER.get(name, ())))
    assert cfg.data.binarization is None and cfg.model.encoder._target_.endswith("MLPEncoder")
    check_bits_per_dim(fit_one_epoch(cfg, SERVED_FORM[name]), SERVED_FORM[name], 784)


@pytest.mark.parametrize("name", NEW_LIKELIHOODS)
def test_one_epoch_on_real_cifar(name: str, cifar_root: Path) -> None:
    cfg = compose_config(
        *tiny(
            f"likelihood={name}",
            "data=cifar",
            f"data.root={cifar_root}",
            "data.verify=false",  # the tests' hand-made batches
            "data.train_subset=100",
            "data.val_size=50",
            "model=conv",
            "model.latent_dim=16",
        )
    )
    check_bits_per_dim(fit_one_epoch(cfg, SERVED_FORM[name]), SERVED_FORM[name], 3072)
