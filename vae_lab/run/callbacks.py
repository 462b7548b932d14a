"""The Trainer's callbacks and loggers of a run.

Those a run may choose are config entries, built by Hydra as in lightning-hydra-template: each entry of
``callbacks:`` and of ``logger:`` with a ``_target_`` is made with ``hydra.utils.instantiate`` (an entry
set to null is left out). So ``+callbacks.lr._target_=lightning.pytorch.callbacks.LearningRateMonitor``
adds a Lightning callback and ``+logger.tb._target_=lightning.pytorch.loggers.TensorBoardLogger`` a
logger, with no code change; vae_lab.run.settings checks every entry (the class imports, is a Callback or
a Logger, takes the entry's keys) before any data is read. ``logger.wandb`` has no ``_target_``: it holds
the settings of vae_lab's own wandb logger, which the job names, groups and tags (vae_lab.run.jobs).

Made here, always, because the run machinery needs them: the best and last checkpoints, the checkpoint
record, the interrupt handler and the job's own callbacks (log flush, DDP debugging), ``metrics.csv``
(trimmed to the resumed epoch), the wandb images, the gradient SNR diagnostic (``gradient_snr.*``), the
non-finite guard (``check_finite_every_n_steps``, whose stop the run records as ``diverged``), the
progress bar and the epoch timer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from vae_lab.evaluation.gradient_snr import gradient_snr_callbacks
from vae_lab.files import check_writable_directory
from vae_lab.run.checkpoint_integrity import CheckpointRecord
from vae_lab.run.checkpoint_io import AtomicCheckpointIO
from vae_lab.run.checkpoints import CHECKPOINT_DIR, check_checkpoint, checkpoint_callbacks, last_checkpoint
from vae_lab.run.epoch_timer import epoch_timer_from_environment
from vae_lab.run.finite_guard import NonFiniteGuard
from vae_lab.run.interrupts import GracefulInterrupt
from vae_lab.run.jobs import Job
from vae_lab.run.resume import keep_logged_epochs
from vae_lab.run.step_overheads import step_overhead_callbacks
from vae_lab.tracking.console import metrics_csv_logger
from vae_lab.tracking.wandb_run import wandb_callbacks

log = logging.getLogger(__name__)


def instantiate_entries(section: Mapping[str, Any] | None) -> list[Any]:
    """The objects of a config section's entries that have a ``_target_``, in order (null entries, and
    entries without ``_target_`` such as ``logger.wandb``, are left out)."""
    return [
        instantiate(entry) for entry in (section or {}).values() if isinstance(entry, Mapping) and "_target_" in entry
    ]


@dataclass
class RunCallbacks:
    """The Trainer's callbacks, with the two that train() asks afterwards."""

    #: ``checkpoints/best.ckpt``: its ``best_model_path`` is validated, tested and evaluated after fitting.
    best: ModelCheckpoint
    #: Stops the run at a safe point on SIGINT/SIGTERM (a context for fit, test, evaluation and images).
    interrupt: GracefulInterrupt
    all: list[Callback]


def run_callbacks(cfg: DictConfig, job: Job, config: dict[str, Any]) -> RunCallbacks:
    """The callbacks of this run (see the module doc); ``config`` is the resolved config, which travels
    inside every checkpoint. Call after :func:`run_loggers` (the wandb images need the job's wandb logger)."""
    best, last_epoch = checkpoint_callbacks(job.run_dir)
    interrupt = GracefulInterrupt()
    callbacks = [best, last_epoch, CheckpointRecord(config), interrupt, *job.trainer_callbacks()]
    callbacks += instantiate_entries(cfg.get("callbacks"))
    callbacks += wandb_callbacks(job.wandb_logger, cfg.logger.get("wandb"))
    callbacks += gradient_snr_callbacks(cfg, job.run_dir)  # objective.gradient's diagnostic, when asked for
    if cfg.check_finite_every_n_steps:
        callbacks.append(NonFiniteGuard(cfg.check_finite_every_n_steps))
    callbacks += [*step_overhead_callbacks(cfg.trainer), *filter(None, [epoch_timer_from_environment()])]
    return RunCallbacks(best, interrupt, callbacks)


def run_loggers(cfg: DictConfig, job: Job, config: dict[str, Any], resumed_epoch: int | None) -> list[Logger]:
    """The run's loggers: ``metrics.csv`` (always; on resume, its rows through ``resumed_epoch`` kept), the
    wandb run when ``logger.wandb`` is set and it starts, then each ``logger.<name>`` entry with a ``_target_``."""
    csv = metrics_csv_logger(Path(job.run_dir))
    if resumed_epoch is not None:
        keep_logged_epochs(csv, through_epoch=resumed_epoch)
    loggers: list[Logger] = [csv]
    if cfg.logger.get("wandb"):
        wandb_logger = job.make_wandb_logger(cfg.logger.wandb, config)
        if wandb_logger is not None and wandb_logger.start():
            loggers.append(wandb_logger)
    return [*loggers, *instantiate_entries(cfg.logger)]


def resume_point(cfg: DictConfig, job: Job, model: Any, config: dict[str, Any]) -> tuple[str | None, int | None]:
    """With ``resume=true``: (``checkpoints/last.ckpt``, its epoch), checked on rank 0 to be whole and of
    these settings (vae_lab.run.checkpoints); (None, None) for a fresh start. Call once the data and the model
    are built: it first checks that ``checkpoints/`` can be written (making it), before anything trains."""
    check_writable_directory(job.run_dir / CHECKPOINT_DIR)
    resume_from = last_checkpoint(job.run_dir) if cfg.resume else None
    if resume_from is None:
        if cfg.resume:
            missing = job.run_dir / CHECKPOINT_DIR / "last.ckpt"
            log.info(f"vae_lab: resume=true, but {missing} does not exist: starting afresh.")
        return None, None
    if not job.is_rank_zero:
        return str(resume_from), None
    return str(resume_from), check_checkpoint(resume_from, model, config=config)["epoch"]


def run_plugins(job: Job) -> list[Any]:
    """The Trainer's plugins: checkpoints written atomically (vae_lab.run.checkpoint_io), and the job's own (SLURM)."""
    return [AtomicCheckpointIO(), *job.trainer_plugins()]
