"""Bad input is refused at start-up with one clear message, through the real CLI (exit status 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY, compose_config, run_cli

from vae_lab.data.cifar import FOLDER as CIFAR_FOLDER
from vae_lab.data.cifar import TEST_BATCH, TRAIN_BATCHES
from vae_lab.data.mnist import RAW_FILES
from vae_lab.errors import ConfigError, DataNotFoundError
from vae_lab.model.build import build_datamodule


def assert_refused_before_work(result, run_dir: Path) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    # Nothing was started: no checkpoints, metrics, summary or wandb run.
    assert not {"checkpoints", "metrics.csv", "summary.json", "wandb"} & {p.name for p in run_dir.glob("*")}


def test_missing_mnist_names_every_file_and_the_folder(tmp_path: Path) -> None:
    empty_root, run_dir = tmp_path / "empty", tmp_path / "run"
    empty_root.mkdir()
    # The default logger (wandb) too: the data check comes before any tracker starts.
    result = run_cli("vae_lab.train", f"data.root={empty_root}", f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=120)
    assert_refused_before_work(result, run_dir)
    message = result.stderr
    assert "MNIST" in message and str(empty_root) in message
    for name in RAW_FILES:
        assert str(empty_root / "MNIST" / "raw" / name) in message
    assert "data.root" in message and "VAE_LAB_DATA" in message and "data.download=true" in message


def test_missing_cifar_names_every_file(tmp_path: Path) -> None:
    # In-process through build_datamodule: the error comes out as itself, not wrapped by Hydra.
    config = compose_config("data=cifar", "likelihood=gaussian", f"data.root={tmp_path}")
    with pytest.raises(DataNotFoundError) as error:
        build_datamodule(config)
    for name in (*TRAIN_BATCHES, TEST_BATCH):
        assert str(tmp_path / CIFAR_FOLDER / name) in str(error.value)
    assert "cifar-10-python.tar.gz" in str(error.value)


def test_bernoulli_on_grey_pixels_is_refused_with_the_fix(data_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(
        "vae_lab.train",
        *TINY,
        "logger=wandb",
        "likelihood=bernoulli",
        "data.binarization=none",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        timeout=120,
    )
    assert_refused_before_work(result, run_dir)
    message = result.stderr
    assert "binary" in message and "data.binarization=none" in message  # why
    assert "data.binarization=dynamic" in message and "likelihood=gaussian" in message  # what to use


def test_gaussian_on_binarized_pixels_is_refused(data_root: Path) -> None:
    config = compose_config("likelihood=gaussian", "data.binarization=dynamic", f"data.root={data_root}")
    with pytest.raises(ConfigError) as error:
        build_datamodule(config)
    assert "likelihood=bernoulli" in str(error.value) and "data.binarization=none" in str(error.value)


def test_misspelt_choice_lists_the_valid_ones(tmp_path: Path) -> None:
    result = run_cli(
        "vae_lab.train", "likelihood=gausian", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=120
    )
    assert result.returncode != 0
    assert "gausian" in result.stderr
    assert "bernoulli" in result.stderr and "gaussian" in result.stderr
    assert not (tmp_path / "run").exists()
