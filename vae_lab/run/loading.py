"""Reading a finished run back: its saved config, its checkpoint and the model they make.

``python -m vae_lab.evaluate`` and :func:`load_run` (``vae_lab.load_run``, for notebooks) both go
through here, so both refuse the same bad inputs with the same messages: a folder that is not a run,
an unreadable config, a checkpoint that is truncated, altered, non-finite or written with other model
or data settings than the run's config (vae_lab.run.checkpoints). A run written before the package
was laid out by concept is read with its classes' current paths (vae_lab.run.state.with_current_targets).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from vae_lab.errors import CheckpointError, ConfigError
from vae_lab.run.state import read_summary, with_current_targets

if TYPE_CHECKING:
    from vae_lab.data import ImageDataModule
    from vae_lab.model.vae import VAE

RUN_CONFIG = Path(".hydra") / "config.yaml"
DEFAULT_CHECKPOINT = Path("checkpoints") / "best.ckpt"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


def locate(run_dir: str | os.PathLike | None, checkpoint: str | os.PathLike | None) -> tuple[Path, Path]:
    """(run directory, checkpoint file) from ``run_dir`` (a run directory or a checkpoint in one)
    and an optional explicit ``checkpoint``."""
    if not run_dir:
        raise ConfigError("run_dir is required: python -m vae_lab.evaluate run_dir=<run dir or checkpoint file>.")
    path = Path(run_dir).expanduser().resolve()
    if path.is_file():
        checkpoint = checkpoint or str(path)
        candidates = [path.parent, path.parent.parent]
        found = next((folder for folder in candidates if (folder / RUN_CONFIG).is_file()), None)
        if found is None:
            raise ConfigError(
                f"{path} is a file, but neither {path.parent} nor {path.parent.parent} holds the run's {RUN_CONFIG}; "
                "pass run_dir=<the run's output directory> (and checkpoint=<file>)."
            )
        path = found
    if not (path / RUN_CONFIG).is_file():
        raise ConfigError(
            f"{path} is not a vae_lab run directory: {RUN_CONFIG} is missing. Pass the output directory of a "
            "`python -m vae_lab.train` run (hydra.run.dir), which holds .hydra/, checkpoints/ and summary.json."
        )
    if checkpoint:
        return path, Path(checkpoint).expanduser().resolve()
    summary = read_summary(path) or {}
    return path, path / summary.get("best_checkpoint", DEFAULT_CHECKPOINT)


def read_state_dict(checkpoint: Path, config: DictConfig | None = None, config_source: str = "") -> dict[str, Any]:
    """The model parameters in a Lightning checkpoint; CheckpointError when the file is missing,
    truncated, corrupt, not a Lightning checkpoint, holds non-finite weights, or was written with
    other model or data settings than ``config`` (from ``config_source``) (vae_lab.run.checkpoints)."""
    from vae_lab.run.checkpoints import check_checkpoint

    if not checkpoint.is_file():
        listing = sorted(p.name for p in checkpoint.parent.glob("*.ckpt")) if checkpoint.parent.is_dir() else []
        raise CheckpointError(
            f"no checkpoint at {checkpoint}"
            + (f" (that folder holds: {', '.join(listing)}); pass checkpoint=<one of them>." if listing else ".")
        )
    resolved = None if config is None else OmegaConf.to_container(config, resolve=True)
    content = check_checkpoint(checkpoint, config=resolved, config_source=config_source or "the run's config")
    # A model compiled with torch.compile saves its parameters under `_orig_mod.`.
    return {key.replace("_orig_mod.", ""): value for key, value in content["state_dict"].items()}


def load_weights(model: Any, checkpoint: Path, state_dict: dict[str, Any] | None = None) -> None:
    """Load a Lightning checkpoint's parameters into ``model``; CheckpointError when it cannot be
    read (see :func:`read_state_dict`) or holds another model's parameters than this run's config builds."""
    if state_dict is None:
        state_dict = read_state_dict(checkpoint)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"{checkpoint} holds the parameters of a different model than this run's config builds: "
            f"{' '.join(str(error).split())[:400]}. Evaluate it with the run "
            "directory that wrote it."
        ) from error


def load_run_config(run_dir: Path) -> DictConfig:
    """The run's saved config (``<run dir>/.hydra/config.yaml``); ConfigError naming the file when it
    is not readable YAML, or not a config this version of vae_lab can build."""
    import yaml

    from vae_lab.run.settings import validate_config

    path = run_dir / RUN_CONFIG
    try:
        run_cfg = OmegaConf.load(path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError) as error:
        raise ConfigError(
            f"{path} cannot be read as the run's config ({' '.join(str(error).split())[:300]}). It is written by "
            "`python -m vae_lab.train` when the run starts: restore it from a copy, or re-run the training."
        ) from error
    if not isinstance(run_cfg, DictConfig):
        raise ConfigError(f"{path} holds a {type(run_cfg).__name__}, not the run's config (a mapping); restore it.")
    run_cfg = with_current_targets(run_cfg)  # a run written before the package moved
    try:
        validate_config(run_cfg)
    except ConfigError as error:
        raise ConfigError(f"{path}, the run's saved config: {error}") from None
    return run_cfg


@dataclass(frozen=True)
class LoadedRun:
    """A finished run, read back for a notebook (:func:`load_run`).

    - ``model``: the trained :class:`~vae_lab.model.vae.VAE`, in eval mode on the chosen device:
      ``model.posterior(x)`` is q(z|x), ``model.reconstruct(x)``, ``model.generate(n)``,
      ``model.elbo_terms(x, n_samples).elbo`` the ELBO of each image (nats);
    - ``datamodule``: the run's data module (the same splits, binarization and batch sizes), its
      images on the CPU in the form the model takes: ``datamodule.splits["test"]``,
      ``datamodule.example_images("test", n)``, ``datamodule.test_dataloader()``;
    - ``config`` (the run's composed config), ``summary`` (its summary.json, ``{}`` if none),
      ``run_dir`` and ``checkpoint`` (the file the weights came from).
    """

    model: VAE
    datamodule: ImageDataModule
    config: DictConfig
    summary: dict[str, Any]
    run_dir: Path
    checkpoint: Path


def load_run(
    run_dir: str | os.PathLike,
    checkpoint: str | os.PathLike = "best",
    device: str = "cpu",
    data_root: str | os.PathLike | None = None,
) -> LoadedRun:
    """Read a finished ``python -m vae_lab.train`` run back: its model with the trained weights, ready to
    encode, reconstruct, sample and score, and its data module (see :class:`LoadedRun`).

    ``run_dir``: the run's output directory (or a checkpoint file inside it: then that file). ``checkpoint``: ``"best"``
    (the best ``val/elbo``, the one the run evaluated), ``"last"`` (the end of the last epoch) or a path.
    ``device``: ``cpu``, ``cuda``, ``cuda:<i>`` or ``auto`` (a GPU when there is one). ``data_root``: where
    the data set is, when not where the run found it (its ``data.root``, by default ``$VAE_LAB_DATA``).

    Building the model needs the data files, as training did: the data module gives the image shape,
    and the default decoder's output biases and the VampPrior's pseudo-inputs start from training
    images (the checkpoint's weights then replace them). Bad input (not a run directory, an unknown
    device, a truncated, altered or foreign checkpoint) raises a VaeLabError naming the problem and the fix.
    Nothing in the run directory is written.
    """
    from vae_lab.model.build import build_datamodule, build_model
    from vae_lab.run.machine_checks import evaluation_device

    if not isinstance(checkpoint, (str, os.PathLike)) or not str(checkpoint):
        raise ConfigError(f"checkpoint={checkpoint!r}: use 'best', 'last' or the path of a .ckpt file.")
    target = evaluation_device(str(device))
    named = str(checkpoint) in ("best", "last")
    path, found = locate(run_dir, None if named else checkpoint)
    if str(checkpoint) == "last":
        found = path / LAST_CHECKPOINT
    config = load_run_config(path)
    if data_root is not None:
        config.data.root = str(Path(data_root).expanduser().resolve())
    state_dict = read_state_dict(found, config, str(path / RUN_CONFIG))  # refused before anything is built
    datamodule = build_datamodule(config)
    model = build_model(config, datamodule)
    load_weights(model, found, state_dict)
    model.to(target).eval()
    datamodule.setup()  # the splits, as the run served them
    return LoadedRun(model, datamodule, config, read_summary(path) or {}, path, found)
