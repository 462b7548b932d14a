"""Minibatches drawn from a tensor held in memory: a few tensor ops per batch, no per-sample work."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

#: Turns a uint8 batch into the served form, drawing randomness from the generator.
BatchTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def epoch_generator(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    """The random stream of one epoch on one rank: a function of (seed, epoch, rank) only, so that
    a run resumed at an epoch boundary draws exactly what the uninterrupted run drew."""
    generator = torch.Generator()
    generator.manual_seed(((seed * 1_000_003 + epoch) * 1_009 + rank) % (2**63))
    return generator


class InMemoryBatches:
    """An iterable of minibatches over ``images`` (first dimension = data points).

    With ``shuffle`` the order is a fresh permutation each epoch (``epoch()`` tells which epoch it
    is); ``transform`` (for example dynamic binarization) is applied per batch. Under distributed
    training each rank iterates its own disjoint shard: the permutation is cut to a multiple of
    ``world_size`` and rank r takes every world_size-th index from r, so all ranks run the same
    number of steps.
    """

    def __init__(
        self,
        images: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        transform: BatchTransform | None = None,
        epoch: Callable[[], int] = lambda: 0,
        rank: Callable[[], int] = lambda: 0,
        world_size: Callable[[], int] = lambda: 1,
        drop_last: bool = False,
    ) -> None:
        self.images = images
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.transform = transform
        self.epoch = epoch
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last

    def shard_indices(self) -> torch.Tensor:
        """The indices this rank serves this epoch, in order."""
        n = self.images.shape[0]
        generator = epoch_generator(self.seed, self.epoch())
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        world_size = self.world_size()
        if world_size > 1:
            order = order[: n - n % world_size][self.rank() :: world_size]
        return order

    def __len__(self) -> int:
        n = self.images.shape[0] // self.world_size() if self.world_size() > 1 else self.images.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        indices = self.shard_indices()
        generator = epoch_generator(self.seed + 1, self.epoch(), self.rank())
        for start in range(0, len(indices) - (self.batch_size - 1 if self.drop_last else 0), self.batch_size):
            batch = self.images[indices[start : start + self.batch_size]]
            yield self.transform(batch, generator) if self.transform is not None else batch
