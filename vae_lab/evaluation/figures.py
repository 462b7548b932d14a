"""Matplotlib figures written as PNG files, atomically (the run's heatmap and the report's plots)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vae_lab.files import write_atomically

DPI = 100


def pyplot() -> Any:
    """matplotlib.pyplot with the non-interactive Agg backend (no display is needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save(figure: Any, path: Path) -> Path:
    """Write ``figure`` to ``path`` as a PNG (whole or not at all) and close it."""
    write_atomically(path, lambda file: figure.savefig(file, format="png", dpi=DPI, bbox_inches="tight"))
    pyplot().close(figure)
    return path
