"""The standard normal prior N(0, I) (Kingma & Welling 2014, section 3)."""

from __future__ import annotations

from typing import Any

import torch
from torch.distributions import Distribution, Independent, Normal

from vae_lab.model.priors.base import Prior


class StandardNormalPrior(Prior):
    """p(z) = N(z; 0, I). Its KL against a diagonal Gaussian posterior is analytic
    (Kingma & Welling 2014, appendix B): -1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)."""

    def __init__(self, latent_dim: int, **context: Any) -> None:
        super().__init__(latent_dim)
        # Buffers, so that the prior follows the module to the training device.
        self.register_buffer("loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(latent_dim), persistent=False)

    def distribution(self) -> Distribution:
        return Independent(Normal(self.loc, self.scale, validate_args=False), 1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return self.distribution().log_prob(z)

    def log_prob_per_dim(self, z: torch.Tensor) -> torch.Tensor:
        return self.distribution().base_dist.log_prob(z)

    def sample(self, n: int) -> torch.Tensor:
        return self.distribution().sample((n,))

    @property
    def is_factorized(self) -> bool:
        return True
