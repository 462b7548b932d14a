"""The entry point behaves as any Hydra app, and its configs ship inside the package, so a plain
(non-editable) install finds them from any directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_cli

CONFIG_FILES = sorted(str(path.relative_to(REPO / "conf")) for path in (REPO / "conf").rglob("*.yaml"))


def test_help_lists_the_config_groups(tmp_path: Path) -> None:
    result = run_cli("vae_lab.train", "--help", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    section = result.stdout.split("== Configuration groups ==", 1)[1].split("== Config ==", 1)[0]
    groups = {
        line.split(":", 1)[0]: set(line.split(":", 1)[1].replace(" ", "").split(","))
        for line in section.splitlines()
        if ":" in line and "(" not in line
    }
    expected = {
        "data": {"cifar", "mnist"},
        "likelihood": {"bernoulli", "gaussian"},
        "prior": {"standard"},
        "model": {"conv", "mlp"},
        "objective": {"elbo"},
        "logger": {"csv", "none", "wandb"},
        "trainer": {"default"},
    }
    for group, options in expected.items():
        assert options <= groups.get(group, set()), (group, groups)
    assert not list(tmp_path.iterdir())  # --help writes nothing


def test_cfg_job_prints_the_composed_config(tmp_path: Path) -> None:
    result = run_cli(
        "vae_lab.train", "--cfg", "job", "objective.n_samples=5", "data.batch_size=20", cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["objective"]["n_samples"] == 5 and config["objective"]["kl_weight"] == 1.0
    assert config["data"]["batch_size"] == 20 and config["optimizer"]["lr"] == 1e-3
    assert config["model"]["latent_dim"] == 50 and config["model"]["encoder"]["hidden_sizes"] == [200, 200]
    assert config["likelihood"]["_target_"] == "vae_lab.model.likelihoods.BernoulliLikelihood"
    assert config["logger"]["wandb"]["mode"] == "auto" and config["seed"] == 0
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of the source tree, so no build/ folder is left in (or reused from) the repo."""
    out = tmp_path_factory.mktemp("wheel")
    source = out / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", "outputs", "multirun", "wandb", "lightning_logs"
        ),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("vae_lab-*.whl")
    return built


def test_wheel_ships_every_config_and_subpackage(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "vae_lab/conf/config.yaml" in names
    for config in CONFIG_FILES:
        assert f"vae_lab/conf/{config}" in names, config
    for package in sorted({path.parent for path in (REPO / "vae_lab").rglob("*.py")}):
        init = f"{package.relative_to(REPO)}/__init__.py"
        assert init in names, f"{init} missing: add the subpackage to [tool.setuptools] packages"


def test_plain_install_runs_from_another_directory(wheel: Path, tmp_path: Path) -> None:
    """Install the wheel (not editable) into a folder, put it first on the path, and run the CLI
    from an unrelated directory: the code and the configs come from the installed copy."""
    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {"PYTHONPATH": str(target)}
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "import vae_lab, vae_lab.model.build, vae_lab.train, vae_lab.evaluate; print(vae_lab.__file__)",
        ],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip().startswith(str(target))
    result = run_cli(
        "vae_lab.train", "--cfg", "job", "data=cifar", "likelihood=gaussian", cwd=elsewhere, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["data"]["_target_"] == "vae_lab.data.CIFAR10DataModule"
    assert config["model"]["encoder"]["_target_"] == "vae_lab.model.networks.ConvEncoder"
    assert not list(elsewhere.iterdir())
