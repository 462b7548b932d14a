"""The seed of each epoch's random stream: a function of (run seed, epoch, rank) only, so that a run
resumed at an epoch boundary draws exactly what the uninterrupted run drew, and DDP ranks draw
different numbers; and the seeds of the stages after training (validation, test, images of the best
checkpoint), a function of (run seed, stage, rank) only, for the same reason."""

from __future__ import annotations

import hashlib


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of ``epoch`` on ``rank`` for a run seeded with ``seed`` (a non-negative 63-bit int)."""
    return ((seed * 1_000_003 + epoch) * 1_009 + rank) % (2**63)


def stage_seed(seed: int, stage: str, rank: int = 0) -> int:
    """The seed of a stage that runs after training (``"validate"``, ``"test"``, ``"images"``): a
    function of (run seed, stage name, rank) only, unlike the global random state training leaves
    behind, so that a run resumed after its last checkpoint computes these stages as the
    uninterrupted run did. A hash of the three, so that
    the stages and the epochs draw unrelated streams."""
    digest = hashlib.sha256(f"vae_lab/{seed}/{stage}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**63)


def seed_stage(seed: int, stage: str, rank: int = 0) -> None:
    """Seed the global random streams (CPU and every GPU) for ``stage`` (see :func:`stage_seed`): the
    stages draw through Lightning and torch.distributions, which take no generator."""
    import torch

    torch.manual_seed(stage_seed(seed, stage, rank))
