"""A normalizing-flow prior: affine-coupling layers (RealNVP, Dinh et al. 2017) on top of N(0, I)."""

from __future__ import annotations

from typing import Annotated, Any

import torch
from torch import nn
from torch.distributions import Independent, Normal, TransformedDistribution

from vae_lab.errors import ConfigError
from vae_lab.model.networks.base import Activation
from vae_lab.model.priors.affine_coupling import AffineCoupling, AffineCouplingTransform
from vae_lab.model.priors.base import Prior
from vae_lab.ranges import at_least, checked


class FlowPrior(Prior):
    """p(z) = N(f^{-1}(z); 0, I) |det d f^{-1}(z) / dz| with f = f_n o ... o f_1 a stack of affine
    couplings whose masks alternate between the even and the odd dimensions (Dinh et al. 2017,
    eq. 3, the change of variables). ``sample`` draws eps ~ N(0, I) and returns f(eps).

    The flow starts as the identity (p(z) = N(0, I) at initialisation) and is learned with the
    rest of the model; the KL is estimated by Monte Carlo, and the prior does not factorize.
    """

    @checked("prior")
    def __init__(
        self,
        latent_dim: int,
        n_layers: Annotated[int, at_least(1, "coupling layers")] = 4,
        hidden_size: Annotated[int, at_least(1)] = 64,
        activation: Activation = "tanh",
        **context: Any,
    ) -> None:
        super().__init__(latent_dim)
        if latent_dim < 2:
            raise ConfigError(
                f"prior=flow needs model.latent_dim >= 2 (a coupling layer splits the dimensions), got {latent_dim}."
            )
        parity = torch.arange(latent_dim) % 2
        self.couplings = nn.ModuleList(
            AffineCoupling((parity == layer % 2).float(), hidden_size, activation) for layer in range(n_layers)
        )
        self.register_buffer("loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(latent_dim), persistent=False)

    def flow(self) -> TransformedDistribution:
        """p(z) as a ``torch.distributions.TransformedDistribution`` of N(0, I)."""
        base = Independent(Normal(self.loc, self.scale, validate_args=False), 1)
        return TransformedDistribution(
            base, [AffineCouplingTransform(layer) for layer in self.couplings], validate_args=False
        )

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return self.flow().log_prob(z)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self.flow().sample((n,))
