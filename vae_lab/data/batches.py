"""Minibatches drawn from a tensor held in memory: a few tensor ops per batch, no per-sample work.

The images live on the training device (GPU memory when training on a GPU): indexing, the
per-batch binarization or dequantization and the float conversion all run there, so a batch
never crosses the PCIe bus and no worker process is involved.

Randomness, chosen to be deterministic and fast on every device:

- the order of an epoch is ``torch.randperm`` on the CPU from :func:`epoch_generator` (a few
  hundred microseconds per epoch for 50,000 images), then moved to the device once. It is
  therefore the same permutation on every device, and the torchvision DataLoader path
  (:mod:`vae_lab.data.dataloader`) reproduces it exactly with :func:`shard_indices`;
- the per-batch draws (Bernoulli bits, dequantization noise) come from a generator on the
  images' device, seeded the same way. On the CPU they are bit-identical across runs and between
  the two loader paths; on a GPU they are reproducible on that device type (a different stream
  from the CPU's, with the same statistics).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch

from vae_lab.seeds import epoch_seed

#: Turns a uint8 batch into the served form, drawing randomness from the generator.
BatchTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def epoch_generator(seed: int, epoch: int, rank: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """The random stream of one epoch on one rank: a function of (seed, epoch, rank) only, so that
    a run resumed at an epoch boundary draws exactly what the uninterrupted run drew."""
    generator = torch.Generator(device=device)
    generator.manual_seed(epoch_seed(seed, epoch, rank))
    return generator


def shard_indices(n: int, shuffle: bool, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """The indices (on the CPU) that ``rank`` serves in ``epoch``, in order.

    With ``shuffle`` the order is a fresh permutation each epoch. Under distributed training each
    rank takes its own disjoint shard of that permutation: it is cut to a multiple of
    ``world_size`` and rank r takes every world_size-th index from r (the scheme of
    ``torch.utils.data.DistributedSampler`` with ``drop_last=True``), so all ranks run the same
    number of steps and together see each image at most once per epoch.
    """
    order = torch.randperm(n, generator=epoch_generator(seed, epoch)) if shuffle else torch.arange(n)
    if world_size > 1:
        order = order[: n - n % world_size][rank::world_size]
    return order


def batch_starts(n: int, batch_size: int, drop_last: bool) -> range:
    """The start of each batch among n indices (the last partial batch dropped with ``drop_last``)."""
    return range(0, n - (batch_size - 1 if drop_last else 0), batch_size)


def serve(
    batches: Iterable[torch.Tensor],
    transform: BatchTransform | None,
    seed: int,
    epoch: int,
    rank: int,
    device: torch.device,
) -> Iterator[torch.Tensor]:
    """Move each uint8 batch to ``device`` (a no-op when it is there) and turn it into the served
    form with the epoch's generator on that device: the per-batch step both loader paths share."""
    generator = epoch_generator(seed + 1, epoch, rank, device=device)
    for batch in batches:
        batch = batch.to(device, non_blocking=True)
        yield transform(batch, generator) if transform is not None else batch


class InMemoryBatches:
    """An iterable of minibatches over ``images`` (first dimension = data points), on their device.

    ``epoch()``, ``rank()`` and ``world_size()`` are read when an epoch starts (the trainer's
    current values); see :func:`shard_indices` for the order and the DDP shards, and the module
    docstring for where the randomness comes from. ``transform`` (for example dynamic
    binarization) is applied per batch.
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
        """The indices this rank serves this epoch, in order (on the CPU)."""
        return shard_indices(
            self.images.shape[0], self.shuffle, self.seed, self.epoch(), self.rank(), self.world_size()
        )

    def __len__(self) -> int:
        n = self.images.shape[0] // self.world_size() if self.world_size() > 1 else self.images.shape[0]
        return len(batch_starts(n, self.batch_size, self.drop_last))

    def __iter__(self) -> Iterator[torch.Tensor]:
        # A generator, so the epoch is read at the first batch, not when the iterator is made:
        # Lightning makes a resumed run's first iterator before it counts the checkpoint's epoch as
        # complete, and an epoch read then would replay the previous epoch's order.
        indices = self.shard_indices().to(self.images.device)
        batches = (
            self.images[indices[start : start + self.batch_size]]
            for start in batch_starts(len(indices), self.batch_size, self.drop_last)
        )
        yield from serve(batches, self.transform, self.seed, self.epoch(), self.rank(), self.images.device)
