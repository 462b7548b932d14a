"""What the Gaussian and Laplace likelihoods share: a location map from the decoder and a scale
that is fixed, learned per channel, or output per pixel, with a floor."""

from __future__ import annotations

import math
from typing import Annotated, ClassVar

import torch
from torch import nn
from torch.distributions import Distribution

from vae_lab.data.forms import DataForm
from vae_lab.model.likelihoods.base import Likelihood
from vae_lab.ranges import greater_than

SCALE_MODES = ("fixed", "per_channel", "per_pixel")

#: A fixed scale or a floor of the scale: > 0.
Scale = Annotated[float, greater_than(0)]

#: Where a learned per-channel scale starts: a typical size of pixel noise on [0, 1].
INITIAL_SCALE = 0.1


class LocationScaleLikelihood(Likelihood):
    """p(x|z) = prod_i f(x_i; loc_i(z), scale_i) for a location-scale family f over dequantized pixels.

    The decoder outputs the location of every pixel. The scale ``mode``:
      - ``fixed``: every pixel has scale ``fixed_scale``;
      - ``per_channel``: one learned scale per image channel;
      - ``per_pixel``: the decoder also outputs a raw scale map per channel.
    Learned scales are ``min_scale + softplus(raw)``: the floor keeps log p finite by construction
    (a collapsing scale would otherwise send the density, and log p, to +inf on dequantized data).

    Subclasses name the family (``distribution_class``, built as ``distribution_class(loc, scale)``)
    and the config keys of the three settings (``setting_names``), and declare their choices and ranges
    in their own signatures (:data:`Scale`), where :func:`vae_lab.ranges.checked` checks them.
    """

    data_form = DataForm.CONTINUOUS
    distribution_class: ClassVar[type[Distribution]]
    #: Config keys of (mode, fixed scale, scale floor), e.g. ("variance", "fixed_sigma", "min_sigma").
    setting_names: ClassVar[tuple[str, str, str]]

    def __init__(self, channels: int, mode: str, fixed_scale: float, min_scale: float) -> None:
        super().__init__(channels)
        self.mode = mode
        self.fixed_scale = fixed_scale
        self.min_scale = min_scale
        if mode == "per_channel":
            # softplus(raw) + min_scale starts at INITIAL_SCALE (or at 2 * min_scale if the floor is higher).
            excess = INITIAL_SCALE - min_scale if min_scale < INITIAL_SCALE / 2 else min_scale
            self.raw_scale = nn.Parameter(torch.full((channels, 1, 1), math.log(math.expm1(excess))))

    @property
    def parameters_per_channel(self) -> int:
        return 2 if self.mode == "per_pixel" else 1

    def pixel_scale(self, decoder_output: torch.Tensor) -> torch.Tensor:
        """The scale of every pixel, broadcastable to the image."""
        if self.mode == "fixed":
            return torch.full((), self.fixed_scale, device=decoder_output.device, dtype=decoder_output.dtype)
        raw_scale = self.raw_scale if self.mode == "per_channel" else self.split_parameters(decoder_output)[1]
        return self.min_scale + nn.functional.softplus(raw_scale)

    def pixel_distribution(self, decoder_output: torch.Tensor) -> Distribution:
        loc = self.split_parameters(decoder_output)[0]
        return self.distribution_class(loc, self.pixel_scale(decoder_output).expand_as(loc), validate_args=False)
