"""Discretized mixture of logistics for 8-bit pixels (Salimans et al. 2017, PixelCNN++, eq. 2)."""

from __future__ import annotations

import math
from typing import Annotated

import torch
from torch.distributions import Categorical, Distribution, constraints
from torch.nn.functional import log_softmax, logsigmoid

from vae_lab.data.forms import DataForm
from vae_lab.model.likelihoods.base import NO_SAMPLE_SHAPE, Likelihood
from vae_lab.ranges import at_least, checked

N_VALUES = 256
#: Half the width of one bin on the [-1, 1] scale the logistics live on.
HALF_BIN = 1.0 / (N_VALUES - 1)
#: Below this log w, log(1 - e^-w) is taken from its series log w - w/2 (error w^2/24 < 1e-35), so that
#: a w that underflows (log s above about 98 in float32) still gives a finite mass and gradient.
SERIES_BELOW_LOG_WIDTH = -40.0


def log_one_minus_exp_minus(log_w: torch.Tensor) -> torch.Tensor:
    """log(1 - e^-w) for w = e^log_w > 0, given log w: the log of an interior bin's mass relative to
    sigma(upper) (1 - sigma(lower)). ``log(-expm1(-w))`` is exact to rounding for w >= e^-40; below,
    the series, whose branch is fed a safe w so that neither branch's gradient is NaN."""
    w = torch.exp(log_w)
    small = log_w < SERIES_BELOW_LOG_WIDTH
    direct = torch.log(-torch.expm1(-torch.where(small, torch.ones_like(w), w)))
    return torch.where(small, log_w - 0.5 * w, direct)


def to_logistic_scale(pixels: torch.Tensor) -> torch.Tensor:
    """Pixel values 0..255 to bin centres on [-1, 1] (PixelCNN++'s scale)."""
    return pixels * (2.0 / (N_VALUES - 1)) - 1.0


class DiscretizedLogisticMixture(Distribution):
    """P(x) = sum_k pi_k [sigma((x' + 1/255 - mu_k) / s_k) - sigma((x' - 1/255 - mu_k) / s_k)] for the
    pixel values x in {0, ..., 255}, x' = 2x/255 - 1 on [-1, 1] (Salimans et al. 2017, eq. 2).

    The edge bins are open: x = 0 takes all the mass below its upper edge, sigma((-1 + 1/255 - mu) / s),
    and x = 255 all the mass above its lower edge, 1 - sigma((1 - 1/255 - mu) / s); the 256 masses
    sum to 1 for any parameters.

    Numerics: every term is in log space, log sigma(a) = logsigmoid(a), log(1 - sigma(b)) = logsigmoid(-b)
    (softplus would drop its log1p(e^-x) above its threshold 20: 2e-9 nats),
    and an interior bin's mass uses the identity
        sigma(a) - sigma(b) = sigma(a) sigma(-b) (1 - e^-(a - b)),  a = upper, b = lower edge,
    so log P = logsigmoid(a) + logsigmoid(-b) + log(1 - e^-(a - b)), with a - b = (2/255) / s taken from
    log s (never as the difference of the two edges, which is 0 in float32 once |mu| is near 1e6, and
    0.004 nats off at |mu| = 1e3). It is exact and cannot underflow: PixelCNN++ subtracts the two
    sigmoids, which cancels to 0 in float32 when both edges are far in a tail, and so falls back to
    the density at the bin centre times the bin width there; with the identity that fallback (an
    approximation) is never needed.

    Parameters, each ``[..., K]`` (mixture components last): ``mixture_logits`` (log pi up to a
    constant), ``means`` mu on [-1, 1], ``log_scales`` log s. Batch shape is ``[...]``.
    """

    arg_constraints = {
        "mixture_logits": constraints.real,
        "means": constraints.real,
        "log_scales": constraints.real,
    }
    support = constraints.integer_interval(0, N_VALUES - 1)

    def __init__(
        self,
        mixture_logits: torch.Tensor,
        means: torch.Tensor,
        log_scales: torch.Tensor,
        validate_args: bool | None = None,
    ) -> None:
        self.mixture_logits, self.means, self.log_scales = torch.broadcast_tensors(mixture_logits, means, log_scales)
        super().__init__(batch_shape=self.means.shape[:-1], validate_args=validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log P(x) for pixel values 0..255 (floats), ``[...]``."""
        if self._validate_args:
            self._validate_sample(value)
        value = value.unsqueeze(-1)
        centred = to_logistic_scale(value) - self.means
        inverse_scale = torch.exp(-self.log_scales)
        upper = inverse_scale * (centred + HALF_BIN)
        lower = inverse_scale * (centred - HALF_BIN)
        log_mass_below_upper = logsigmoid(upper)  # log sigma(upper): the whole mass of bin 0
        log_mass_above_lower = logsigmoid(-lower)  # log (1 - sigma(lower)): the whole mass of bin 255
        # upper - lower = (2/255) / s, taken from log s: subtracting the two edges cancels once |mu| is large.
        log_width = math.log(2.0 * HALF_BIN) - self.log_scales
        log_bin_mass = log_mass_below_upper + log_mass_above_lower + log_one_minus_exp_minus(log_width)
        log_mass = torch.where(
            value < 0.5,
            log_mass_below_upper,
            torch.where(value > N_VALUES - 1.5, log_mass_above_lower, log_bin_mass),
        )
        return torch.logsumexp(log_mass + log_softmax(self.mixture_logits, dim=-1), dim=-1)

    @property
    def mean(self) -> torch.Tensor:
        """E[x] = sum_{k=1}^{255} P(x >= k) = sum_k sum_j pi_j sigma((mu_j - e_k) / s_j), e_k the lower
        edge of bin k: exact, summed over the edges in chunks to keep memory at O(K) per pixel."""
        weights = torch.softmax(self.mixture_logits, dim=-1).unsqueeze(-1)
        means = self.means.unsqueeze(-1)
        inverse_scale = torch.exp(-self.log_scales).unsqueeze(-1)
        pixels = torch.arange(1, N_VALUES, dtype=self.means.dtype, device=self.means.device)
        lower_edges = to_logistic_scale(pixels) - HALF_BIN
        expected = torch.zeros(self.batch_shape, dtype=self.means.dtype, device=self.means.device)
        for edges in lower_edges.split(32):
            expected = expected + (weights * torch.sigmoid((means - edges) * inverse_scale)).sum((-2, -1))
        return expected

    @torch.no_grad()
    def sample(self, sample_shape: torch.Size = NO_SAMPLE_SHAPE) -> torch.Tensor:
        """Pick a component, draw a logistic by its inverse CDF, and take the bin it falls in (floats)."""
        shape = self._extended_shape(torch.Size(sample_shape))
        component = Categorical(logits=self.mixture_logits).sample(torch.Size(sample_shape)).unsqueeze(-1)
        means = self.means.expand(*shape, -1).gather(-1, component).squeeze(-1)
        log_scales = self.log_scales.expand(*shape, -1).gather(-1, component).squeeze(-1)
        uniform = torch.rand(shape, dtype=means.dtype, device=means.device).clamp(1e-6, 1 - 1e-6)
        logistic = means + torch.exp(log_scales) * (torch.log(uniform) - torch.log1p(-uniform))
        return torch.round((logistic + 1.0) * ((N_VALUES - 1) / 2.0)).clamp(0, N_VALUES - 1)


class DiscretizedLogisticLikelihood(Likelihood):
    """p(x|z) = prod_i P(x_i | z) over 8-bit pixels, each a discretized mixture of
    ``n_components`` logistics (Salimans et al. 2017, eq. 2; K = 1 is the discretized logistic of
    the IAF-VAE, Kingma et al. 2016). A probability mass, so bits/dim are -log p / (D ln 2).

    The decoder outputs, per channel, K mixture logits, K means (on [-1, 1], PixelCNN++'s scale) and
    K log scales, in that order along the channel axis (the layout ``split_parameters`` cuts: map
    j * C + c is parameter j of channel c). Log scales are clamped below at ``min_log_scale``
    (-7 as in PixelCNN++: s = 9e-4, about a ninth of the bin width 2/255).

    Pixels and channels are independent given z (the decoder is not autoregressive), so PixelCNN++'s
    linear dependence of a pixel's green and blue means on its red and green values is not used.
    """

    data_form = DataForm.DISCRETE

    @checked("likelihood")
    def __init__(
        self,
        channels: int,
        n_components: Annotated[int, at_least(1, "logistics in the mixture")] = 1,
        min_log_scale: float = -7.0,
    ) -> None:
        super().__init__(channels)
        self.n_components = n_components
        self.min_log_scale = min_log_scale

    @property
    def parameters_per_channel(self) -> int:
        return 3 * self.n_components

    def pixel_distribution(self, decoder_output: torch.Tensor) -> DiscretizedLogisticMixture:
        maps = self.split_parameters(decoder_output)  # 3K maps of [..., C, H, W]
        k = self.n_components
        mixture_logits, means, log_scales = (torch.stack(maps[i * k : (i + 1) * k], dim=-1) for i in range(3))
        return DiscretizedLogisticMixture(
            mixture_logits, means, log_scales.clamp(min=self.min_log_scale), validate_args=False
        )
