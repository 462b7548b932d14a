"""The (beta-weighted) ELBO estimated with L reparameterized samples per image."""

from __future__ import annotations

import torch

from vae_lab.errors import ConfigError
from vae_lab.objectives.base import ELBOTerms, Objective


class ELBO(Objective):
    """loss = -mean_batch( (1/L) sum_l log p(x|z_l) - kl_weight * KL(q(z|x) || p(z)) ).

    With kl_weight = 1 this is the SGVB estimator of Kingma & Welling (2014, eq. 7); kl_weight = beta
    gives the beta-VAE objective (Higgins et al. 2017, eq. 4).
    """

    def __init__(self, n_samples: int = 1, kl_weight: float = 1.0, kl: str = "auto") -> None:
        super().__init__(n_samples=n_samples, kl=kl)
        if kl_weight < 0:
            raise ConfigError(f"objective.kl_weight={kl_weight} must be >= 0 (it is beta, the weight of the KL).")
        self.kl_weight = kl_weight

    def loss(self, terms: ELBOTerms, step: int, epoch: int) -> torch.Tensor:
        return -(terms.reconstruction - self.kl_weight * terms.kl).mean()

    def logged_values(self, step: int, epoch: int) -> dict[str, float]:
        return {"kl_weight": self.kl_weight}
