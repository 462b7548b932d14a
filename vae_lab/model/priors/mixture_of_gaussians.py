"""A learnable mixture of K diagonal Gaussians as the prior: the mixture-of-Gaussians prior that
Tomczak & Welling (2018, section 2.2) start from and compare the VampPrior against."""

from __future__ import annotations

from typing import Annotated, Any

import torch
from torch import nn
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from vae_lab.model.priors.base import Prior, diagonal_gaussian_mixture_log_prob
from vae_lab.ranges import at_least, checked


class MixtureOfGaussiansPrior(Prior):
    """p(z) = sum_k pi_k N(z; mu_k, diag sigma_k^2), with pi = softmax(logits), mu_k and
    log sigma_k learned with the rest of the model.

    The means start at ``init_spread`` * N(0, I) draws (so the components are told apart from the
    first step), the scales at 1 and the weights uniform. There is no closed-form KL between a
    Gaussian and a mixture, so the KL is estimated by Monte Carlo, and the prior does not factorize
    over latent dimensions.
    """

    @checked("prior")
    def __init__(
        self,
        latent_dim: int,
        n_components: Annotated[int, at_least(1, "mixture components")] = 10,
        init_spread: float = 0.1,
        learn_weights: bool = True,
        **context: Any,
    ) -> None:
        super().__init__(latent_dim)
        self.n_components = n_components
        self.means = nn.Parameter(init_spread * torch.randn(n_components, latent_dim))
        self.log_scales = nn.Parameter(torch.zeros(n_components, latent_dim))
        logits = torch.zeros(n_components)
        if learn_weights:
            self.logits = nn.Parameter(logits)
        else:
            self.register_buffer("logits", logits)

    def mixture(self) -> MixtureSameFamily:
        """p(z) as a ``torch.distributions`` mixture with event shape (latent_dim,)."""
        components = Independent(Normal(self.means, self.log_scales.exp(), validate_args=False), 1)
        return MixtureSameFamily(Categorical(logits=self.logits, validate_args=False), components, validate_args=False)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        log_weights = torch.log_softmax(self.logits, dim=-1)
        return diagonal_gaussian_mixture_log_prob(z, self.means, self.log_scales.exp(), log_weights)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Pick a component k ~ Categorical(pi), then z ~ N(mu_k, diag sigma_k^2)."""
        return self.mixture().sample((n,))
