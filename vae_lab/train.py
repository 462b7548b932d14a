"""Train a VAE: ``python -m vae_lab.train [group=choice ...] [key=value ...]``.

Hydra composes ``conf/config.yaml`` with the chosen groups; the run's outputs (checkpoints,
metrics CSV, image grids, ``summary.json``, the wandb run) go to Hydra's output directory.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from vae_lab.run.early_signals import stop_quietly_on_signals
from vae_lab.run.jobs import Job, run_job
from vae_lab.run.launchers import register_launcher_configs

CONFIG_PATH = "pkg://vae_lab.conf"

log = logging.getLogger("vae_lab.train")  # not __main__ under `python -m`
register_launcher_configs()


def train(cfg: DictConfig, job: Job | None = None) -> dict[str, Any]:
    """Fit, evaluate the best checkpoint, save images and the summary; returns the summary.
    ``job`` (vae_lab.run.jobs) says where this process stands: rank, resume, wandb identity."""
    if job is None:
        job = Job.from_hydra()
        job.prepare(cfg)
    import lightning as L
    import torch

    from vae_lab.evaluation.collapse import save_heatmap
    from vae_lab.evaluation.gradient_snr import gradient_snr_callbacks
    from vae_lab.evaluation.images import reconstruction_grid, save_grid
    from vae_lab.evaluation.importance_sampling import evaluate_at_end_of_training
    from vae_lab.evaluation.latent_pictures import save_latent_pictures
    from vae_lab.files import check_writable_directory, write_json_atomically
    from vae_lab.model.build import build_datamodule, build_model
    from vae_lab.model.compilation import compile_networks
    from vae_lab.model.seeds import seed_stage
    from vae_lab.run.checkpoint_integrity import CheckpointRecord
    from vae_lab.run.checkpoint_io import AtomicCheckpointIO
    from vae_lab.run.checkpoints import CHECKPOINT_DIR, check_checkpoint, checkpoint_callbacks, last_checkpoint
    from vae_lab.run.epoch_timer import epoch_timer_from_environment
    from vae_lab.run.finite_guard import NonFiniteGuard
    from vae_lab.run.interrupts import GracefulInterrupt
    from vae_lab.run.machine_checks import check_training_machine
    from vae_lab.run.provenance import provenance_fields
    from vae_lab.run.resume import keep_logged_epochs
    from vae_lab.run.settings import validate_config
    from vae_lab.run.step_overheads import step_overhead_callbacks
    from vae_lab.run.stopped_runs import record_stopped_run
    from vae_lab.run.threads import choose_threads, evaluation_threads
    from vae_lab.tracking.console import metrics_csv_logger, route_lightning_logs
    from vae_lab.tracking.wandb_mode import offline_sync_hint
    from vae_lab.tracking.wandb_run import configured_callbacks, log_best_checkpoint_if_asked, wandb_callbacks

    route_lightning_logs()  # Lightning's lines once, into train.log too
    validate_config(cfg)  # every key, type and range, before any work
    check_training_machine(cfg)  # the devices it asks for and the memory it needs, on this machine
    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    check_writable_directory(run_dir)
    started = time.time()
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    check_writable_directory(run_dir / CHECKPOINT_DIR)  # made once data and model are sound, before training
    resolved_config = OmegaConf.to_container(cfg, resolve=True)
    resume_from = last_checkpoint(run_dir) if cfg.resume else None
    loggers: list[Any] = [metrics_csv_logger(run_dir)]
    if resume_from is not None and job.is_rank_zero:
        resumed = check_checkpoint(resume_from, model, config=resolved_config)  # whole, same settings
        keep_logged_epochs(loggers[0], through_epoch=resumed["epoch"])
    elif cfg.resume:
        log.info(f"vae_lab: resume=true, but {run_dir / CHECKPOINT_DIR / 'last.ckpt'} does not exist: starting afresh.")

    wandb_logger = None
    if cfg.logger.get("wandb"):
        wandb_logger = job.make_wandb_logger(cfg.logger.wandb, resolved_config)
        if wandb_logger is not None and wandb_logger.start():
            loggers.append(wandb_logger)

    checkpoints, last_epoch = checkpoint_callbacks(run_dir)
    interrupt = GracefulInterrupt()
    record = CheckpointRecord(resolved_config)  # the config and provenance travel inside every checkpoint
    callbacks: list[Any] = [checkpoints, last_epoch, record, interrupt, *job.trainer_callbacks()]
    callbacks += [*configured_callbacks(cfg), *wandb_callbacks(wandb_logger, cfg.logger.get("wandb"))]
    callbacks += gradient_snr_callbacks(cfg, run_dir)  # objective.gradient's diagnostic, when asked for
    if cfg.check_finite_every_n_steps:
        callbacks.append(NonFiniteGuard(cfg.check_finite_every_n_steps))
    if cfg.get("early_stopping"):
        from lightning.pytorch.callbacks import EarlyStopping

        callbacks.append(EarlyStopping(monitor="val/elbo", mode="max", patience=cfg.early_stopping.patience))
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        logger=loggers,
        callbacks=[*callbacks, *step_overhead_callbacks(cfg.trainer), *filter(None, [epoch_timer_from_environment()])],
        plugins=[AtomicCheckpointIO(), *job.trainer_plugins()],
        default_root_dir=str(run_dir),
    )
    device = trainer.strategy.root_device.type
    threads = choose_threads(
        cfg.threads, model, datamodule.image_shape, datamodule.batch_size, trainer.num_devices, device
    )
    if job.threads_from_launcher:  # a parallel launcher's worker: never more than its share of the cores
        threads = min(threads, job.threads)
    torch.set_num_threads(threads)
    compile_networks(model, cfg.compile)
    metrics: dict[str, float] = {}
    try:
        # Under DDP, job.processes starts the other ranks and joins them after testing. Until the images are
        # saved, a signal stops the run at a safe point (vae_lab.run.interrupts); after it, vae_lab.run.early_signals.
        with interrupt:
            with job.processes(trainer, cfg):
                trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from)
                interrupt.end_of_training()
                best = checkpoints.best_model_path
                check_checkpoint(best, model)
                for stage in (trainer.validate, trainer.test):
                    seed_stage(cfg.seed, stage.__name__, trainer.global_rank)  # never the state training left
                    results = stage(model, datamodule=datamodule, ckpt_path=best, verbose=False)
                    metrics.update({name: float(value) for name, value in results[0].items()})
            if trainer.is_global_zero:
                # Under DDP only rank 0 evaluates: the IS log-likelihood etc. of the best checkpoint's weights.
                metrics.update(
                    evaluate_at_end_of_training(
                        cfg,
                        model,
                        datamodule,
                        trainer.loggers,
                        trainer.global_step,
                        safe_point=interrupt.at_evaluation_batch,
                        threads=evaluation_threads(
                            cfg.threads, trainer.num_devices, device, job.threads if job.threads_from_launcher else None
                        ),
                    )
                )
                interrupt.safe_point("images", " before the image grids")
                seed_stage(cfg.seed, "images")
                test_images = datamodule.example_images("test", 32).to(model.device)
                images = {
                    "reconstructions": reconstruction_grid(
                        model.data_form.to_unit_interval(test_images), model.reconstruct(test_images)
                    ),
                    "samples": model.generate(64),
                }
                for name, grid in images.items():
                    save_grid(grid, run_dir / "images" / f"{name}.png", columns=8)
                save_latent_pictures(model, datamodule, run_dir, wandb_logger)
                save_heatmap(
                    run_dir, wandb_logger, trainer.loggers
                )  # posterior collapse over training (vae_lab.evaluation.collapse)
    except BaseException as error:
        # A failure or an interruption: record it (summary.json, wandb) and say what to do.
        known = {
            **job.summary_fields(),
            **provenance_fields(trainer.strategy.root_device),
            "config": resolved_config,
            "choices": dict(hydra_config.runtime.choices),
            "overrides": list(hydra_config.overrides.task),
            "seed": cfg.seed,
            "epochs": trainer.current_epoch,
            "global_steps": trainer.global_step,
        }
        replacement = record_stopped_run(
            error,
            run_dir=run_dir,
            interrupt=interrupt,
            overrides=hydra_config.overrides.task,
            summary=known,
            wandb_logger=wandb_logger,
            is_global_zero=trainer.is_global_zero,
        )
        if replacement is error:
            raise
        raise replacement from None

    summary: dict[str, Any] = {}
    if trainer.is_global_zero:
        if wandb_logger is not None:
            wandb_logger.log_image(
                key="images", images=[str(run_dir / "images" / f"{name}.png") for name in images], caption=list(images)
            )
            wandb_logger.update_summary(metrics)
            log_best_checkpoint_if_asked(wandb_logger, cfg.logger.wandb, Path(checkpoints.best_model_path), metrics)
        summary = {
            **job.summary_fields(),
            "status": "complete",
            **provenance_fields(trainer.strategy.root_device),
            "config": resolved_config,
            "choices": dict(hydra_config.runtime.choices),
            "overrides": list(hydra_config.overrides.task),
            "seed": cfg.seed,
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "threads": torch.get_num_threads(),
            "epochs": trainer.current_epoch,
            "global_steps": trainer.global_step,
            "wall_time_seconds": round(time.time() - started, 2),
            "best_checkpoint": str(Path(checkpoints.best_model_path).relative_to(run_dir)),
            "metrics": metrics,
        }
        if wandb_logger is not None:
            hint = wandb_logger.run_safely("offline sync hint", lambda: offline_sync_hint(wandb_logger))
            wandb_logger.finish()
            summary["wandb"] = wandb_logger.status()
            if hint and not wandb_logger.failed:
                log.info(f"wandb: offline run saved; upload it later with: {hint}")
        write_json_atomically(run_dir / "summary.json", summary)
        test_elbo = metrics.get("test/elbo", float("nan"))
        log.info(f"vae_lab: outputs in {run_dir} (summary.json: test/elbo = {test_elbo:.2f} nats)")
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> float | None:
    return run_job(cfg, train)


if __name__ == "__main__":
    stop_quietly_on_signals()  # Ctrl-C during start-up: one line, no traceback
    main()
