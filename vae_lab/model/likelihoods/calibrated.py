"""The calibrated decoder of Rybkin, Daniilidis & Levine (2021, "Simple and Effective VAE Training with
Calibrated Decoders", the "optimal sigma" sigma-VAE): a Gaussian p(x|z) whose one shared sigma is set, on
each training batch, to its maximum-likelihood value in closed form,

    sigma*^2 = mean over the batch's images, samples z_l, channels and pixels of (x - mu(z))^2,

floored at ``min_sigma``. One sigma for everything, as Rybkin et al. do. Gradients flow through sigma*, as
in their code; for the ELBO this changes nothing (sigma* maximizes the batch's log-likelihood and the KL
does not depend on it, so d loss / d sigma = 0 there).

Evaluation must not fit sigma to the images it scores (the test NLL would stop being a bound): in eval
mode the likelihood uses one fixed sigma, the maximum-likelihood sigma of the training set pooled over
the training batches of the last completed training epoch (the squared residuals of all its batches,
summed, over their count; under DDP summed over ranks), a buffer saved in every checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.distributions import Distribution, Normal, constraints

from vae_lab.model.likelihoods.base import NO_SAMPLE_SHAPE


class CalibratedNormal(Distribution):
    """prod N(x_i; loc_i, sigma*^2) with sigma* fitted by :meth:`log_prob` to the values it scores (one
    shared sigma, floored at ``min_scale``). ``on_fit(sum of squared residuals, count)`` is told each fit.
    Draws use ``sample_scale`` (the last fixed sigma): a fitted sigma exists only for given x."""

    arg_constraints = {"loc": constraints.real}
    support = constraints.real
    has_rsample = True

    def __init__(
        self,
        loc: torch.Tensor,
        min_scale: float,
        sample_scale: torch.Tensor,
        on_fit: Callable[[torch.Tensor, int], None] | None = None,
    ) -> None:
        self.loc, self.min_scale, self.sample_scale, self.on_fit = loc, min_scale, sample_scale, on_fit
        super().__init__(batch_shape=loc.shape, validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    def fitted_scale(self, value: torch.Tensor) -> torch.Tensor:
        """sigma* = sqrt(mean (value - loc)^2), at least ``min_scale``; a scalar."""
        squared = (value - self.loc).square()
        if self.on_fit is not None:
            self.on_fit(squared.detach().sum(), squared.numel())
        return squared.mean().sqrt().clamp(min=self.min_scale)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return Normal(self.loc, self.fitted_scale(value), validate_args=False).log_prob(value)

    def rsample(self, sample_shape: torch.Size = NO_SAMPLE_SHAPE) -> torch.Tensor:
        return Normal(self.loc, self.sample_scale.expand_as(self.loc), validate_args=False).rsample(sample_shape)


class TrainingSetScale(torch.nn.Module):
    """The fixed sigma of evaluation: pools the squared residuals of the training batches of an epoch and,
    when the epoch's training is over, sets ``scale`` to their root mean (see the module docstring)."""

    def __init__(self, initial_scale: float, min_scale: float) -> None:
        super().__init__()
        self.min_scale = min_scale
        self.register_buffer("scale", torch.tensor(float(initial_scale)))
        self.register_buffer("squared_sum", torch.zeros((), dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    def add(self, squared_sum: torch.Tensor, count: int) -> None:
        self.squared_sum += squared_sum.to(self.squared_sum)
        self.count += count

    def start_epoch(self) -> None:
        self.squared_sum.zero_()
        self.count.zero_()

    def finish_epoch(self) -> None:
        """scale = sqrt(sum / count) over this epoch's training batches (all ranks); no-op before any."""
        pooled = torch.stack([self.squared_sum, self.count])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(pooled)
        if pooled[1] > 0:
            self.scale.copy_((pooled[0] / pooled[1]).sqrt().clamp(min=self.min_scale))
        self.start_epoch()
