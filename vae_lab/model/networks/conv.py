"""Convolutional encoder and decoder for 28x28 and 32x32 images: each stride-2 layer halves the
side, so the side must be divisible by 2 ** len(channels)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from torch import nn

from vae_lab.errors import ConfigError
from vae_lab.model.networks.base import Activation, Channels, GaussianEncoder, HiddenSize, make_activation
from vae_lab.model.posteriors import PosteriorFamily
from vae_lab.ranges import checked


def _reduced_side(image_shape: Sequence[int], channels: Sequence[int]) -> tuple[int, int]:
    _, height, width = image_shape
    factor = 2 ** len(channels)
    if height % factor or width % factor:
        raise ConfigError(
            f"model.channels={list(channels)} halves the image {len(channels)} times, but the image is "
            f"{height}x{width}, not divisible by {factor}; use fewer conv layers."
        )
    return height // factor, width // factor


class ConvEncoder(GaussianEncoder):
    @checked("model.encoder")
    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        channels: Channels = (32, 64),
        hidden_size: HiddenSize = 256,
        activation: Activation = "relu",
        posterior: Callable[..., PosteriorFamily] | None = None,
    ) -> None:
        height, width = _reduced_side(image_shape, channels)
        layers: list[nn.Module] = []
        for channels_in, channels_out in zip([image_shape[0], *channels[:-1]], channels, strict=True):
            layers += [nn.Conv2d(channels_in, channels_out, 4, stride=2, padding=1), make_activation(activation)]
        layers += [nn.Flatten(), nn.Linear(channels[-1] * height * width, hidden_size), make_activation(activation)]
        super().__init__(nn.Sequential(*layers), hidden_size, latent_dim, posterior)


class ConvDecoder(nn.Module):
    """z ``[..., latent_dim]`` to likelihood parameters ``[..., out_channels, H, W]``."""

    @checked("model.decoder")
    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        out_channels: int,
        channels: Channels = (32, 64),
        hidden_size: HiddenSize = 256,
        activation: Activation = "relu",
    ) -> None:
        super().__init__()
        height, width = _reduced_side(image_shape, channels)
        reversed_channels = list(reversed(channels))
        layers: list[nn.Module] = [
            nn.Linear(latent_dim, hidden_size),
            make_activation(activation),
            nn.Linear(hidden_size, reversed_channels[0] * height * width),
            make_activation(activation),
            nn.Unflatten(-1, (reversed_channels[0], height, width)),
        ]
        for channels_in, channels_out in itertools.pairwise(reversed_channels):
            layers += [
                nn.ConvTranspose2d(channels_in, channels_out, 4, stride=2, padding=1),
                make_activation(activation),
            ]
        layers.append(nn.ConvTranspose2d(reversed_channels[-1], out_channels, 4, stride=2, padding=1))
        self.network = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch_shape = z.shape[:-1]
        output = self.network(z.reshape(-1, z.shape[-1]))
        return output.reshape(*batch_shape, *output.shape[1:])
