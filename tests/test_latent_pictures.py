"""The KL per latent dimension that orders the latent traversals, for priors with and without a
closed form (the fallback must agree with the exact value where both exist)."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module
from torch.distributions import Normal

from vae_lab.evaluation.latent_pictures import kl_per_latent_dimension, prior_marginals
from vae_lab.model.build import build_datamodule, build_model
from vae_lab.model.priors.base import Prior


class StandardNormalWithoutClosedForm(Prior):
    """N(0, I), but presented as a prior without an analytic KL (as a mixture or a flow is)."""

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return Normal(0.0, 1.0).log_prob(z).sum(-1)

    def sample(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.latent_dim)


@pytest.fixture()
def model():
    with initialize_config_module(config_module="vae_lab.conf", version_base="1.3"):
        config = compose(config_name="config", overrides=["logger=none", "model.latent_dim=6"])
    torch.manual_seed(0)
    vae = build_model(config, build_datamodule(config)).eval()
    with torch.no_grad():  # spread the posterior means and scales so that the dimensions differ
        for parameter in vae.encoder.parameters():
            parameter.mul_(3.0)
    return vae


def test_kl_per_dimension_is_exact_for_the_standard_prior(model) -> None:
    images = torch.bernoulli(torch.full((64, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(1))
    kl, how = kl_per_latent_dimension(model, images)
    with torch.no_grad():
        posterior = model.posterior(images)
    expected = torch.distributions.kl_divergence(posterior.base_dist, Normal(0.0, 1.0)).mean(0)
    assert how.startswith("analytic") and torch.allclose(kl, expected, rtol=1e-5)
    assert float(kl.sum()) == pytest.approx(
        float(torch.distributions.kl_divergence(posterior, model.prior.distribution()).mean()), rel=1e-5
    )


def test_kl_per_dimension_without_a_closed_form_matches_the_exact_value(model) -> None:
    images = torch.bernoulli(torch.full((64, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(1))
    exact, _ = kl_per_latent_dimension(model, images)
    model.prior = StandardNormalWithoutClosedForm(latent_dim=6)
    torch.manual_seed(2)
    mean, std, how = prior_marginals(model.prior)
    assert "10000 prior samples" in how and mean.abs().max() < 0.05 and (std - 1).abs().max() < 0.03
    approximate, how = kl_per_latent_dimension(model, images)
    assert "moments of p(z_j)" in how
    assert torch.allclose(approximate, exact, rtol=0.05, atol=0.02)
    assert torch.equal(torch.argsort(approximate, descending=True)[:2], torch.argsort(exact, descending=True)[:2])
