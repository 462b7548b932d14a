"""KL(q(z|x) || N(0, I)) as the VAE computes it, against the closed form and a Monte Carlo estimate."""

from __future__ import annotations

import functools

import pytest
import torch
from torch.distributions import Independent, Normal

from vae_lab.model.likelihoods import BernoulliLikelihood
from vae_lab.model.networks import MLPDecoder, MLPEncoder
from vae_lab.model.objectives import ELBO
from vae_lab.model.priors import StandardNormalPrior
from vae_lab.model.vae import VAE

LATENT_DIM, BATCH = 50, 8


def make_vae(kl: str) -> VAE:
    image_shape = (1, 28, 28)
    return VAE(
        encoder=MLPEncoder(image_shape, LATENT_DIM),
        decoder=MLPDecoder(image_shape, LATENT_DIM, out_channels=1),
        likelihood=BernoulliLikelihood(channels=1),
        prior=StandardNormalPrior(LATENT_DIM),
        objective=ELBO(kl=kl),
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
        image_shape=image_shape,
    )


@pytest.fixture
def posterior() -> Independent:
    """Diagonal Gaussians far from the prior: means up to +-3, standard deviations 0.05 to 2."""
    generator = torch.Generator().manual_seed(0)
    mean = 1.5 * torch.randn(BATCH, LATENT_DIM, generator=generator)
    log_sigma = torch.empty(BATCH, LATENT_DIM).uniform_(-3.0, 0.7, generator=generator)
    return Independent(Normal(mean, log_sigma.exp()), 1)


def closed_form_kl(posterior: Independent) -> torch.Tensor:
    """-1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2) (Kingma & Welling 2014, appendix B)."""
    mean, sigma = posterior.base_dist.loc, posterior.base_dist.scale
    return -0.5 * (1 + torch.log(sigma**2) - mean**2 - sigma**2)


def kl_of(model: VAE, posterior: Independent, n_samples: int):
    z = posterior.rsample((n_samples,))
    return model.kl_divergence(posterior, z, model.prior.log_prob(z), posterior.log_prob(z))


def test_analytic_kl_equals_the_closed_form(posterior: Independent) -> None:
    model = make_vae(kl="analytic")
    assert model.use_analytic_kl
    kl, kl_per_dim = kl_of(model, posterior, n_samples=1)
    expected = closed_form_kl(posterior)
    torch.testing.assert_close(kl_per_dim, expected)
    torch.testing.assert_close(kl, expected.sum(-1))
    assert kl.shape == (BATCH,) and (kl > 10).all()


def test_analytic_kl_equals_a_monte_carlo_estimate_within_its_standard_error(posterior: Independent) -> None:
    torch.manual_seed(1)
    analytic, _ = kl_of(make_vae(kl="analytic"), posterior, n_samples=1)
    n = 20_000
    z = posterior.sample((n,))
    samples = posterior.log_prob(z) - StandardNormalPrior(LATENT_DIM).log_prob(z)  # [n, B]
    estimate = samples.mean(0)
    standard_error = samples.std(0) / n**0.5
    assert (standard_error < 0.02 * analytic).all()  # the comparison below is tight
    assert ((estimate - analytic).abs() < 4 * standard_error).all(), (estimate, analytic, standard_error)
    # objective.kl=mc computes exactly this estimator inside the model.
    monte_carlo_model = make_vae(kl="mc")
    assert not monte_carlo_model.use_analytic_kl
    torch.manual_seed(2)
    mc, per_dim = kl_of(monte_carlo_model, posterior, n_samples=n)
    # The standard prior factorizes: the Monte Carlo KL splits per dimension and the parts add up.
    assert per_dim.shape == (mc.shape[0], LATENT_DIM)
    assert torch.allclose(per_dim.sum(-1), mc, rtol=1e-4, atol=1e-4)
    assert ((mc - analytic).abs() < 4 * standard_error).all()
