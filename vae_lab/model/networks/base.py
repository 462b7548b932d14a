"""What all encoders share: a feature network followed by a diagonal-Gaussian head, which the
posterior family (vae_lab/posteriors) turns into q(z|x)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated

import torch
from torch import nn
from torch.distributions import Distribution

from vae_lab.errors import ConfigError
from vae_lab.model.posteriors import DiagonalPosterior, PosteriorFamily
from vae_lab.model.precision import at_least_float32
from vae_lab.ranges import at_least, each, one_of

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
}


#: The activation of a network, by name (``model.encoder.activation``).
Activation = Annotated[str, one_of(ACTIVATIONS)]
#: The widths of hidden layers (may be empty) and of the channels of conv layers (at least one).
HiddenSizes = Annotated[Sequence[int], each(at_least(1), non_empty=False)]
Channels = Annotated[Sequence[int], each(at_least(1))]
#: The width of one hidden layer.
HiddenSize = Annotated[int, at_least(1)]


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by its lower-case name (``tanh``, ``relu``, ...)."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"model activation {name!r} is unknown; use one of {', '.join(ACTIVATIONS)}.")
    return ACTIVATIONS[name]()


#: Soft bound on the encoder's log-variance: log sigma^2 = B tanh(raw / B) lies in (-B, B), so
#: sigma lies in (exp(-B/2), exp(B/2)) = (4.5e-5, 2.2e4) for B = 20.
LOG_VARIANCE_BOUND = 20.0


class GaussianEncoder(nn.Module):
    """q(z|x) = N(z; mu(x), diag sigma^2(x)) (Kingma & Welling 2014, eq. 9), or the richer family
    ``posterior`` builds on that base from the features (``posterior=`` config group).

    The head outputs the mean and the log-variance; sigma = exp(log_variance / 2), the
    "exp variances" of Burda et al. (2016, section 5.1).

    The log-variance is kept in (-B, B), B = ``LOG_VARIANCE_BOUND`` = 20, by construction:
    log sigma^2 = B tanh(raw / B). Unbounded, one large pre-activation overflows exp() to inf
    (raw > 88 in float32) or sends sigma to 0, where log q(z|x) and the gradient of the Monte
    Carlo KL (which scales as 1/sigma^2) blow up. The bound is smooth and has slope
    1 - tanh^2(raw/B) >= 0.94 for |raw| <= 5, where trained VAE encoders live (posterior
    sigmas of 0.08 to 12), so it does not change the model there; it only keeps the extremes
    finite. The same range, as a hard clamp, guards the diagonal Gaussian of the latent
    diffusion autoencoder (Rombach et al. 2022, code: logvar clamped to [-30, 20]).
    """

    def __init__(
        self,
        features: nn.Module,
        feature_size: int,
        latent_dim: int,
        posterior: Callable[..., PosteriorFamily] | None = None,
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.features = features
        self.mean = nn.Linear(feature_size, latent_dim)
        self.log_variance = nn.Linear(feature_size, latent_dim)
        # Built last, so that the layers above draw the same initial values with every family.
        self.family = (posterior or DiagonalPosterior)(feature_size=feature_size, latent_dim=latent_dim)

    def forward(self, x: torch.Tensor) -> Distribution:
        """x: images on the [0, 1] scale, ``[B, C, H, W]``; returns q(z|x) with event shape (latent_dim,)."""
        h = self.features(x)
        # float32 even under mixed precision: log q(z|x) and the KL are sums over latent dimensions.
        log_variance = LOG_VARIANCE_BOUND * torch.tanh(at_least_float32(self.log_variance(h)) / LOG_VARIANCE_BOUND)
        scale = torch.exp(0.5 * log_variance)
        return self.family(h, at_least_float32(self.mean(h)), scale)
