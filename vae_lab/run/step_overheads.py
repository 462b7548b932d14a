"""Callbacks that remove per-step costs Lightning adds around a small model's training step."""

from __future__ import annotations

import os
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from omegaconf import DictConfig

NVML_CHECK_VARIABLE = "PYTORCH_NVML_BASED_CUDA_CHECK"


class ThrottledProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar redraws after every batch (``refresh_rate=1``): about 1 ms per step
    here, 5-10% of a small model's step. This one sets Lightning's public ``refresh_rate`` (the
    bars redraw every ``refresh_rate`` batches and at the last) to the number of training batches
    that take about ``interval`` seconds, measured at each redraw of the training bar: the bar
    looks the same and costs one clock read per redraw."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(refresh_rate=1)
        self.interval = interval
        self.batches_per_redraw = 1
        #: (clock, batch) at the training bar's last redraw in this epoch.
        self.last_redraw: tuple[float, int] | None = None

    @property
    def refresh_rate(self) -> int:
        return self.batches_per_redraw

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self.last_redraw = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        batch = batch_idx + 1
        if batch % self.batches_per_redraw:
            return
        now = time.monotonic()
        if self.last_redraw is not None and batch > self.last_redraw[1]:
            seconds_per_batch = max(now - self.last_redraw[0], 1e-9) / (batch - self.last_redraw[1])
            self.batches_per_redraw = max(1, int(self.interval / seconds_per_batch))
        self.last_redraw = (now, batch)


class CudaCheckWithoutNVML(Callback):
    """Importing Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` for the whole process, so that
    checking for a GPU does not initialise CUDA before a fork. But ``torch.optim.Adam.step`` asks
    ``torch.cuda.is_available()`` on every step, and with that variable each call loads and
    initialises NVML (~0.1 ms on this CPU machine, 0.1-0.25 ms per Adam step; more on a GPU host).
    Once training is set up on its device (after any launcher has forked or spawned this process)
    the check is no longer needed: the variable is removed for the fit and restored after."""

    def __init__(self) -> None:
        self.saved: str | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.saved = os.environ.pop(NVML_CHECK_VARIABLE, None)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.saved is not None:
            os.environ[NVML_CHECK_VARIABLE] = self.saved


def step_overhead_callbacks(trainer_config: DictConfig | dict[str, Any]) -> list[Callback]:
    """The callbacks above that apply to a trainer with this config."""
    callbacks: list[Callback] = [CudaCheckWithoutNVML()]
    if trainer_config.get("enable_progress_bar", True):  # Lightning refuses a bar it was told not to show
        from vae_lab.tracking.console import training_progress_bar

        callbacks.append(training_progress_bar())  # this bar on a terminal, a line per epoch elsewhere
    return callbacks
