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


def save_labelled_grid(images: torch.Tensor, path: Path, columns: int, row_labels: list[str], scale: int = 2) -> None:
    """Save images ``[rows * columns, C, H, W]`` on the [0, 1] scale as one PNG grid, each row
    labelled on its left (for latent traversals and interpolations), enlarged ``scale`` times."""
    from PIL import Image, ImageDraw, ImageFont
    from torchvision.utils import make_grid

    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow=columns, padding=2, pad_value=1.0)
    pixels = (grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    picture = Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).convert("RGB")
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1 has only the small bitmap font
        font = ImageFont.load_default()
    margin = 8 + max((int(font.getlength(label)) for label in row_labels), default=0)
    labelled = Image.new("RGB", (picture.width + margin, picture.height), "white")
    labelled.paste(picture, (margin, 0))
    draw = ImageDraw.Draw(labelled)
    row_height = picture.height / max(len(row_labels), 1)
    for row, label in enumerate(row_labels):
        draw.text((4, (row + 0.5) * row_height), label, fill="black", font=font, anchor="lm")
    write_atomically(path, lambda file: labelled.save(file, format="png"))
