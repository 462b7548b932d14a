"""Gaussian likelihood for dequantized pixels, with three ways to set the variance."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Distribution, Normal

from vae_lab.data_forms import DataForm
from vae_lab.errors import ConfigError
from vae_lab.likelihoods.base import Likelihood

VARIANCE_MODES = ("fixed", "per_channel", "per_pixel")


class GaussianLikelihood(Likelihood):
    """p(x|z) = prod_i N(x_i; mu_i(z), sigma_i^2) (Kingma & Welling 2014, appendix C.2).

    ``variance``:
      - ``fixed``: sigma = ``fixed_sigma`` for every pixel;
      - ``per_channel``: one learned sigma per image channel;
      - ``per_pixel``: the decoder outputs a second map per channel, the raw sigma of each pixel.
    Learned scales are ``min_sigma + softplus(raw)``: the floor keeps log p finite by construction
    (a collapsing sigma would otherwise send log p to +inf on dequantized data).
    """

    data_form = DataForm.CONTINUOUS

    def __init__(
        self,
        channels: int,
        variance: str = "per_channel",
        fixed_sigma: float = 0.1,
        min_sigma: float = 1e-3,
    ) -> None:
        super().__init__(channels)
        if variance not in VARIANCE_MODES:
            raise ConfigError(
                f"likelihood.variance={variance!r} is not a variance mode; use one of {', '.join(VARIANCE_MODES)}."
            )
        if fixed_sigma <= 0 or min_sigma <= 0:
            raise ConfigError(
                f"likelihood.fixed_sigma={fixed_sigma} and likelihood.min_sigma={min_sigma} must both be > 0."
            )
        self.variance = variance
        self.fixed_sigma = fixed_sigma
        self.min_sigma = min_sigma
        if variance == "per_channel":
            # softplus(raw) + min_sigma starts at sigma = 0.1, a typical scale of pixel noise on [0, 1].
            initial = math.log(math.expm1(0.1 - min_sigma))
            self.raw_sigma = nn.Parameter(torch.full((channels, 1, 1), initial))

    @property
    def parameters_per_channel(self) -> int:
        return 2 if self.variance == "per_pixel" else 1

    def sigma(self, decoder_output: torch.Tensor) -> torch.Tensor:
        """The standard deviation, broadcastable to the image."""
        if self.variance == "fixed":
            return torch.full((), self.fixed_sigma, device=decoder_output.device, dtype=decoder_output.dtype)
        if self.variance == "per_channel":
            return self.min_sigma + nn.functional.softplus(self.raw_sigma)
        raw_sigma = self.split_parameters(decoder_output)[1]
        return self.min_sigma + nn.functional.softplus(raw_sigma)

    def pixel_distribution(self, decoder_output: torch.Tensor) -> Distribution:
        mean = self.split_parameters(decoder_output)[0]
        return Normal(mean, self.sigma(decoder_output).expand_as(mean), validate_args=False)
