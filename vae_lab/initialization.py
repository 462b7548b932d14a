"""Initialisations that the reproduced papers use."""

from __future__ import annotations

import torch
from torch import nn

from vae_lab.data import ImageDataModule
from vae_lab.errors import ConfigError
from vae_lab.likelihoods import BernoulliLikelihood, Likelihood


def initialize_output_bias_from_data(decoder: nn.Module, likelihood: Likelihood, datamodule: ImageDataModule) -> None:
    """Set the decoder's output biases to the logit of the training set's mean pixel, so that the
    untrained model already predicts the average image (Burda et al. 2016, section 5.1; their code
    initialises the output bias from the marginal pixel probabilities)."""
    output = getattr(decoder, "output", None)
    if not isinstance(likelihood, BernoulliLikelihood) or not isinstance(output, nn.Linear):
        raise ConfigError(
            "model.initialize_output_bias=true needs likelihood=bernoulli and a decoder ending in one linear "
            f"layer (model=mlp or gated_mlp); got {type(likelihood).__name__} and {type(decoder).__name__}."
        )
    datamodule.setup()
    mean = (datamodule.splits["train"].float().mean(0) / (1 if datamodule.binarization == "static" else 255.0))
    with torch.no_grad():
        output.bias.copy_(torch.logit(mean.clamp(1e-3, 1 - 1e-3)).flatten())
