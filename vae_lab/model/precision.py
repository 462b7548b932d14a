"""Numerical precision of the ELBO's terms."""

from __future__ import annotations

import torch


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32 when it is in a half-precision type (under ``trainer.precision=bf16-mixed``
    or ``16-mixed``), unchanged otherwise (float32 stays, float64 is never downcast): log-probabilities
    are sums over hundreds of pixels or latent dimensions, which half precision cannot hold."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor
