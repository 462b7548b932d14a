"""model.initialize_output_bias (Burda et al. 2016, section 5.1): the decoder's output biases start
at the logit of the training set's mean pixel; ``auto`` (the default) does it where it applies."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import compose_config

from vae_lab.errors import ConfigError
from vae_lab.model.build import build_datamodule, build_model

SMALL = ("data.train_subset=500", "data.val_size=500")


def build(data_root: Path, *overrides: str):
    cfg = compose_config(f"data.root={data_root}", *SMALL, *overrides)
    datamodule = build_datamodule(cfg)
    return build_model(cfg, datamodule), datamodule


def expected_logits(images: torch.Tensor, scale: float) -> torch.Tensor:
    mean = images.double().mean(0).flatten() / scale
    return torch.logit(mean.clamp(1e-3, 1 - 1e-3)).float()


@pytest.mark.parametrize("binarization, scale", [("dynamic", 255.0), ("static", 1.0)])
def test_default_bernoulli_mlp_starts_at_the_mean_image(data_root: Path, binarization: str, scale: float) -> None:
    model, datamodule = build(data_root, f"data.binarization={binarization}")
    bias = model.decoder.output.bias.detach()
    train = datamodule.splits["train"]
    assert train.shape[0] == 500
    # dynamic: the grey values (0..255) are the pixel probabilities; static: the one fixed draw (0/1).
    assert set(train.unique().tolist()) <= ({0, 1} if binarization == "static" else set(range(256)))
    assert torch.allclose(bias, expected_logits(train, scale), atol=1e-5)
    # The untrained decoder's mean image is the data's (up to the clamp at 1e-3 and the hidden layers' small
    # contribution): its mean pixel probability is within 0.02 of the data's.
    with torch.no_grad():
        probabilities = torch.sigmoid(model.decoder(torch.zeros(1, 50))).flatten()
    assert abs(probabilities.mean().item() - (train.double().mean() / scale).item()) < 0.02


def test_auto_leaves_other_likelihoods_at_the_default_init(data_root: Path) -> None:
    model, datamodule = build(data_root, "likelihood=gaussian", "data.binarization=none")
    bias = model.decoder.output.bias.detach()
    fan_in = model.decoder.output.in_features
    assert bias.abs().max() <= fan_in**-0.5  # PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in))


def test_false_keeps_the_default_init_and_true_where_it_cannot_apply_is_refused(data_root: Path) -> None:
    model, _ = build(data_root, "model.initialize_output_bias=false")
    assert model.decoder.output.bias.detach().abs().max() <= model.decoder.output.in_features**-0.5
    with pytest.raises(ConfigError, match=r"initialize_output_bias=true needs likelihood=bernoulli.*auto"):
        build(data_root, "model.initialize_output_bias=true", "likelihood=gaussian", "data.binarization=none")
