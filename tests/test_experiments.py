"""Every paper reproduction in conf/experiment/ composes and trains for a few real steps on MNIST."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_module

from vae_lab.model.build import build_datamodule, build_model
from vae_lab.model.lr_schedules import StagedDecayLR, stage_of_epoch, staged_schedule_epochs

EXPERIMENTS = sorted(path.stem for path in (Path(__file__).parents[1] / "conf" / "experiment").glob("*.yaml"))


def compose_experiment(name: str, schedule: str, data_root: Path, *overrides: str):
    with initialize_config_module(config_module="vae_lab.conf", version_base="1.3"):
        return compose(
            config_name="config",
            overrides=[f"experiment={name}", f"schedule={schedule}", f"data.root={data_root}", *overrides],
        )


def test_every_experiment_is_listed() -> None:
    assert {
        "iwae_vae_k1",
        "iwae_vae_k5",
        "iwae_k5",
        "iwae_k50",
        "vampprior",
        "vampprior_standard",
        "kingma_welling",
        "inference_gap",
    } == set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_trains_a_few_steps(name: str, data_root: Path, tmp_path: Path) -> None:
    full = compose_experiment(name, "full", data_root)
    short = compose_experiment(name, "short", data_root, "data.train_subset=400", "data.val_size=200")
    assert full.trainer.max_epochs > short.trainer.max_epochs
    datamodule = build_datamodule(short)
    model = build_model(short, datamodule)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 3
    assert math.isfinite(trainer.callback_metrics["val/elbo"].item())


def test_iwae_paper_setup(data_root: Path) -> None:
    """The values Burda et al. (2016, section 5.1) state, as composed."""
    cfg = compose_experiment("iwae_k50", "full", data_root)
    assert (cfg.data.batch_size, cfg.data.binarization, cfg.model.latent_dim) == (20, "dynamic", 50)
    assert list(cfg.model.encoder.hidden_sizes) == [200, 200] and cfg.model.encoder.activation == "tanh"
    assert cfg.optimizer.eps == 1e-4 and list(cfg.optimizer.betas) == [0.9, 0.999]
    assert cfg.objective.k == 50 and cfg.trainer.max_epochs == 3280 == staged_schedule_epochs(8)


def test_vampprior_paper_setup(data_root: Path) -> None:
    """The values Tomczak & Welling (2018, section 4.1) state, as composed."""
    cfg = compose_experiment("vampprior", "full", data_root)
    assert (cfg.model.latent_dim, list(cfg.model.encoder.hidden_sizes)) == (40, [300, 300])
    assert cfg.model.encoder._target_.endswith("GatedMLPEncoder") and cfg.prior.n_pseudo_inputs == 500
    assert (cfg.objective.warmup.epochs, cfg.callbacks.early_stopping.patience, cfg.optimizer.lr) == (100, 50, 5e-4)
    assert (cfg.callbacks.early_stopping.monitor, cfg.callbacks.early_stopping.mode) == ("val/elbo", "max")
    baseline = compose_experiment("vampprior_standard", "full", data_root)
    assert baseline.prior._target_.endswith("StandardNormalPrior") and baseline.model == cfg.model


def test_output_bias_starts_at_the_mean_training_image(data_root: Path) -> None:
    cfg = compose_experiment("iwae_vae_k1", "short", data_root)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    mean_pixel = datamodule.splits["train"].float().mean(0).flatten() / 255.0
    predicted = torch.sigmoid(model.decoder.output.bias)
    assert torch.allclose(predicted, mean_pixel.clamp(1e-3, 1 - 1e-3), atol=1e-5)


def test_staged_learning_rate_schedule() -> None:
    """3^i epochs at lr_0 * 10^(-i/7): epochs 0 | 1-3 | 4-12 | 13-39 | ..."""
    assert [stage_of_epoch(epoch) for epoch in (0, 1, 3, 4, 12, 13, 39, 40, 3279)] == [0, 1, 1, 2, 2, 3, 3, 4, 7]
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=1e-3)
    scheduler = StagedDecayLR(optimizer)
    rates = []
    for _ in range(14):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(1e-3)
    assert rates[1] == rates[3] == pytest.approx(1e-3 * 10 ** (-1 / 7))
    assert rates[4] == rates[12] == pytest.approx(1e-3 * 10 ** (-2 / 7))
    assert rates[13] == pytest.approx(1e-3 * 10 ** (-3 / 7))
