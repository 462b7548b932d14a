"""Gated fully connected networks, the VampPrior paper's one-stochastic-layer architecture
(Tomczak & Welling 2018, section 4.1: two gated layers of 300 units)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from vae_lab.model.networks.base import GaussianEncoder, HiddenSizes
from vae_lab.model.networks.mlp import DenseDecoder
from vae_lab.model.posteriors import PosteriorFamily
from vae_lab.ranges import checked


class GatedLinear(nn.Module):
    """h = (W x + b) * sigmoid(V x + c): a gated linear unit (Dauphin et al. 2017, eq. 1)."""

    def __init__(self, size_in: int, size_out: int) -> None:
        super().__init__()
        self.value = nn.Linear(size_in, size_out)
        self.gate = nn.Linear(size_in, size_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value(x) * torch.sigmoid(self.gate(x))


def gated_mlp(sizes: Sequence[int]) -> nn.Sequential:
    return nn.Sequential(*(GatedLinear(size_in, size_out) for size_in, size_out in itertools.pairwise(sizes)))


class GatedMLPEncoder(GaussianEncoder):
    @checked("model.encoder")
    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        hidden_sizes: HiddenSizes = (300, 300),
        posterior: Callable[..., PosteriorFamily] | None = None,
    ) -> None:
        sizes = [math.prod(image_shape), *hidden_sizes]
        super().__init__(nn.Sequential(nn.Flatten(), gated_mlp(sizes)), sizes[-1], latent_dim, posterior)


class GatedMLPDecoder(DenseDecoder):
    @checked("model.decoder")
    def __init__(
        self, image_shape: Sequence[int], latent_dim: int, out_channels: int, hidden_sizes: HiddenSizes = (300, 300)
    ) -> None:
        sizes = [latent_dim, *hidden_sizes]
        super().__init__(gated_mlp(sizes), sizes[-1], image_shape, out_channels)
