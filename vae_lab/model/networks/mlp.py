"""Fully connected encoder and decoder: 784-200-200-50 with tanh is the one-stochastic-layer
architecture of Burda et al. (2016, section 5.1)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from vae_lab.model.networks.base import Activation, GaussianEncoder, HiddenSizes, make_activation
from vae_lab.model.posteriors import PosteriorFamily
from vae_lab.ranges import checked


def mlp(sizes: Sequence[int], activation_name: str) -> nn.Sequential:
    """Linear layers of the given sizes with an activation after each."""
    layers: list[nn.Module] = []
    for size_in, size_out in itertools.pairwise(sizes):
        layers += [nn.Linear(size_in, size_out), make_activation(activation_name)]
    return nn.Sequential(*layers)


class MLPEncoder(GaussianEncoder):
    @checked("model.encoder")
    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        hidden_sizes: HiddenSizes = (200, 200),
        activation: Activation = "tanh",
        posterior: Callable[..., PosteriorFamily] | None = None,
    ) -> None:
        sizes = [math.prod(image_shape), *hidden_sizes]
        super().__init__(nn.Sequential(nn.Flatten(), mlp(sizes, activation)), sizes[-1], latent_dim, posterior)


class DenseDecoder(nn.Module):
    """A hidden network on z followed by one linear map to every pixel's likelihood parameters:
    z ``[..., latent_dim]`` to ``[..., out_channels, H, W]``."""

    def __init__(self, hidden: nn.Module, hidden_size: int, image_shape: Sequence[int], out_channels: int) -> None:
        super().__init__()
        _, height, width = image_shape
        self.output_shape = (out_channels, height, width)
        self.hidden = hidden
        self.output = nn.Linear(hidden_size, math.prod(self.output_shape))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.output(self.hidden(z)).unflatten(-1, self.output_shape)


class MLPDecoder(DenseDecoder):
    @checked("model.decoder")
    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        out_channels: int,
        hidden_sizes: HiddenSizes = (200, 200),
        activation: Activation = "tanh",
    ) -> None:
        sizes = [latent_dim, *hidden_sizes]
        super().__init__(mlp(sizes, activation), sizes[-1], image_shape, out_channels)
