"""The gradient signal-to-noise diagnostic (Rainforth et al. 2018, "Tighter Variational Bounds are Not
Necessarily Better", section 3): how much signal one gradient estimate of the training loss carries.

At chosen epochs, ``n_estimates`` independent gradient estimates of the training loss (the objective and
gradient estimator of the run, through ``VAE.training_step``) on one fixed training batch give, for every
parameter, SNR = |mean| / standard deviation over the estimates. The encoder's and the decoder's SNRs
are averaged over their parameters (mean and median), logged (``gradient_snr/encoder``,
``gradient_snr/decoder``: metrics.csv and wandb) and saved to ``<run dir>/gradient_snr.json``.

Rainforth et al. show that the IWAE's encoder SNR falls like 1/sqrt(k) as k grows while the decoder's
rises; DReG (Tucker et al. 2019) restores the encoder's. The measurement leaves training as it was: it
runs on its own random stream (``torch.random.fork_rng``, seeded with the run's seed), and the model's
buffers and the objective's state (the score-function baseline) are restored after it.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from vae_lab.files import write_json_atomically
from vae_lab.ranges import at_least, checked, each

FILE_NAME = "gradient_snr.json"
#: Gradient estimates per measurement: a standard deviation needs two.
Estimates = Annotated[int, at_least(2, "a spread")]


@dataclass
class GradientSNRSettings:
    """``gradient_snr`` in conf/config.yaml."""

    #: Numbers of completed training epochs after which to measure (0: at initialization); empty: off.
    epochs: Annotated[list[int], each(at_least(0), non_empty=False)] = field(default_factory=list)
    #: Gradient estimates per measurement.
    n_estimates: Estimates = 100


def snr_summary(total: torch.Tensor, squares: torch.Tensor, n: int) -> dict[str, float]:
    """The per-parameter SNR |mean| / std from the sum and sum of squares of n estimates, summarized:
    mean and median over the parameters whose estimates vary (a parameter with no gradient has none)."""
    mean = total / n
    variance = ((squares - n * mean.square()) / (n - 1)).clamp(min=0)
    varies = variance > 0
    snr = mean[varies].abs() / variance[varies].sqrt()
    if snr.numel() == 0:
        return {"snr_mean": math.nan, "snr_median": math.nan, "n_parameters": 0}
    return {"snr_mean": float(snr.mean()), "snr_median": float(snr.median()), "n_parameters": int(snr.numel())}


def gradient_snr(
    module: L.LightningModule, batch: torch.Tensor, n_estimates: int, seed: int
) -> dict[str, dict[str, float]]:
    """SNR of the encoder's and the decoder's gradients over ``n_estimates`` estimates on ``batch``."""
    groups = {"encoder": list(module.encoder.parameters()), "decoder": list(module.decoder.parameters())}
    groups = {name: [p for p in params if p.requires_grad] for name, params in groups.items()}
    flat = [p for params in groups.values() for p in params]
    sums = {name: [torch.zeros_like(p, dtype=torch.float64) for p in params] for name, params in groups.items()}
    squares = {name: [torch.zeros_like(p, dtype=torch.float64) for p in params] for name, params in groups.items()}
    buffers = {name: buffer.clone() for name, buffer in module.named_buffers()}
    objective_state = copy.deepcopy(module.objective.__dict__)
    devices = [batch.device] if batch.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for _ in range(n_estimates):
                loss = module.training_step(batch, 0)
                grads = torch.autograd.grad(loss, flat, allow_unused=True)
                index = 0
                for name, params in groups.items():
                    for j in range(len(params)):
                        grad = grads[index]
                        index += 1
                        if grad is not None:
                            sums[name][j] += grad.double()
                            squares[name][j] += grad.double().square()
    finally:
        for name, buffer in module.named_buffers():
            buffer.copy_(buffers[name])
        module.objective.__dict__.update(objective_state)
    return {
        name: snr_summary(
            torch.cat([s.flatten() for s in sums[name]]), torch.cat([q.flatten() for q in squares[name]]), n_estimates
        )
        for name in groups
    }


class GradientSNR(Callback):
    """Measures :func:`gradient_snr` after each number of completed training epochs in ``epochs`` (0: at
    initialization, before the first step; the last epoch's number: at the end of training) on one fixed
    batch, the first training batch served when the first measurement is made."""

    @checked("gradient_snr")
    def __init__(self, epochs: list[int], n_estimates: Estimates, run_dir: str | Path, seed: int = 0) -> None:
        self.epochs = sorted(set(int(epoch) for epoch in epochs))
        self.n_estimates = n_estimates
        self.path = Path(run_dir) / FILE_NAME
        self.seed = seed
        self.batch: torch.Tensor | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.measure(trainer, pl_module, trainer.current_epoch)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.measure(trainer, pl_module, trainer.current_epoch)  # completed epochs, after the last one

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule, completed: int) -> None:
        if completed not in self.epochs or not trainer.is_global_zero:
            return
        entries = self.read()
        if any(entry["epoch"] == completed for entry in entries):
            return  # measured already (a resumed run)
        if self.batch is None:
            self.batch = next(iter(trainer.train_dataloader)).to(pl_module.device)
        was_training = pl_module.training
        pl_module.train()
        with torch.enable_grad():
            result = gradient_snr(pl_module, self.batch, self.n_estimates, self.seed)
        pl_module.train(was_training)
        objective = pl_module.objective
        entry: dict[str, Any] = {
            "epoch": completed,
            "step": trainer.global_step,
            "n_estimates": self.n_estimates,
            "batch_size": int(self.batch.shape[0]),
            "objective": type(objective).__name__,
            "gradient": objective.gradient,
            "n_samples": objective.n_samples,
            **result,
        }
        write_json_atomically(self.path, sorted([*entries, entry], key=lambda e: e["epoch"]))
        metrics = {f"gradient_snr/{name}": result[name]["snr_mean"] for name in result}
        for logger in trainer.loggers:
            logger.log_metrics({**metrics, "epoch": completed}, step=trainer.global_step)

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return json.loads(self.path.read_text())


def gradient_snr_callbacks(cfg: DictConfig, run_dir: str | Path) -> list[GradientSNR]:
    """The diagnostic's callback when ``gradient_snr.epochs`` names any epoch, else none."""
    settings = cfg.get("gradient_snr")
    if not settings or not settings.get("epochs"):
        return []
    return [GradientSNR(list(settings.epochs), settings.n_estimates, run_dir, seed=cfg.seed)]
