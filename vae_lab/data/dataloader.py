"""The torchvision DataLoader path (``data.loader=torchvision``), for data that does not fit in memory.

A ``torch.utils.data.DataLoader`` over a map-style data set of uint8 images (torchvision's
``MNIST`` with ``PILToTensor``, or :class:`UInt8Images` over CIFAR-10's arrays), with ``num_workers``
worker processes. Its sampler draws exactly the order of the in-memory path
(:func:`vae_lab.data.batches.shard_indices`), and each collated uint8 batch goes through the same
per-batch step (:func:`vae_lab.data.batches.serve`) with the same generator: both paths serve the
same images in the same order with the same Bernoulli bits or dequantization noise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sized

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vae_lab.data.batches import BatchTransform, serve, shard_indices


class UInt8Images(Dataset):
    """A map-style data set over a uint8 tensor ``[N, C, H, W]``: item i is image i."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


class EpochShardSampler(Sampler[int]):
    """Yields :func:`shard_indices` of the current epoch and rank: the in-memory path's order."""

    def __init__(
        self,
        n: int,
        shuffle: bool,
        seed: int,
        epoch: Callable[[], int],
        rank: Callable[[], int],
        world_size: Callable[[], int],
    ) -> None:
        self.n = n
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = epoch
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        return self.n // self.world_size()

    def __iter__(self) -> Iterator[int]:
        indices = shard_indices(self.n, self.shuffle, self.seed, self.epoch(), self.rank(), self.world_size())
        return iter(indices.tolist())


class DataLoaderBatches:
    """Minibatches from a DataLoader, moved to ``device()`` and transformed per batch there.

    Not itself a DataLoader, so that Lightning does not replace the sampler under DDP (the
    sampler already shards by rank). Items of the data set are uint8 images ``[C, H, W]`` or
    ``(image, label)`` pairs (torchvision's data sets); labels are dropped.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool,
        seed: int,
        transform: BatchTransform | None,
        epoch: Callable[[], int],
        rank: Callable[[], int],
        world_size: Callable[[], int],
        device: Callable[[], torch.device],
        num_workers: int = 0,
        drop_last: bool = True,
    ) -> None:
        assert isinstance(dataset, Sized)
        self.seed = seed
        self.transform = transform
        self.epoch = epoch
        self.rank = rank
        self.device = device
        self.sampler = EpochShardSampler(len(dataset), shuffle, seed, epoch, rank, world_size)
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            drop_last=drop_last,
            pin_memory=device().type == "cuda",
            persistent_workers=num_workers > 0,
        )

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[torch.Tensor]:
        # A generator: the epoch is read at the first batch (see InMemoryBatches.__iter__).
        images = (batch[0] if isinstance(batch, (list, tuple)) else batch for batch in self.loader)
        yield from serve(images, self.transform, self.seed, self.epoch(), self.rank(), self.device())
