"""What all encoders share: a feature network followed by a diagonal-Gaussian head."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Independent, Normal

from vae_lab.errors import ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by its lower-case name (``tanh``, ``relu``, ...)."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"model activation {name!r} is unknown; use one of {', '.join(ACTIVATIONS)}.")
    return ACTIVATIONS[name]()


class GaussianEncoder(nn.Module):
    """q(z|x) = N(z; mu(x), diag sigma^2(x)) (Kingma & Welling 2014, eq. 9).

    The head outputs the mean and the log-variance; sigma = exp(log_variance / 2), the
    "exp variances" of Burda et al. (2016, section 5.1).
    """

    def __init__(self, features: nn.Module, feature_size: int, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.features = features
        self.mean = nn.Linear(feature_size, latent_dim)
        self.log_variance = nn.Linear(feature_size, latent_dim)

    def forward(self, x: torch.Tensor) -> Independent:
        """x: images on the [0, 1] scale, ``[B, C, H, W]``; returns q(z|x) with event shape (latent_dim,)."""
        h = self.features(x)
        # float32 even under mixed precision: log q(z|x) and the KL are sums over latent dimensions.
        scale = torch.exp(0.5 * self.log_variance(h).float())
        return Independent(Normal(self.mean(h).float(), scale, validate_args=False), 1)
