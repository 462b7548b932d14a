"""A record of the training data each DDP rank was served, to check that the ranks' shards are disjoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L


class ShardRecorder(L.Callback):
    """Writes, per rank, the training indices each epoch served and how many images and batches
    were trained on, to ``<run dir>/shards/rank-<global rank>.json`` at the end of training.

    The indices come from the loader's own ``shard_indices()`` at the start of each epoch, under
    the rank and world size Lightning gave this process: what this process really drew.
    Enabled by ``VAE_LAB_RECORD_SHARDS=1`` (vae_lab.run.distributed.debug_callbacks).
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.epochs: dict[int, dict[str, Any]] = {}

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        loader = trainer.train_dataloader
        indices = loader.shard_indices().tolist() if hasattr(loader, "shard_indices") else None
        self.epochs[trainer.current_epoch] = {"indices": indices, "images_trained": 0, "batches_trained": 0}

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        epoch = self.epochs[trainer.current_epoch]
        epoch["images_trained"] += int(batch.shape[0])
        epoch["batches_trained"] += 1

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        path = self.run_dir / "shards" / f"rank-{trainer.global_rank}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"global_rank": trainer.global_rank, "world_size": trainer.world_size, "epochs": self.epochs}
        path.write_text(json.dumps(record))
