"""The affine coupling layer of RealNVP (Dinh, Sohl-Dickstein & Bengio 2017, section 3.2-3.3), as
an ``nn.Module`` holding the parameters and a ``torch.distributions`` ``Transform`` using them."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Transform, constraints

from vae_lab.model.networks.mlp import mlp


class AffineCoupling(nn.Module):
    """y = b * x + (1 - b) * (x * exp(s(b * x)) + t(b * x)) for a binary mask b (Dinh et al. 2017,
    eq. 9): the masked dimensions pass unchanged and set the scale and shift of the others, so the
    Jacobian is triangular with log |det| = sum_j (1 - b_j) s_j(b * x) (eq. 6).

    s = range * tanh(.), with a learned range per dimension, keeps each layer's log-scale bounded
    (a common stabiliser of coupling flows). The last layer of the conditioner starts at zero: the layer starts as the
    identity, so a flow of them starts as its base distribution.
    """

    def __init__(self, mask: torch.Tensor, hidden_size: int = 64, activation: str = "tanh") -> None:
        super().__init__()
        dim = mask.shape[0]
        self.register_buffer("mask", mask.float())
        self.conditioner = nn.Sequential(
            mlp([dim, hidden_size, hidden_size], activation), nn.Linear(hidden_size, 2 * dim)
        )
        nn.init.zeros_(self.conditioner[-1].weight)
        nn.init.zeros_(self.conditioner[-1].bias)
        self.log_scale_range = nn.Parameter(torch.ones(dim))

    def log_scale_and_shift(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """s(b * x) and t(b * x), zero on the masked (unchanged) dimensions; both ``[..., dim]``."""
        raw_log_scale, shift = self.conditioner(x * self.mask).chunk(2, dim=-1)
        free = 1.0 - self.mask
        return self.log_scale_range * torch.tanh(raw_log_scale) * free, shift * free

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_scale, shift = self.log_scale_and_shift(x)
        return x * log_scale.exp() + shift

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        log_scale, shift = self.log_scale_and_shift(y)  # b * y = b * x: the conditioner sees the same input
        return (y - shift) * (-log_scale).exp()

    def log_abs_det_jacobian(self, x: torch.Tensor) -> torch.Tensor:
        """log |det dy/dx| at x, shape ``[...]``."""
        return self.log_scale_and_shift(x)[0].sum(-1)


class AffineCouplingTransform(Transform):
    """A ``torch.distributions`` bijection on R^dim applying an :class:`AffineCoupling` (so that a
    flow is a ``TransformedDistribution``, with ``log_prob`` by the change of variables)."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, layer: AffineCoupling) -> None:
        super().__init__(cache_size=0)
        self.layer = layer

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self.layer.inverse(y)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.layer.log_abs_det_jacobian(x)
