"""K inverse autoregressive flow steps conditioned on a context from the encoder (Kingma et al.
2016, "Improved Variational Inference with Inverse Autoregressive Flow", eqs. 10-14)."""

from __future__ import annotations

from typing import Annotated

import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn
from torch.distributions import TransformedDistribution

from vae_lab.errors import ConfigError
from vae_lab.model.posteriors.base import PosteriorFamily, diagonal_base
from vae_lab.model.precision import at_least_float32
from vae_lab.ranges import at_least, checked


class IAFPosterior(PosteriorFamily):
    """z_0 = mu(x) + sigma(x) * eps, then K steps z_t = s_t * z_{t-1} + (1 - s_t) * m_t with
    [m_t, logit s_t] = MADE_t(z_{t-1}, h(x)) autoregressive in z and s_t = sigmoid(logit + 2)
    (eq. 14, the numerically stable form, and its forget-gate bias); log q(z_T|x) = log q_0(z_0|x)
    - sum_t sum_i log s_t,i. The context h(x) is a linear layer of ``context_size`` on the encoder's
    features (Kingma et al.: the encoder outputs mu, sigma and h). The order of the latent dimensions
    is reversed from one step to the next.

    Each step is pyro's ``ConditionalAffineAutoregressive(..., stable=True)`` on a
    ``ConditionalAutoRegressiveNN`` (MADE, Germain et al. 2015) with ``hidden_size`` units in each of
    ``n_hidden_layers`` layers (ELU, as Kingma et al.). Sampling is one pass per step; log q(z|x) at
    a z not drawn from q needs D sequential passes per step, so the VampPrior (q(z|u_k) at every z, for
    every pseudo-input) is refused. The KL is Monte Carlo; q does not factorize.
    """

    has_density_anywhere = False
    is_gaussian = False

    @checked("posterior")
    def __init__(
        self,
        feature_size: int,
        latent_dim: int,
        n_flows: Annotated[int, at_least(1)] = 2,
        context_size: Annotated[int, at_least(1)] = 50,
        hidden_size: Annotated[int, at_least(1)] = 100,
        n_hidden_layers: Annotated[int, at_least(1)] = 1,
    ) -> None:
        super().__init__(feature_size, latent_dim)
        if hidden_size < latent_dim:
            raise ConfigError(
                f"posterior.hidden_size={hidden_size} is below model.latent_dim={latent_dim}: a MADE layer needs at "
                "least one unit per autoregressive degree; use posterior.hidden_size>=latent_dim."
            )
        self.n_flows = n_flows
        self.context = nn.Linear(feature_size, context_size)
        order = torch.arange(latent_dim)
        self.steps = nn.ModuleList(
            ConditionalAffineAutoregressive(
                ConditionalAutoRegressiveNN(
                    latent_dim,
                    context_size,
                    [hidden_size] * n_hidden_layers,
                    permutation=order if step % 2 == 0 else order.flip(0),
                    nonlinearity=nn.ELU(),
                ),
                stable=True,
            )
            for step in range(n_flows)
        )

    @classmethod
    def why_not_density_anywhere(cls) -> str:
        return (
            "an inverse autoregressive flow gives log q(z|x) at an arbitrary z only through latent_dim sequential "
            "passes per step, for each of the prior's K components"
        )

    def forward(self, h: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> TransformedDistribution:
        context = at_least_float32(self.context(h))
        steps = [step.condition(context) for step in self.steps]
        return TransformedDistribution(diagonal_base(loc, scale), steps, validate_args=False)
