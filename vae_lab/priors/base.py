"""The interface every prior p(z) implements."""

from __future__ import annotations

import abc

import torch
from torch import nn
from torch.distributions import Distribution


class Prior(nn.Module, abc.ABC):
    """A distribution over the latent space R^latent_dim, possibly with learned parameters.

    Subclasses are built by :func:`vae_lab.build.build_model` with keyword arguments
    ``latent_dim``, ``encoder`` (the inference network, which the VampPrior maps pseudo-inputs
    through) and ``datamodule`` (for priors initialised from training images); a prior takes the
    ones it needs and ignores the rest through ``**context``.
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    @abc.abstractmethod
    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) for z of shape ``[..., latent_dim]``, returning shape ``[...]``."""

    @abc.abstractmethod
    def sample(self, n: int) -> torch.Tensor:
        """n samples from p(z), shape ``[n, latent_dim]``."""

    def distribution(self) -> Distribution | None:
        """p(z) as a ``torch.distributions`` object whose KL against a diagonal Gaussian is
        registered (analytic KL), or None when there is no closed form (Monte Carlo KL)."""
        return None

    def log_prob_per_dim(self, z: torch.Tensor) -> torch.Tensor | None:
        """log p(z_j) of each dimension, shape ``[..., latent_dim]``, when p(z) = prod_j p(z_j); else
        None. Gives the Monte Carlo KL of each latent dimension (for free bits)."""
        return None

    @property
    def is_factorized(self) -> bool:
        """True when p(z) = prod_j p(z_j), so that the KL splits into one term per latent dimension."""
        return False
