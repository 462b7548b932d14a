"""Evaluate a finished run: ``python -m vae_lab.evaluate run_dir=<run dir> n_importance_samples=<k>``.

Rebuilds the model from the run's saved config (``<run dir>/.hydra/config.yaml``), loads the best
checkpoint (or ``checkpoint=<path>``, or ``run_dir=<a .ckpt file>``), computes the importance-sampled
log-likelihood and the other test metrics of :mod:`vae_lab.evaluation.importance_sampling`, prints them, and writes them
into the run's ``summary.json`` (atomically, keeping its other fields). Settings: conf/evaluate.yaml.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from vae_lab.errors import CheckpointError, ConfigError, VaeLabError
from vae_lab.run import lock as run_lock
from vae_lab.run.state import with_current_targets

CONFIG_PATH = "pkg://vae_lab.conf"

log = logging.getLogger("vae_lab.evaluate")  # not __main__ under `python -m`
RUN_CONFIG = Path(".hydra") / "config.yaml"
DEFAULT_CHECKPOINT = Path("checkpoints") / "best.ckpt"


def locate(run_dir: str | None, checkpoint: str | None) -> tuple[Path, Path]:
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
    summary = read_summary(path / "summary.json")
    return path, path / summary.get("best_checkpoint", DEFAULT_CHECKPOINT)


def read_summary(path: Path) -> dict[str, Any]:
    """The run's summary.json, or an empty one when the run did not write it."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"{path} is not valid JSON ({error}); move it aside and run again to write a fresh one."
        ) from error


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


def evaluate_run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate the run named by ``cfg.run_dir``, update its summary.json; returns the summary."""
    import torch

    from vae_lab.evaluation.decompositions import METRIC_NAMES
    from vae_lab.evaluation.importance_sampling import EvaluationSettings, ProgressPrinter, evaluate
    from vae_lab.files import write_json_atomically
    from vae_lab.model.build import build_datamodule, build_model
    from vae_lab.run.machine_checks import evaluation_device
    from vae_lab.run.provenance import provenance
    from vae_lab.run.settings import validate_evaluate_config
    from vae_lab.run.threads import choose_threads

    validate_evaluate_config(cfg)  # unknown keys, types and ranges, before anything is read
    device = evaluation_device(cfg.device, cfg.memory_budget_mb, cfg.n_importance_samples)
    run_dir, checkpoint = locate(cfg.run_dir, cfg.checkpoint)
    run_lock.lock(run_dir, "python -m vae_lab.evaluate")  # one writer per run dir: refused while a run holds it
    run_cfg = load_run_config(run_dir)
    if cfg.data_root:
        run_cfg.data.root = cfg.data_root
    # A bad checkpoint, or one of other settings than the run's config, is refused before anything is built.
    state_dict = read_state_dict(checkpoint, run_cfg, str(run_dir / RUN_CONFIG))
    seed = cfg.seed
    if seed is None:
        seed = OmegaConf.select(run_cfg, "eval.seed", default=None)
    if seed is None:
        seed = run_cfg.get("seed", 0)
    # The evaluation's own settings are the fields of EvaluationSettings that conf/evaluate.yaml sets.
    names = {field.name for field in dataclasses.fields(EvaluationSettings)}
    given = {name: value for name, value in OmegaConf.to_container(cfg, resolve=True).items() if name in names}
    settings = EvaluationSettings.from_config(given, seed=int(seed))

    datamodule = build_datamodule(run_cfg)
    model = build_model(run_cfg, datamodule)
    load_weights(model, checkpoint, state_dict)
    model.to(device)
    threads = cfg.threads or run_cfg.get("threads")
    if threads:  # a number, or auto: by model size, as in training (vae_lab/run/threads.py)
        torch.set_num_threads(
            choose_threads(threads, model, datamodule.image_shape, datamodule.batch_size, device_type=device.type)
        )
    datamodule.setup("test")
    result = evaluate(model, datamodule.splits["test"], settings, progress=ProgressPrinter())

    summary_path = run_dir / "summary.json"
    summary = read_summary(summary_path)
    for name in METRIC_NAMES:  # ELBO surgery and the gaps of an earlier evaluation, unless measured again
        summary.get("metrics", {}).pop(name, None)
    summary.setdefault("metrics", {}).update(result.metrics())
    summary["evaluation"] = {
        **result.details(),
        "checkpoint": str(checkpoint.relative_to(run_dir)) if checkpoint.is_relative_to(run_dir) else str(checkpoint),
        "provenance": provenance(device),
    }
    write_json_atomically(summary_path, summary)
    run_lock.release(run_dir)
    if cfg.get("wandb", True):
        from vae_lab.tracking.wandb_run import record_evaluation

        record_evaluation(run_dir, summary, result.metrics(), run_cfg)

    trained_elbo = summary["metrics"].get("test/elbo")
    extra_rows = [] if trained_elbo is None else [("-ELBO of trainer.test (test/elbo)", f"{-trained_elbo:.3f} nats")]
    log.info(result.table(extra_rows))
    log.info(f"vae_lab.evaluate: updated {summary_path}")
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        evaluate_run(cfg)
    except VaeLabError as error:
        print(f"vae_lab: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
