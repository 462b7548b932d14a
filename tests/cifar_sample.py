"""The real CIFAR-10 images of ``shared/data/cifar10-sample`` written in the official
``cifar-10-batches-py/`` pickle format, so that the CIFAR path runs on real images in tests.

The sample holds the first 4,000 training images of the official release (4 PNGs, 1000 images
each, see its README). Here images 0..2999 become the five training batches (600 each) and images
3000..3999 the test batch. The sample has no labels: every label is 0. The md5 sums of the official
files (which torchvision checks) cannot match; vae_lab reads the batches itself, with
``data.verify=false`` (which skips the official md5s and counts, not the format checks).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

N_TRAIN, N_TEST = 3000, 1000
LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def read_sample(sample_dir: Path) -> np.ndarray:
    """All sample images, uint8 [N, 32, 32, 3] (N, H, W, C) in the official order."""
    files = sorted(sample_dir.glob("cifar10_batch_*.png"), key=lambda path: int(path.stem.rsplit("_", 1)[1]))
    return np.concatenate([np.asarray(Image.open(path).convert("RGB")).reshape(-1, 32, 32, 3) for path in files])


def to_rows(images: np.ndarray) -> np.ndarray:
    """[N, 32, 32, 3] to the official rows [N, 3072]: the red plane, then green, then blue, each row-major."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(images.shape[0], 3072))


def write_batch(path: Path, images: np.ndarray, first_index: int, batch_label: str) -> None:
    batch = {
        b"batch_label": batch_label.encode(),
        b"labels": [0] * images.shape[0],
        b"data": to_rows(images),
        b"filenames": [f"sample_{first_index + i:05d}.png".encode() for i in range(images.shape[0])],
    }
    with path.open("wb") as handle:
        pickle.dump(batch, handle, protocol=2)


def write_cifar_batches(sample_dir: Path, root: Path) -> Path:
    """Write ``root/cifar-10-batches-py/`` from the sample PNGs; returns that folder."""
    images = read_sample(sample_dir)
    assert images.shape[0] >= N_TRAIN + N_TEST, images.shape
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    per_batch = N_TRAIN // 5
    for number in range(5):
        start = number * per_batch
        write_batch(
            folder / f"data_batch_{number + 1}",
            images[start : start + per_batch],
            start,
            f"training batch {number + 1} of 5",
        )
    write_batch(folder / "test_batch", images[N_TRAIN : N_TRAIN + N_TEST], N_TRAIN, "testing batch 1 of 1")
    meta = {
        b"num_cases_per_batch": per_batch,
        b"label_names": [name.encode() for name in LABEL_NAMES],
        b"num_vis": 3072,
    }
    with (folder / "batches.meta").open("wb") as handle:
        pickle.dump(meta, handle, protocol=2)
    return folder
