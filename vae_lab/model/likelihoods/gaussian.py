"""Gaussian likelihood for dequantized pixels, with three ways to set the variance."""

from __future__ import annotations

from typing import Annotated

import torch
from torch.distributions import Distribution, Normal

from vae_lab.model.likelihoods.calibrated import CalibratedNormal, TrainingSetScale
from vae_lab.model.likelihoods.location_scale import SCALE_MODES, LocationScaleLikelihood, Scale
from vae_lab.ranges import checked, one_of

#: The Gaussian's ``variance`` settings: the location-scale modes and ``optimal`` (the calibrated decoder).
VARIANCE_MODES = (*SCALE_MODES, "optimal")


class GaussianLikelihood(LocationScaleLikelihood):
    """p(x|z) = prod_i N(x_i; mu_i(z), sigma_i^2) (Kingma & Welling 2014, appendix C.2).

    ``variance``:
      - ``fixed``: sigma = ``fixed_sigma`` for every pixel;
      - ``per_channel``: one learned sigma per image channel;
      - ``per_pixel``: the decoder outputs a second map per channel, the raw sigma of each pixel;
      - ``optimal``: the calibrated decoder (Rybkin et al. 2021, vae_lab/model/likelihoods/calibrated.py): in
        training one shared sigma, the batch's maximum-likelihood value; in evaluation the training set's
        (starting at ``fixed_sigma`` before the first epoch).
    Learned scales are ``min_sigma + softplus(raw)``: the floor keeps log p finite by construction
    (a collapsing sigma would otherwise send log p to +inf on dequantized data).
    """

    distribution_class = Normal
    setting_names = ("variance", "fixed_sigma", "min_sigma")

    @checked("likelihood")
    def __init__(
        self,
        channels: int,
        variance: Annotated[str, one_of(VARIANCE_MODES, "a scale mode")] = "per_channel",
        fixed_sigma: Scale = 0.1,
        min_sigma: Scale = 1e-3,
    ) -> None:
        super().__init__(channels, mode=variance, fixed_scale=fixed_sigma, min_scale=min_sigma)
        if variance == "optimal":
            self.training_set_sigma = TrainingSetScale(fixed_sigma, min_sigma)

    def pixel_scale(self, decoder_output: torch.Tensor) -> torch.Tensor:
        if self.mode == "optimal":
            return self.training_set_sigma.scale.to(decoder_output.dtype)
        return super().pixel_scale(decoder_output)

    def pixel_distribution(self, decoder_output: torch.Tensor) -> Distribution:
        if self.mode == "optimal" and self.training:
            sigma = self.training_set_sigma
            loc = self.split_parameters(decoder_output)[0]
            return CalibratedNormal(loc, self.min_scale, sigma.scale, on_fit=sigma.add)
        return super().pixel_distribution(decoder_output)

    def train_epoch_started(self) -> None:
        if self.mode == "optimal":
            self.training_set_sigma.start_epoch()

    def train_epoch_finished(self) -> None:
        if self.mode == "optimal":
            self.training_set_sigma.finish_epoch()

    def sigma(self, decoder_output: torch.Tensor) -> torch.Tensor:
        """The standard deviation, broadcastable to the image."""
        return self.pixel_scale(decoder_output)

    @property
    def raw_sigma(self) -> torch.nn.Parameter:
        """The raw per-channel parameter (``variance=per_channel``): sigma = min_sigma + softplus(raw)."""
        return self.raw_scale
