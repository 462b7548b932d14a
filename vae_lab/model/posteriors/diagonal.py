"""q(z|x) = N(mu(x), diag sigma^2(x)) (Kingma & Welling 2014, eq. 9): the default family."""

from __future__ import annotations

import torch
from torch.distributions import Independent

from vae_lab.model.posteriors.base import PosteriorFamily, diagonal_base


class DiagonalPosterior(PosteriorFamily):
    """The encoder's diagonal Gaussian head as it is; no parameters of its own. Factorizes over the
    latent dimensions; KL analytic against the standard prior (Kingma & Welling 2014, appendix B)."""

    is_factorized = True
    has_closed_form_kl = True

    def forward(self, h: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> Independent:
        return diagonal_base(loc, scale)
