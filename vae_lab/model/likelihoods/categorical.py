"""256-way categorical likelihood for 8-bit pixels (as in PixelRNN's softmax output, van den Oord
et al. 2016, sec. 5.3)."""

from __future__ import annotations

import torch
from torch.distributions import Categorical

from vae_lab.data.forms import DataForm
from vae_lab.model.likelihoods.base import NO_SAMPLE_SHAPE, Likelihood

N_VALUES = 256


class PixelCategorical(Categorical):
    """A ``Categorical`` over the pixel values 0..255 (classes on the last axis of ``logits``) whose
    ``mean`` is the expected pixel value sum_v v P(v) (``Categorical.mean`` is undefined) and whose
    samples are floats, the form in which 8-bit data is served."""

    @property
    def mean(self) -> torch.Tensor:
        values = torch.arange(self.logits.shape[-1], dtype=self.probs.dtype, device=self.probs.device)
        return (self.probs * values).sum(-1)

    def sample(self, sample_shape: torch.Size = NO_SAMPLE_SHAPE) -> torch.Tensor:
        return super().sample(sample_shape).to(self.logits.dtype)


class CategoricalLikelihood(Likelihood):
    """p(x|z) = prod_i Cat(x_i; softmax(l_i(z))) over 8-bit pixels x_i in {0, ..., 255}: a free
    256-way distribution per pixel and channel, no ordering of the values assumed. A probability
    mass, so bits/dim are -log p / (D ln 2); all-zero logits give exactly 8 bits/dim.

    Decoder output ``[..., 256 * C, H, W]`` in the layout ``split_parameters`` cuts: map v * C + c is
    the logit of value v in channel c. It is viewed as ``[..., C, H, W, 256]`` (classes last, as
    ``Categorical`` wants) without copying.
    """

    data_form = DataForm.DISCRETE

    @property
    def parameters_per_channel(self) -> int:
        return N_VALUES

    def pixel_distribution(self, decoder_output: torch.Tensor) -> PixelCategorical:
        logits = decoder_output.unflatten(-3, (N_VALUES, self.channels)).movedim(-4, -1)
        return PixelCategorical(logits=logits, validate_args=False)
