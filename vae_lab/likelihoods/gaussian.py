"""Gaussian likelihood for dequantized pixels, with three ways to set the variance."""

from __future__ import annotations

import torch
from torch.distributions import Normal

from vae_lab.likelihoods.location_scale import LocationScaleLikelihood


class GaussianLikelihood(LocationScaleLikelihood):
    """p(x|z) = prod_i N(x_i; mu_i(z), sigma_i^2) (Kingma & Welling 2014, appendix C.2).

    ``variance``:
      - ``fixed``: sigma = ``fixed_sigma`` for every pixel;
      - ``per_channel``: one learned sigma per image channel;
      - ``per_pixel``: the decoder outputs a second map per channel, the raw sigma of each pixel.
    Learned scales are ``min_sigma + softplus(raw)``: the floor keeps log p finite by construction
    (a collapsing sigma would otherwise send log p to +inf on dequantized data).
    """

    distribution_class = Normal
    setting_names = ("variance", "fixed_sigma", "min_sigma")

    def __init__(
        self,
        channels: int,
        variance: str = "per_channel",
        fixed_sigma: float = 0.1,
        min_sigma: float = 1e-3,
    ) -> None:
        super().__init__(channels, mode=variance, fixed_scale=fixed_sigma, min_scale=min_sigma)

    def sigma(self, decoder_output: torch.Tensor) -> torch.Tensor:
        """The standard deviation, broadcastable to the image."""
        return self.pixel_scale(decoder_output)

    @property
    def raw_sigma(self) -> torch.nn.Parameter:
        """The raw per-channel parameter (``variance=per_channel``): sigma = min_sigma + softplus(raw)."""
        return self.raw_scale
