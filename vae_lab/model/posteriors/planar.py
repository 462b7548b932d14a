"""K amortized planar flow steps after the diagonal base (Rezende & Mohamed 2015, "Variational
Inference with Normalizing Flows", eqs. 10-13 and appendix A)."""

from __future__ import annotations

from typing import Annotated

import torch
from pyro.distributions.transforms.planar import ConditionedPlanar
from torch import nn
from torch.distributions import TransformedDistribution

from vae_lab.model.posteriors.base import PosteriorFamily, diagonal_base
from vae_lab.model.precision import at_least_float32
from vae_lab.ranges import at_least, checked


class PlanarPosterior(PosteriorFamily):
    """z_0 ~ N(mu(x), diag sigma^2(x)), z_k = z_{k-1} + u_k tanh(w_k^T z_{k-1} + b_k), k = 1..K.

    The flow parameters (u_k, w_k, b_k) of every step are outputs of the encoder for each image (one
    linear layer on its features: amortized, as in Rezende & Mohamed 2015, section 4.2). Each step is
    pyro's ``ConditionedPlanar``, which enforces w^T u >= -1 (appendix A: u is replaced by
    u + (m(w^T u) - w^T u) w / |w|^2, m(a) = -1 + softplus(a)) so that the step is invertible, and
    log q(z_K|x) = log q_0(z_0|x) - sum_k log |1 + u_k^T psi_k(z_{k-1})| (eq. 13).

    A planar step has no closed-form inverse: log q(z|x) is known only at z drawn from q (pyro keeps
    the last forward pass), which is all the ELBO and importance sampling need; the VampPrior, which
    evaluates q(z|u_k) at arbitrary z, is refused. The KL is Monte Carlo; q does not factorize.
    """

    has_density_anywhere = False
    has_log_prob_at_other_z = False
    is_gaussian = False

    @checked("posterior")
    def __init__(
        self, feature_size: int, latent_dim: int, n_flows: Annotated[int, at_least(1, "planar flow steps")] = 4
    ) -> None:
        super().__init__(feature_size, latent_dim)
        self.n_flows = n_flows
        # Per step: b (1), u (latent_dim), w (latent_dim).
        self.flow_parameters = nn.Linear(feature_size, n_flows * (1 + 2 * latent_dim))

    @classmethod
    def why_not_density_anywhere(cls) -> str:
        return "a planar flow has no closed-form inverse, so log q(z|x) is known only at z drawn from q(z|x)"

    def forward(self, h: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> TransformedDistribution:
        parameters = at_least_float32(self.flow_parameters(h)).unflatten(-1, (self.n_flows, 1 + 2 * self.latent_dim))
        steps = [
            ConditionedPlanar(step.split((1, self.latent_dim, self.latent_dim), dim=-1))
            for step in parameters.unbind(-2)
        ]
        return TransformedDistribution(diagonal_base(loc, scale), steps, validate_args=False)
