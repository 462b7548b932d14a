"""Stop training at the first step whose loss or gradient is not finite, or whose loss has diverged.

A NaN in one step silently poisons every weight after it, and an unattended run then spends hours
training garbage. :class:`NonFiniteGuard` checks the loss and the gradients of every step before
the optimizer applies them, and stops the run with a message that names the step, the epoch, what
went non-finite (the loss and which ELBO term, or which parameter's gradient) and the last good
checkpoint. The weights are never updated with a non-finite gradient when the check runs every step.

Cost: the check itself runs on the device (``torch.isfinite`` of the loss plus the sum of the
gradients, one small kernel per parameter); reading its verdict is one device-to-host sync per checked step.
On a CPU that is free; on a GPU it stalls the launch queue once per checked step, so
``check_finite_every_n_steps=N`` reads it every N steps instead: the first bad step is still
recorded on the device and reported exactly, but the weights may have taken up to N - 1 bad updates
by then (the checkpoint writer refuses to save them, see :mod:`vae_lab.run.checkpoint_io`).

A divergence can also stay finite (Adam with ``optimizer.lr=1e6`` ends a run with a test ELBO of
-2e12 nats). The same check therefore stops a run whose loss, in nats per image, exceeds in size
:data:`DIVERGENCE_FACTOR` times the larger of the first checked step's loss and D, the values per
image (1 nat per pixel value): a loss 10,000 times larger than where the run started. No learning
run gets there: a likelihood with probability mass costs at most log 256 = 5.5 nats per value for a
model no better than uniform, a density likelihood (Gaussian, Laplace) goes below zero by a few nats
per value at its scale floor, and KL warm-up or capacity schedules add a KL term of at most a few
thousand nats (capacity's gamma = 1000 times a KL 50 nats off its target is 0.05 x 10^6 on MNIST's
bound of 7.8 x 10^6). The first loss sets the scale, so a config whose loss starts large (a tiny
fixed Gaussian sigma) is measured against its own start. Each process measures its own start
(a resumed run from its first step after the checkpoint). Under DDP the ranks' verdicts are summed
(one small all-reduce per step), so that all ranks stop at the same step.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from vae_lab.errors import NumericalError

#: A loss larger in size than this many times max(|first checked loss|, D nats) per image has diverged.
DIVERGENCE_FACTOR = 1e4


class NonFiniteGuard(Callback):
    """Raise :class:`NumericalError` at the first step with a non-finite loss or gradient, or a
    diverged loss (see the module doc)."""

    def __init__(self, every_n_steps: int = 1) -> None:
        self.every_n_steps = every_n_steps
        self._loss: torch.Tensor | None = None
        #: DIVERGENCE_FACTOR * max(|first checked loss|, D), on the device (None before the first check).
        self._loss_bound: torch.Tensor | None = None
        #: The first bad global step seen since the last read, on the device (-1: none).
        self._first_bad_step: torch.Tensor | None = None
        self._first_bad_epoch: torch.Tensor | None = None
        self._first_bad_batch: int | None = None

    @property
    def loss_bound(self) -> float | None:
        """The size of loss beyond which the run has diverged (None before the first checked step)."""
        return None if self._loss_bound is None else float(self._loss_bound)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if self.every_n_steps:
            self._loss = loss.detach()

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self.every_n_steps or self._loss is None:
            return
        loss = self._loss.float()
        if self._loss_bound is None:
            self._loss_bound = DIVERGENCE_FACTOR * loss.abs().clamp(min=float(getattr(pl_module, "n_dims", 1)))
        # NaN makes the comparison false too: one verdict, one device-to-host read.
        finite = torch.isfinite(loss + gradient_sum(pl_module.parameters())) & (loss.abs() <= self._loss_bound)
        if trainer.world_size > 1:
            # The loss is each rank's own (the gradients are already shared): one verdict for all ranks, so
            # that no rank stops alone while the others wait for it.
            finite = trainer.strategy.reduce((~finite).float(), reduce_op="sum") == 0
        step = trainer.global_step
        if self.every_n_steps == 1:
            if not bool(finite):
                self._stop(trainer, pl_module, step, trainer.current_epoch, self._batch_idx, diagnose=True)
            return
        if self._first_bad_step is None:
            self._first_bad_step = torch.full((), -1, dtype=torch.long, device=finite.device)
            self._first_bad_epoch = torch.full((), -1, dtype=torch.long, device=finite.device)
        first_bad = (~finite) & (self._first_bad_step < 0)
        self._first_bad_step = torch.where(first_bad, step, self._first_bad_step)
        self._first_bad_epoch = torch.where(first_bad, trainer.current_epoch, self._first_bad_epoch)
        if (step + 1) % self.every_n_steps == 0:
            bad_step = int(self._first_bad_step)
            if bad_step >= 0:
                self._stop(trainer, pl_module, bad_step, int(self._first_bad_epoch), None, diagnose=bad_step == step)

    def _stop(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        step: int,
        epoch: int,
        batch_idx: int | None,
        diagnose: bool,
    ) -> None:
        where = f"step {step} (epoch {epoch}" + (f", batch {batch_idx})" if batch_idx is not None else ")")
        if diagnose:
            what = describe_non_finite(pl_module, self._loss)
            if what == "a non-finite value" and self._loss is not None and self.loss_bound is not None:
                what = (
                    f"train/loss is {float(self._loss):.4g} nats per image, beyond {self.loss_bound:.4g} "
                    f"({DIVERGENCE_FACTOR:g} x max(|the first checked loss|, {getattr(pl_module, 'n_dims', 1)} "
                    "values per image)): the training has diverged"
                    if abs(float(self._loss)) > self.loss_bound
                    else "the loss of another rank diverged or was not finite"
                )
        else:
            what = (
                f"a non-finite loss or gradient, or a diverged loss (found by the check every {self.every_n_steps} "
                f"steps; the weights have taken {trainer.global_step - step} update(s) since)"
            )
        raise NumericalError(
            f"training stopped at {where}: {what}. Last good checkpoint: {last_good_checkpoint(trainer)}. "
            "Lower optimizer.lr, add trainer.gradient_clip_val, or check the likelihood's scale floors."
        )


def gradient_sum(parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """The sum of every entry of every gradient, in float32: finite exactly when each entry is (a NaN
    or an infinity carries through the sums; finite gradients do not come near float32's 3e38).

    A sum per tensor is ~50 us for the default model on one CPU thread; the largest absolute value
    (``get_total_norm(..., inf)``) took 1.2 ms, an eighth of a whole training step.
    """
    sums = [parameter.grad.sum(dtype=torch.float32) for parameter in parameters if parameter.grad is not None]
    return torch.stack(sums).sum() if sums else torch.zeros(())


def describe_non_finite(pl_module: L.LightningModule, loss: torch.Tensor | None) -> str:
    """What is non-finite at this step: the loss and the ELBO terms that caused it, or the gradients."""
    parts = []
    if loss is not None and not bool(torch.isfinite(loss).all()):
        parts.append(f"train/loss is {float(loss)}")
        terms = getattr(pl_module, "latest_terms", None)
        if terms is not None:
            named = {
                "reconstruction log p(x|z)": terms.log_likelihood,
                "kl": terms.kl,
                "log p(z)": terms.log_prior,
                "log q(z|x)": terms.log_posterior,
            }
            found = [
                f"{name} ({int((~torch.isfinite(value)).sum())} of {value.numel()} values)"
                for name, value in named.items()
                if value is not None and not bool(torch.isfinite(value).all())
            ]
            if found:
                parts.append("non-finite ELBO terms: " + ", ".join(found))
    bad_gradients = [
        name
        for name, parameter in pl_module.named_parameters()
        if parameter.grad is not None and not bool(torch.isfinite(parameter.grad).all())
    ]
    if bad_gradients:
        shown = ", ".join(bad_gradients[:4]) + (f" and {len(bad_gradients) - 4} more" if len(bad_gradients) > 4 else "")
        parts.append(f"non-finite gradient of {shown}")
    return "; ".join(parts) or "a non-finite value"


def last_good_checkpoint(trainer: L.Trainer) -> str:
    """The most recently written checkpoint (every written checkpoint is finite), or a note that
    there is none."""
    paths = []
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            paths += [Path(path) for path in (callback.last_model_path, callback.best_model_path) if path]
    existing = [path for path in paths if path.is_file()]
    if not existing:
        return "none yet (no epoch has completed; the run must start over)"
    return str(max(existing, key=lambda path: path.stat().st_mtime_ns))
