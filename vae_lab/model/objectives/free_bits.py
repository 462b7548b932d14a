"""Free bits (Kingma et al. 2016, "Improved Variational Inference with Inverse Autoregressive
Flow", eq. 15)."""

from __future__ import annotations

import torch


def free_bits_kl(kl_per_dim: torch.Tensor, free_bits: float) -> torch.Tensor:
    """sum_j max(lambda, mean_batch KL_j): the KL term of the free-bits objective, a scalar.

    ``kl_per_dim`` is [B, latent_dim]. A latent dimension whose batch-mean KL is below ``free_bits``
    (lambda, nats) costs lambda and gets no gradient pushing its KL further down, so the model can
    use up to lambda nats in each dimension for free.
    """
    return kl_per_dim.mean(0).clamp(min=free_bits).sum()
