"""Wall-clock times of the training epochs, for benchmarks: written only when asked for.

Set ``VAE_LAB_TIMING_FILE=<path>`` and a run appends one JSON line per event to that file:
``{"event": "first_step", "time": <unix time>}`` when the first training step starts, and
``{"event": "epoch", "epoch": e, "seconds": s, "cpu_seconds": c, "images": n}`` per training epoch, where ``s`` runs
from the start of the epoch (its shuffle included) to the end of its last step (validation,
checkpoints and start-up excluded), ``c`` is the CPU time this process spent in it (less
sensitive than wall time to other jobs on the machine) and ``n`` counts the images of all ranks. Nothing is measured
or logged otherwise, so the metrics of a run never depend on timing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

TIMING_FILE_VARIABLE = "VAE_LAB_TIMING_FILE"


def epoch_timer_from_environment() -> EpochTimer | None:
    """An :class:`EpochTimer` writing to ``$VAE_LAB_TIMING_FILE`` when it is set, else None."""
    path = os.environ.get(TIMING_FILE_VARIABLE)
    return EpochTimer(Path(path)) if path else None


class EpochTimer(Callback):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.started: float | None = None
        self.ended = 0.0
        self.cpu_started = self.cpu_ended = 0.0
        self.images = 0
        self.first_step_written = False

    def write(self, trainer: L.Trainer, event: dict[str, Any]) -> None:
        if trainer.is_global_zero:
            with self.path.open("a") as file:
                file.write(json.dumps(event) + "\n")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started, self.cpu_started, self.images = time.perf_counter(), time.process_time(), 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self.first_step_written:
            self.first_step_written = True
            self.write(trainer, {"event": "first_step", "time": time.time()})

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.ended, self.cpu_ended = time.perf_counter(), time.process_time()
        self.images += len(batch) * trainer.world_size

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.started is not None:
            self.write(
                trainer,
                {
                    "event": "epoch",
                    "epoch": trainer.current_epoch,
                    "seconds": self.ended - self.started,
                    "cpu_seconds": self.cpu_ended - self.cpu_started,
                    "images": self.images,
                },
            )
