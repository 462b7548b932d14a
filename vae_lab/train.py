"""Train a VAE: ``python -m vae_lab.train [group=choice ...] [key=value ...]``.

Hydra composes ``conf/config.yaml`` with the chosen groups; the run's outputs (checkpoints,
metrics CSV, image grids, ``summary.json``, the wandb run) go to Hydra's output directory.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from vae_lab.errors import VaeLabError

CONFIG_PATH = "pkg://vae_lab.conf"


def run_name() -> str:
    """The command's overrides, e.g. ``data=cifar,likelihood=gaussian``: how the run is named."""
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(("hydra.", "data.root", "resume"))]
    return ",".join(sorted(overrides)) or "default"


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, evaluate the best checkpoint, save images and the summary; returns the summary."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from vae_lab.build import build_datamodule, build_model
    from vae_lab.checkpoint_io import AtomicCheckpointIO
    from vae_lab.compilation import compile_networks
    from vae_lab.epoch_timer import epoch_timer_from_environment
    from vae_lab.files import write_json_atomically
    from vae_lab.images import reconstruction_grid, save_grid
    from vae_lab.step_overheads import step_overhead_callbacks
    from vae_lab.threads import choose_threads
    from vae_lab.tracking import make_wandb_logger, offline_sync_hint

    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    started = time.time()
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    resolved_config = OmegaConf.to_container(cfg, resolve=True)

    loggers: list[Any] = [CSVLogger(save_dir=str(run_dir), name="", version="")]
    wandb_logger = None
    if cfg.logger.get("wandb"):
        wandb_logger = make_wandb_logger(cfg.logger.wandb, run_dir, run_name(), resolved_config)
        if wandb_logger is not None:
            loggers.append(wandb_logger)

    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor="val/elbo",
        mode="max",
        save_last=True,
        auto_insert_metric_name=False,
    )
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        logger=loggers,
        callbacks=[
            checkpoints,
            *step_overhead_callbacks(cfg.trainer),
            *filter(None, [epoch_timer_from_environment()]),
        ],
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
    )
    device = trainer.strategy.root_device.type
    torch.set_num_threads(
        choose_threads(cfg.threads, model, datamodule.image_shape, datamodule.batch_size, trainer.num_devices, device)
    )
    compile_networks(model, cfg.compile)
    trainer.fit(model, datamodule=datamodule)
    metrics: dict[str, float] = {}
    for results in (
        trainer.validate(model, datamodule=datamodule, ckpt_path="best", verbose=False),
        trainer.test(model, datamodule=datamodule, ckpt_path="best", verbose=False),
    ):
        metrics.update({name: float(value) for name, value in results[0].items()})

    summary: dict[str, Any] = {}
    if trainer.is_global_zero:
        test_images = datamodule.example_images("test", 32).to(model.device)
        images = {
            "reconstructions": reconstruction_grid(
                model.data_form.to_unit_interval(test_images), model.reconstruct(test_images)
            ),
            "samples": model.generate(64),
        }
        for name, grid in images.items():
            save_grid(grid, run_dir / "images" / f"{name}.png", columns=8)
        if wandb_logger is not None:
            wandb_logger.log_image(
                key="images", images=[str(run_dir / "images" / f"{name}.png") for name in images], caption=list(images)
            )
            wandb_logger.experiment.summary.update(metrics)
        summary = {
            "status": "complete",
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
        write_json_atomically(run_dir / "summary.json", summary)
        if wandb_logger is not None:
            hint = offline_sync_hint(wandb_logger)
            import wandb

            wandb.finish()
            if hint:
                print(f"wandb: offline run saved; upload it later with: {hint}")
        print(f"vae_lab: outputs in {run_dir} (summary.json: test/elbo = {metrics.get('test/elbo', float('nan')):.2f} nats)")
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        summary = train(cfg)
    except VaeLabError as error:
        print(f"vae_lab: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return summary.get("metrics", {}).get("val/elbo")


if __name__ == "__main__":
    main()
