"""Laplace likelihood for dequantized pixels, with a fixed or learned scale."""

from __future__ import annotations

from typing import Annotated

from torch.distributions import Laplace

from vae_lab.model.likelihoods.location_scale import SCALE_MODES, LocationScaleLikelihood, Scale
from vae_lab.ranges import checked, one_of


class LaplaceLikelihood(LocationScaleLikelihood):
    """p(x|z) = prod_i Laplace(x_i; mu_i(z), b_i) = prod_i exp(-|x_i - mu_i| / b_i) / (2 b_i).

    log p(x|z) = -sum_i |x_i - mu_i| / b_i - sum_i log(2 b_i): with a fixed b it is the L1
    reconstruction error scaled by 1/b plus a constant, as the Gaussian is the scaled L2 error.
    The density lives on the real line, so on pixels y in [0, 1] it is sub-normalised and
    -log p(y) stays an upper bound on the negative log-likelihood.

    ``scale``:
      - ``fixed``: b = ``fixed_scale`` for every pixel;
      - ``per_channel``: one learned b per image channel;
      - ``per_pixel``: the decoder outputs a raw b for each pixel.
    Learned scales are ``min_scale + softplus(raw)``: the floor keeps log p finite by construction.
    """

    distribution_class = Laplace
    setting_names = ("scale", "fixed_scale", "min_scale")

    @checked("likelihood")
    def __init__(
        self,
        channels: int,
        scale: Annotated[str, one_of(SCALE_MODES, "a scale mode")] = "per_channel",
        fixed_scale: Scale = 0.1,
        min_scale: Scale = 1e-3,
    ) -> None:
        super().__init__(channels, mode=scale, fixed_scale=fixed_scale, min_scale=min_scale)
