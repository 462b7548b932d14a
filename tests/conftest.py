"""Shared fixtures: the real data root, tiny configs and a clean environment per test."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("VAE_LAB_DATA", REPO.parent / "shared" / "data")).resolve()

#: Overrides that make any run tiny: a few hundred MNIST images, one short epoch, no tracker.
TINY = [
    "data.train_subset=500",
    "data.val_size=500",
    "data.batch_size=50",
    "data.eval_batch_size=500",
    "trainer.max_epochs=1",
    "logger=csv",
    # The end-of-training evaluation still runs, on a tiny scale (the default is k = 5000 on every test image).
    "eval.n_importance_samples=20",
    "eval.n_test_images=200",
]


def pytest_configure(config: pytest.Config) -> None:
    """Every run the tests start (in process or as a subprocess) finds the data where the tests do."""
    os.environ["VAE_LAB_DATA"] = str(DATA_ROOT)


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA_ROOT / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.fail(f"real MNIST not found under {DATA_ROOT}; set VAE_LAB_DATA to the shared data folder")
    return DATA_ROOT


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees a wandb key or leaks distributed-training variables into the next one."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("NETRC", os.devnull)


def compose_config(*overrides: str):
    """The composed config of ``python -m vae_lab.train <overrides>``, in-process."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="vae_lab.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def run_cli(module: str, *overrides: str, cwd: Path, timeout: float = 600, env: dict | None = None):
    """Run ``python -m <module> <overrides>`` in a subprocess, as a user would."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", module, *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def cifar_root(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with the real CIFAR-10 sample images in the official ``cifar-10-batches-py/``
    format (see tests/cifar_sample.py) and the real MNIST beside them."""
    from cifar_sample import write_cifar_batches

    root = tmp_path_factory.mktemp("cifar_root")
    write_cifar_batches(data_root / "cifar10-sample", root)
    (root / "MNIST").symlink_to(data_root / "MNIST", target_is_directory=True)
    return root


@pytest.fixture(scope="session")
def tiny_default_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """One tiny run of the default command (wandb logger, which goes offline without an API key):
    ``(run directory, completed process)``. Shared by the output and wandb tests."""
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        os.environ.pop(name, None)
    run_dir = tmp_path_factory.mktemp("tiny_default_run") / "run"
    overrides = [o for o in TINY if not o.startswith("logger=")]
    result = run_cli(
        "vae_lab.train",
        *overrides,
        f"hydra.run.dir={run_dir}",
        cwd=run_dir.parent,
        env={"WANDB_SILENT": "true", "NETRC": os.devnull},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def logged_metrics(summary_metrics: dict) -> dict[str, float]:
    """The scalars a run logs for its summary's metrics: a list-valued metric (``test/kl_per_dim``) is
    logged as one zero-padded scalar per dimension (``test/kl_per_dim/00`` ...)."""
    flat: dict[str, float] = {}
    for key, value in summary_metrics.items():
        if isinstance(value, list):
            width = len(str(len(value) - 1))
            flat.update({f"{key}/{j:0{width}d}": float(v) for j, v in enumerate(value)})
        else:
            flat[key] = float(value)
    return flat


def quiet_trainer(**options: Any) -> Any:
    """A CPU ``lightning.Trainer`` that writes nothing (no logger, checkpoint, progress bar or
    model summary); ``options`` are any other Trainer arguments (max_epochs, limit_*_batches, ...)."""
    import lightning as L

    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )
