"""likelihood=gaussian likelihood.variance=optimal: the calibrated decoder (Rybkin et al. 2021). In training
one shared sigma, the batch's maximum-likelihood value in closed form; in evaluation one fixed sigma, the
training set's, carried in the checkpoint, so the test NLL stays a bound."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from conftest import TINY, compose_config
from torch.distributions import Normal

from vae_lab.model.build import build_datamodule, build_model
from vae_lab.model.likelihoods import GaussianLikelihood
from vae_lab.model.likelihoods.calibrated import CalibratedNormal
from vae_lab.run.checkpoints import checkpoint_callbacks


def test_training_sigma_is_the_batch_maximum_likelihood_value() -> None:
    torch.manual_seed(0)
    likelihood = GaussianLikelihood(channels=1, variance="optimal").train()
    decoder_output = torch.rand(3, 4, 1, 5, 5)  # [L, B, C, H, W]
    x = torch.rand(4, 1, 5, 5)
    distribution = likelihood(decoder_output)
    assert isinstance(distribution.base_dist, CalibratedNormal)
    sigma = (x - decoder_output).square().mean().sqrt()  # over samples, images, channels and pixels
    torch.testing.assert_close(distribution.log_prob(x), Normal(decoder_output, sigma).log_prob(x).sum((-3, -2, -1)))
    total = distribution.log_prob(x).sum()
    for factor in (0.95, 1.05):  # the maximum of the batch's summed log-likelihood over a shared sigma
        assert Normal(decoder_output, sigma * factor).log_prob(x).sum() < total


def test_sigma_has_its_floor() -> None:
    likelihood = GaussianLikelihood(channels=1, variance="optimal", min_sigma=0.05).train()
    mean = torch.full((2, 1, 3, 3), 0.5)
    log_prob = likelihood(mean).log_prob(mean + 1e-4)
    torch.testing.assert_close(log_prob, Normal(mean, 0.05).log_prob(mean + 1e-4).sum((-3, -2, -1)))


def test_fit_sets_the_training_set_sigma_that_evaluation_uses(data_root: Path, tmp_path: Path) -> None:
    """A real fit. With lr = 0 the model stays as initialized, so the sigma pooled over the epoch's training
    batches must match the training set's ML sigma recomputed here; evaluation then uses that sigma, not
    one fitted to the images it scores, and the checkpoint carries it."""
    overrides = [o for o in TINY if not o.startswith("trainer.max_epochs")]
    cfg = compose_config(
        *overrides, "likelihood=gaussian", "likelihood.variance=optimal", "optimizer.lr=0.0", "optimizer.fused=false"
    )
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(checkpoint_callbacks(tmp_path)),
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, datamodule=datamodule)
    fitted = float(model.likelihood.training_set_sigma.scale)
    assert fitted != cfg.likelihood.fixed_sigma

    model.eval()
    train = (datamodule.splits["train"].float() + 0.5) / 256  # the 8-bit images, dequantized to their mean
    with torch.no_grad():
        torch.manual_seed(1)
        mean = model.decoder(model.posterior(train).rsample())
        recomputed = float((train - mean).square().mean().sqrt())
        assert math.isclose(fitted, recomputed, rel_tol=0.02), (fitted, recomputed)

        test = datamodule.splits["test"][:100]
        z = model.posterior(test).rsample()
        decoder_output = model.decoder(z)
        evaluated = model.observation_model(z).log_prob(test)
        torch.testing.assert_close(evaluated, Normal(decoder_output, fitted).log_prob(test).sum((-3, -2, -1)))
        model.train()  # fitting sigma to the test images themselves would score them higher
        assert model.observation_model(z).log_prob(test).mean() > evaluated.mean()

    checkpoint = torch.load(tmp_path / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert float(checkpoint["state_dict"]["likelihood.training_set_sigma.scale"]) == fitted
