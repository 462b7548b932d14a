"""Learning-rate schedules used by the reproduced papers."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR


def stage_of_epoch(epoch: int, stage_base: int = 3) -> int:
    """The stage i that an epoch falls in when stage i lasts stage_base**i epochs."""
    stage, stage_end = 0, 1
    while epoch >= stage_end:
        stage += 1
        stage_end += stage_base**stage
    return stage


def staged_schedule_epochs(n_stages: int, stage_base: int = 3) -> int:
    """Total epochs of a staged schedule: sum_{i < n_stages} stage_base**i (3280 for Burda et al.)."""
    return sum(stage_base**stage for stage in range(n_stages))


class StagedDecayLR(LambdaLR):
    """lr = lr_0 * decay**i for the stage_base**i epochs of stage i, i = 0 .. n_stages - 1.

    Burda et al. (2016, section 5.1): "3^i passes over the data with learning rate 0.001 * 10^(-i/7),
    for i = 0 ... 7", 3280 epochs in all. Steps once per epoch.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, stage_base: int = 3, decay: float = 10 ** (-1 / 7)) -> None:
        super().__init__(optimizer, lambda epoch: decay ** stage_of_epoch(epoch, stage_base))
