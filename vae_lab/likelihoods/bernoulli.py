"""Bernoulli likelihood for binary pixels (Kingma & Welling 2014, appendix C.1)."""

from __future__ import annotations

import torch
from torch.distributions import Bernoulli, Distribution

from vae_lab.data_forms import DataForm
from vae_lab.likelihoods.base import Likelihood


class BernoulliLikelihood(Likelihood):
    """p(x|z) = prod_i Bernoulli(x_i; sigmoid(logit_i(z))).

    log p(x|z) = sum_i [x_i log p_i + (1 - x_i) log(1 - p_i)]: minus the binary cross-entropy
    summed over the pixels. Parameterised by logits, so it is stable for any decoder output.
    """

    data_form = DataForm.BINARY

    @property
    def parameters_per_channel(self) -> int:
        return 1

    def pixel_distribution(self, decoder_output: torch.Tensor) -> Distribution:
        return Bernoulli(logits=decoder_output, validate_args=False)
