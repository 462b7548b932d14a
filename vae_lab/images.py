"""PNG grids of reconstructions and prior samples."""

from __future__ import annotations

from pathlib import Path

import torch

from vae_lab.files import write_atomically


def save_grid(images: torch.Tensor, path: Path, columns: int) -> None:
    """Save images ``[N, C, H, W]`` on the [0, 1] scale as one PNG grid, atomically."""
    from torchvision.utils import make_grid, save_image

    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow=columns, padding=2, pad_value=1.0)
    write_atomically(path, lambda file: save_image(grid, file, format="png"))


def reconstruction_grid(originals: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Rows alternate: originals, then their reconstructions below them."""
    rows = []
    columns = 8
    for start in range(0, originals.shape[0], columns):
        rows += [originals[start : start + columns], reconstructions[start : start + columns]]
    return torch.cat(rows)
