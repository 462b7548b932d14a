"""The learning rate of each epoch, logged as ``train/lr`` (``train/lr/<group>`` for an optimizer
with several parameter groups) in the epoch's row of metrics.csv and wandb.

Lightning's ``LearningRateMonitor`` logs it as rows of its own (``lr-Adam`` with a step and no
epoch), which a resumed run cannot tell apart from the interrupted epochs' rows; logged through
``LightningModule.log`` at the start of each epoch, the value lands in the same row as the epoch's
``train/*`` means, so resuming keeps it (vae_lab.run.resume) and dashboards plot it on the epoch axis
(the IWAE experiments decay it in stages).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class LearningRateLogger(Callback):
    """``train/lr``: the learning rate each training epoch runs with (after the epoch scheduler's step)."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for optimizer in trainer.optimizers:
            groups: list[dict[str, Any]] = optimizer.param_groups
            for index, group in enumerate(groups):
                name = "train/lr" if len(groups) == 1 else f"train/lr/{index}"
                pl_module.log(name, float(group["lr"]), on_step=False, on_epoch=True, sync_dist=False)
