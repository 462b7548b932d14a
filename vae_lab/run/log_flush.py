"""Flush the loggers whenever a checkpoint is saved, so that a killed run's metrics.csv holds every
row up to its last checkpoint (Lightning's CSV logger otherwise writes every 100 steps)."""

from __future__ import annotations

from typing import Any

import lightning as L


class FlushLogsAtCheckpoint(L.Callback):
    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        for logger in trainer.loggers:
            logger.save()
