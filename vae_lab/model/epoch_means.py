"""Means over a training epoch, accumulated on the device without a per-step ``self.log``."""

from __future__ import annotations

import torch


class EpochMeans:
    """Running sums of per-image values (nats per image, and so on) over one epoch.

    Lightning's ``self.log`` costs around a millisecond of Python per call, even with
    ``on_step=False`` (it re-inspects the training step's signature and moves and copies its metric
    state on every call): five calls per step cost 1.44 ms of the default model's 7.1 ms step on the
    CPU (20%; benchmarks/step_costs.py, switched on and off every 20 steps within one fit). Here a
    step adds its batch sums into one tensor on the device (no host sync), and the epoch's means are
    logged once, at the end of the epoch.
    """

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None
        self.names: list[str] = []
        self.count = 0

    def reset(self) -> None:
        self.sums, self.count = None, 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        """Add one batch: each value has one entry per image, shape [B]."""
        batch_sums = torch.stack([value.detach() for value in values.values()]).sum(dim=1)
        self.sums = batch_sums if self.sums is None else self.sums + batch_sums
        self.names = list(values)
        self.count += next(iter(values.values())).shape[0]

    def means(self) -> dict[str, torch.Tensor]:
        """Each value's mean over the images added since the last reset (empty before any)."""
        if self.sums is None:
            return {}
        return dict(zip(self.names, self.sums / self.count, strict=True))
