"""Posterior collapse over training: the KL of each latent dimension against the epoch.

The values are the ``val/kl_per_dim/NN`` columns a run writes into its ``metrics.csv`` after each
validation (the KL of each dimension, averaged over the validation images); the heatmap shows when
each dimension opens (KL > 0: the code carries information) or collapses to the prior (KL ~ 0).
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any

from vae_lab.evaluation.figures import pyplot, save

HEATMAP_FILE = "kl_per_dim_heatmap.png"
COLUMN = re.compile(r"^val/kl_per_dim/(\d+)$")


def kl_history(metrics_csv: Path) -> tuple[list[int], list[list[float]]]:
    """(epochs trained, KL of each latent dimension after each of them) from a run's metrics.csv; the
    validation that re-evaluates the best checkpoint after training (the row that shares its epoch
    and step with the test metrics) is left out. ([], []) when the file has no such columns."""
    if not metrics_csv.is_file():
        return [], []
    with metrics_csv.open(newline="") as file:
        rows = list(csv.DictReader(file))
    if not rows:
        return [], []
    columns = sorted((int(m.group(1)), name) for name in rows[0] if (m := COLUMN.match(name)))
    if not columns:
        return [], []
    after_fit = {(row["epoch"], row["step"]) for row in rows if any(row[k] for k in row if k.startswith("test/"))}
    epochs, values = [], []
    for row in rows:
        if (row["epoch"], row["step"]) in after_fit or not all(row[name] for _, name in columns):
            continue
        vector = [float(row[name]) for _, name in columns]
        if all(math.isfinite(v) for v in vector):
            epochs.append(int(row["epoch"]) + 1)
            values.append(vector)
    return epochs, values


def draw_heatmap(panel: Any, epochs: list[int], values: list[list[float]], title: str) -> Any:
    """Draw the heatmap on a matplotlib axis: x the epoch, y the latent dimension (in index order),
    colour the KL in nats; returns the image (for a colour bar)."""
    import numpy as np

    matrix = np.asarray(values, dtype=float).T  # [dims, epochs]
    image = panel.imshow(
        matrix,
        aspect="auto",
        origin="lower",
        cmap="viridis",
        interpolation="nearest",
        extent=(epochs[0] - 0.5, epochs[-1] + 0.5, -0.5, matrix.shape[0] - 0.5),
    )
    from matplotlib.ticker import MaxNLocator

    panel.xaxis.set_major_locator(MaxNLocator(integer=True))
    panel.set_xlabel("epoch")
    panel.set_ylabel("latent dimension")
    panel.set_title(title, fontsize=9)
    return image


def save_heatmap(run_dir: Path, wandb_logger: Any = None, loggers: Any = ()) -> Path | None:
    """Write ``<run dir>/images/kl_per_dim_heatmap.png`` from the run's metrics.csv (None when it has
    no KL per dimension, e.g. a prior that does not factorize) and log it to wandb, when given. The
    file loggers among ``loggers`` are flushed first, so that the CSV holds every epoch."""
    for logger in loggers:
        if not hasattr(logger, "run_safely"):  # the CSV logger (wandb's own logger is not a file)
            logger.save()
    epochs, values = kl_history(Path(run_dir) / "metrics.csv")
    if not epochs:
        return None
    plt = pyplot()
    figure, panel = plt.subplots(figsize=(max(4.0, min(12.0, 1.5 + 0.25 * len(epochs))), 4.5))
    image = draw_heatmap(panel, epochs, values, "KL of each latent dimension (val) after each epoch")
    figure.colorbar(image, ax=panel, label="KL(q(z_j|x) || p(z_j)) (nats)")
    path = save(figure, Path(run_dir) / "images" / HEATMAP_FILE)
    if wandb_logger is not None:
        wandb_logger.log_image(
            key="kl_per_dim_heatmap", images=[str(path)], caption=["KL per latent dimension x epoch"]
        )
    return path
