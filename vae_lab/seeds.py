"""The seed of each epoch's random stream: a function of (run seed, epoch, rank) only, so that a run
resumed at an epoch boundary draws exactly what the uninterrupted run drew, and DDP ranks draw
different numbers."""

from __future__ import annotations


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of ``epoch`` on ``rank`` for a run seeded with ``seed`` (a non-negative 63-bit int)."""
    return ((seed * 1_000_003 + epoch) * 1_009 + rank) % (2**63)
