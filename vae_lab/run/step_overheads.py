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
    here, 5-10% of a small model's step. This one redraws at most every ``interval`` seconds and
    at the first and last batch, so the bar looks the same and costs one clock read per step."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(refresh_rate=1)
        self.interval = interval
        self.last_redraw = 0.0

    def _should_update(self, current: int, total: int | float) -> bool:
        if not self.is_enabled:
            return False
        now = time.monotonic()
        if current == total or current == 1 or now - self.last_redraw >= self.interval:
            self.last_redraw = now
            return True
        return False


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
