"""The interface every likelihood p(x|z) implements."""

from __future__ import annotations

import abc
from typing import ClassVar

import torch
from torch import nn
from torch.distributions import Distribution, Independent

from vae_lab.data.forms import DataForm
from vae_lab.model.precision import at_least_float32

#: The default ``sample_shape`` of the likelihoods' distributions' sample/rsample (one sample), as in
#: torch.distributions; a module constant since a call in a default argument is evaluated once anyway.
NO_SAMPLE_SHAPE = torch.Size()


class Likelihood(nn.Module, abc.ABC):
    """Turns the decoder's output into a distribution over images.

    The decoder emits ``parameters_per_channel`` maps for each image channel, shaped
    ``[..., parameters_per_channel * C, H, W]``. :meth:`forward` returns a ``Distribution`` whose
    event shape is ``(C, H, W)``, so ``log_prob(x)`` is log p(x|z) summed over every pixel and
    channel: nats per image, never a per-pixel mean.
    """

    #: The form of pixels this likelihood is a distribution over; the data module serves it.
    data_form: ClassVar[DataForm]

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    @property
    @abc.abstractmethod
    def parameters_per_channel(self) -> int:
        """How many decoder output maps each image channel needs."""

    @abc.abstractmethod
    def pixel_distribution(self, decoder_output: torch.Tensor) -> Distribution:
        """The per-pixel distribution, batch shape ``[..., C, H, W]`` and empty event shape."""

    def forward(self, decoder_output: torch.Tensor) -> Distribution:
        """p(x|z) with event shape (C, H, W): ``log_prob`` sums over all pixels, in float32 even
        under mixed precision (in bfloat16, a log-likelihood of ~100 nats has steps of half a nat)."""
        return Independent(self.pixel_distribution(at_least_float32(decoder_output)), 3)

    def train_epoch_started(self) -> None:
        """Called when a training epoch starts (a likelihood with per-epoch state resets it here)."""

    def train_epoch_finished(self) -> None:
        """Called when an epoch's training batches are done, before validation and checkpoints."""

    def split_parameters(self, decoder_output: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Split ``[..., P*C, H, W]`` into P tensors of shape ``[..., C, H, W]``."""
        return decoder_output.chunk(self.parameters_per_channel, dim=-3)

    def mean_image(self, distribution: Distribution) -> torch.Tensor:
        """E[x|z] on the [0, 1] scale, for reconstruction and sample grids."""
        return self.data_form.to_unit_interval(distribution.mean).clamp(0.0, 1.0)
