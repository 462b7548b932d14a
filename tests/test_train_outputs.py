"""What one run of ``python -m vae_lab.train`` leaves in its output directory, and that the same
seed gives the same numbers (the real CLI in a subprocess, on real MNIST)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, logged_metrics, run_cli
from PIL import Image

from vae_lab.data import MNISTDataModule

METRIC_NAMES = ("elbo", "reconstruction", "kl", "bpd")
#: 784-200-200-50 encoder (mean and log-variance heads) and 50-200-200-784 decoder.
MLP_PARAMETERS = (
    (784 * 200 + 200)
    + (200 * 200 + 200)
    + 2 * (200 * 50 + 50)
    + (50 * 200 + 200)
    + (200 * 200 + 200)
    + (200 * 784 + 784)
)
GRID_SIDE = 8 * (28 + 2) + 2  # 8 columns and 8 rows of 28x28 images with 2-pixel padding


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_checkpoints(tiny_default_run) -> None:
    run_dir, _ = tiny_default_run
    for name in ("last.ckpt", "best.ckpt"):
        checkpoint = torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=False)
        assert checkpoint["epoch"] == 0 and checkpoint["global_step"] == 10  # 500 images / batch 50
        assert "encoder.mean.weight" in checkpoint["state_dict"]
    assert read_summary(run_dir)["best_checkpoint"] == "checkpoints/best.ckpt"


def test_summary(tiny_default_run) -> None:
    run_dir, _ = tiny_default_run
    summary = read_summary(run_dir)
    assert summary["status"] == "complete"
    assert summary["config"]["data"]["train_subset"] == 500 and summary["config"]["seed"] == 0
    assert summary["config"]["optimizer"]["lr"] == 1e-3 and summary["config"]["data"]["batch_size"] == 50
    assert summary["choices"]["likelihood"] == "bernoulli" and summary["choices"]["model"] == "mlp"
    assert summary["choices"]["data"] == "mnist" and summary["choices"]["logger"] == "wandb"
    assert summary["seed"] == 0
    assert summary["n_parameters"] == MLP_PARAMETERS
    assert summary["epochs"] == 1
    assert summary["wall_time_seconds"] > 0
    metrics = summary["metrics"]
    for stage in ("val", "test"):
        for name in METRIC_NAMES:
            assert math.isfinite(metrics[f"{stage}/{name}"])
        elbo = metrics[f"{stage}/elbo"]
        assert elbo == pytest.approx(metrics[f"{stage}/reconstruction"] - metrics[f"{stage}/kl"], rel=1e-6, abs=1e-4)
        assert metrics[f"{stage}/bpd"] == pytest.approx(-elbo / (784 * math.log(2)), rel=1e-6)  # a mass: no +8
        assert metrics[f"{stage}/kl"] > 0
        # One epoch on 500 images: far from trained, far better than Bernoulli(1/2) (543 nats).
        assert -543 < elbo < -100


def test_metrics_csv(tiny_default_run) -> None:
    run_dir, _ = tiny_default_run
    with (run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    columns = set(rows[0])
    for stage in ("train", "val", "test"):
        assert {f"{stage}/{name}" for name in METRIC_NAMES} <= columns
    # The last logged val/* and test/* (from the best checkpoint) are the summary's numbers.
    metrics = read_summary(run_dir)["metrics"]
    assert len(metrics["test/kl_per_dim"]) == 50 and "test/nll_is" in metrics
    for key, value in logged_metrics(metrics).items():
        logged = [float(row[key]) for row in rows if row.get(key)]
        assert logged[-1] == pytest.approx(value, rel=1e-6), key
    train_rows = [row for row in rows if row.get("train/elbo")]
    assert len(train_rows) == 1
    assert float(train_rows[0]["train/bpd"]) == pytest.approx(-float(train_rows[0]["train/elbo"]) / (784 * math.log(2)))


def test_image_grids(tiny_default_run, data_root: Path) -> None:
    run_dir, _ = tiny_default_run
    for name in ("reconstructions", "samples"):
        with Image.open(run_dir / "images" / f"{name}.png") as image:
            assert image.format == "PNG"
            assert image.size == (GRID_SIDE, GRID_SIDE)
            pixels = np.asarray(image.convert("L"))
        assert pixels.std() > 10  # not a blank image
        if name == "reconstructions":
            # The first row holds the first 8 test images with their fixed bits, as 0 or 255.
            datamodule = MNISTDataModule(root=str(data_root), data_form="binary", val_size=500)
            datamodule.setup()
            for column in range(8):
                left = 2 + column * 30
                expected = datamodule.splits["test"][column, 0].numpy() * 255
                assert np.array_equal(pixels[2:30, left : left + 28], expected.astype(np.uint8))


def test_same_seed_same_metrics_and_another_seed_differs(tiny_default_run, tmp_path: Path) -> None:
    """Run again with the same seed (and the CSV logger instead of wandb, which must not change any
    number), and once with another seed."""
    run_dir, _ = tiny_default_run
    reference = read_summary(run_dir)["metrics"]
    outcomes = {}
    for seed in (0, 1):
        again = tmp_path / f"seed{seed}"
        result = run_cli("vae_lab.train", *TINY, f"seed={seed}", f"hydra.run.dir={again}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        outcomes[seed] = read_summary(again)["metrics"]
    assert outcomes[0] == reference
    assert outcomes[1].keys() == reference.keys()
    for key in reference:
        assert outcomes[1][key] != reference[key], key
