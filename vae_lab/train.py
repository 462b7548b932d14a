"""Train a VAE: ``python -m vae_lab.train [group=choice ...] [key=value ...]``.

Hydra composes ``conf/config.yaml`` with the chosen groups; the run's outputs (checkpoints,
metrics CSV, image grids, ``summary.json``, the wandb run) go to Hydra's output directory.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vae_lab.files import check_writable_directory
from vae_lab.run.early_signals import stop_quietly_on_signals
from vae_lab.run.jobs import Job, run_job
from vae_lab.run.launchers import register_launcher_configs

CONFIG_PATH = "pkg://vae_lab.conf"

log = logging.getLogger("vae_lab.train")  # not __main__ under `python -m`
register_launcher_configs()


def train(cfg: DictConfig, job: Job | None = None) -> dict[str, Any]:
    """Fit, evaluate the best checkpoint, save images and the summary; returns the summary (empty off rank 0).
    ``job`` (vae_lab.run.jobs) says where this process stands: rank, resume, wandb identity."""
    if job is None:
        job = Job.from_hydra()
        job.prepare(cfg)
    # Here, not at the top: torch and Lightning take seconds to import, which `--help` need not wait for.
    import lightning as L

    from vae_lab.evaluation.importance_sampling import evaluate_at_end_of_training
    from vae_lab.model.build import build_datamodule, build_model
    from vae_lab.model.compilation import compile_networks
    from vae_lab.run import stages
    from vae_lab.run.callbacks import resume_point, run_callbacks, run_loggers, run_plugins
    from vae_lab.run.machine_checks import check_training_machine
    from vae_lab.run.settings import validate_config
    from vae_lab.run.threads import evaluation_threads, set_run_threads
    from vae_lab.tracking.console import route_lightning_logs

    # Check: every key, type and range, then the devices and memory it asks of this machine, before any work.
    route_lightning_logs()  # Lightning's lines once, into train.log too
    validate_config(cfg)
    check_training_machine(cfg)
    check_writable_directory(job.run_dir)
    started = time.time()
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    # Build: the data, the model, what it resumes from, the loggers, the callbacks and the Trainer.
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    config = OmegaConf.to_container(cfg, resolve=True)
    resume_from, resumed_epoch = resume_point(cfg, job, model, config)
    loggers = run_loggers(cfg, job, config, resumed_epoch)
    callbacks = run_callbacks(cfg, job, config)
    trainer = instantiate(
        cfg.trainer,
        logger=loggers,
        callbacks=callbacks.all,
        plugins=run_plugins(job),
        default_root_dir=str(job.run_dir),
    )
    set_run_threads(cfg.threads, model, datamodule, trainer, at_most=job.threads if job.threads_from_launcher else None)
    compile_networks(model, cfg.compile)

    # Fit, then test and evaluate the best checkpoint. Under DDP, job.processes starts the other ranks and joins them
    # after testing. Until the images are saved, a signal stops the run at a safe point (vae_lab.run.interrupts).
    interrupt = callbacks.interrupt
    try:
        with interrupt:
            with job.processes(trainer, cfg):
                trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from)
                interrupt.end_of_training()
                best = callbacks.best.best_model_path
                metrics = stages.test_best_checkpoint(trainer, model, datamodule, best, cfg.seed)
            if not trainer.is_global_zero:  # under DDP only rank 0 evaluates, saves and writes
                return {}
            safe_point = interrupt.at_evaluation_batch  # the IS log-likelihood etc. of the best checkpoint's weights
            threads = evaluation_threads(
                cfg.threads,
                trainer.num_devices,
                trainer.strategy.root_device.type,
                job.threads if job.threads_from_launcher else None,
            )  # the evaluation times 1 and all of its cores on its first batches and runs on the faster
            metrics |= evaluate_at_end_of_training(
                cfg, model, datamodule, trainer.loggers, trainer.global_step, safe_point, threads=threads
            )
            interrupt.safe_point("images", " before the image grids")
            grids = stages.save_images(cfg.seed, model, datamodule, trainer, job)
    except BaseException as error:  # recorded (summary.json, wandb), with what to do
        replacement = job.record_failure(cfg, error, trainer, interrupt)
        if replacement is error:
            raise
        raise replacement from None

    # Write: summary.json and the wandb run's summary.
    return stages.write_summary(cfg, job, trainer, model, metrics, grids, started, best)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> float | None:
    return run_job(cfg, train)


if __name__ == "__main__":
    stop_quietly_on_signals()  # Ctrl-C during start-up: one line, no traceback
    main()
