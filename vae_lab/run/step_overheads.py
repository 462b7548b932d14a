"""Callbacks that remove per-step costs Lightning adds around a small model's training step."""

from __future__ import annotations

import os
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

NVML_CHECK_VARIABLE = "PYTORCH_NVML_BASED_CUDA_CHECK"


class CudaCheckWithoutNVML(Callback):
    """Importing Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` for the whole process, so that
    checking for a GPU does not initialise CUDA before a fork. But ``torch.optim.Adam.step`` asks
    ``torch.cuda.is_available()`` on every step, and with that variable each call loads and
    initialises NVML: 0.26 ms of a 6.6 ms training step of the default model on this CPU machine
    (4%, benchmarks/step_costs.py, switched on and off every 20 steps within one fit; more on a GPU host).
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

        callbacks.append(training_progress_bar())  # Lightning's bar on a terminal, a line per epoch elsewhere
    return callbacks
