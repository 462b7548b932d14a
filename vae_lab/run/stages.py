"""The stages of a run after fitting, in the order vae_lab.train runs them: the best checkpoint
validated and tested, the end-of-run images, the summary (``summary.json`` and the wandb run's)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig

from vae_lab.evaluation.collapse import save_heatmap
from vae_lab.evaluation.images import reconstruction_grid, save_grid
from vae_lab.evaluation.latent_pictures import save_latent_pictures
from vae_lab.files import write_json_atomically
from vae_lab.run.checkpoints import check_checkpoint
from vae_lab.run.jobs import Job
from vae_lab.run.state import SUMMARY
from vae_lab.seeds import seed_stage
from vae_lab.tracking.wandb_mode import offline_sync_hint
from vae_lab.tracking.wandb_run import log_best_checkpoint_if_asked

log = logging.getLogger("vae_lab.train")

#: The end-of-run image grids that summary.json's wandb run gets too (``images/<name>.png``): test images
#: over their reconstructions, prior samples.
GRIDS = {"reconstructions": 32, "samples": 64}


def test_best_checkpoint(trainer: L.Trainer, model: Any, datamodule: Any, best: str, seed: int) -> dict[str, float]:
    """The ``val/*`` and ``test/*`` metrics of the best checkpoint (checked whole first), each stage
    seeded by its name and the rank, never with the random state training left."""
    check_checkpoint(best, model)
    metrics: dict[str, float] = {}
    for stage in (trainer.validate, trainer.test):
        seed_stage(seed, stage.__name__, trainer.global_rank)
        results = stage(model, datamodule=datamodule, ckpt_path=best, verbose=False)
        metrics.update({name: float(value) for name, value in results[0].items()})
    return metrics


def save_images(seed: int, model: Any, datamodule: Any, trainer: L.Trainer, job: Job) -> list[Path]:
    """Rank 0, the best weights loaded: ``<run dir>/images/`` gets the :data:`GRIDS`, the latent traversals
    and interpolations, and posterior collapse over training (vae_lab.evaluation.collapse); all but the
    grids also go to wandb now. Returns the grids' files."""
    seed_stage(seed, "images")
    test_images = datamodule.example_images("test", GRIDS["reconstructions"]).to(model.device)
    grids = {
        "reconstructions": reconstruction_grid(
            model.data_form.to_unit_interval(test_images), model.reconstruct(test_images)
        ),
        "samples": model.generate(GRIDS["samples"]),
    }
    paths = [job.run_dir / "images" / f"{name}.png" for name in grids]
    for path, grid in zip(paths, grids.values(), strict=True):
        save_grid(grid, path, columns=8)
    save_latent_pictures(model, datamodule, job.run_dir, job.wandb_logger)
    save_heatmap(job.run_dir, job.wandb_logger, trainer.loggers)
    return paths


def write_summary(
    cfg: DictConfig,
    job: Job,
    trainer: L.Trainer,
    model: Any,
    metrics: dict[str, float],
    grids: list[Path],
    started: float,
    best: str,
) -> dict[str, Any]:
    """Rank 0, at the end of a complete run: the grids, final metrics and (when asked) the best checkpoint to
    the wandb run, which is then finished; ``summary.json`` (status ``complete``) written atomically. Returns it."""
    wandb_logger = job.wandb_logger
    if wandb_logger is not None:
        wandb_logger.log_image(key="images", images=[str(path) for path in grids], caption=[p.stem for p in grids])
        wandb_logger.update_summary(metrics)
        log_best_checkpoint_if_asked(wandb_logger, cfg.logger.wandb, Path(best), metrics)
    summary = job.summary(
        cfg,
        trainer,
        status="complete",
        n_parameters=sum(p.numel() for p in model.parameters()),
        threads=torch.get_num_threads(),
        wall_time_seconds=round(time.time() - started, 2),
        best_checkpoint=str(Path(best).relative_to(job.run_dir)),
        metrics=metrics,
    )
    if wandb_logger is not None:
        hint = wandb_logger.run_safely("offline sync hint", lambda: offline_sync_hint(wandb_logger))
        wandb_logger.finish()
        summary["wandb"] = wandb_logger.status()
        if hint and not wandb_logger.failed:
            log.info(f"wandb: offline run saved; upload it later with: {hint}")
    write_json_atomically(job.run_dir / SUMMARY, summary)
    test_elbo = metrics.get("test/elbo", float("nan"))
    log.info(f"vae_lab: outputs in {job.run_dir} (summary.json: test/elbo = {test_elbo:.2f} nats)")
    return summary
