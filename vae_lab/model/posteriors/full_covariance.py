"""q(z|x) = N(mu(x), L(x) L(x)^T) with a lower-triangular Cholesky factor L(x) from the encoder."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence, register_kl

from vae_lab.model.posteriors.base import PosteriorFamily
from vae_lab.model.precision import at_least_float32


class FullCovariancePosterior(PosteriorFamily):
    """A Gaussian with a full covariance: L(x) has the encoder's sigma(x) > 0 on its diagonal (the
    bounded log-variance of vae_lab/model/networks/base.py keeps it positive and finite) and D(D-1)/2
    free entries below it from one linear layer on the features. That layer starts at zero, so the
    family starts as the diagonal one. The KL against a Gaussian prior is analytic; it does not split
    by latent dimension."""

    has_closed_form_kl = True

    def __init__(self, feature_size: int, latent_dim: int) -> None:
        super().__init__(feature_size, latent_dim)
        rows, columns = torch.tril_indices(latent_dim, latent_dim, offset=-1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("columns", columns, persistent=False)
        self.below_diagonal = nn.Linear(feature_size, rows.numel())
        nn.init.zeros_(self.below_diagonal.weight)
        nn.init.zeros_(self.below_diagonal.bias)

    def forward(self, h: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> MultivariateNormal:
        scale_tril = torch.diag_embed(scale)
        scale_tril[..., self.rows, self.columns] = at_least_float32(self.below_diagonal(h))
        return MultivariateNormal(loc, scale_tril=scale_tril, validate_args=False)


@register_kl(MultivariateNormal, Independent)
def _kl_full_covariance_diagonal(q: MultivariateNormal, p: Independent) -> torch.Tensor:
    """KL(N(mu, Sigma) || N(m, diag s^2)): torch's closed form for two multivariate normals, with the
    diagonal Gaussian (the standard prior) written as one. Other ``Independent`` priors have none."""
    if not isinstance(p.base_dist, Normal) or p.reinterpreted_batch_ndims != 1:
        raise NotImplementedError
    as_multivariate = MultivariateNormal(p.base_dist.loc, scale_tril=torch.diag_embed(p.base_dist.scale))
    return kl_divergence(q, as_multivariate)
