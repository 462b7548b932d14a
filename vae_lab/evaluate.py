"""Evaluate a finished run: ``python -m vae_lab.evaluate run_dir=<run dir> n_importance_samples=<k>``.

Rebuilds the model from the run's saved config (``<run dir>/.hydra/config.yaml``), loads the best
checkpoint (or ``checkpoint=<path>``, or ``run_dir=<a .ckpt file>``), computes the importance-sampled
log-likelihood and the other test metrics of :mod:`vae_lab.evaluation.importance_sampling`, prints them, and writes them
into the run's ``summary.json`` (atomically, keeping its other fields). Settings: conf/evaluate.yaml.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from vae_lab.errors import VaeLabError
from vae_lab.run import lock as run_lock

# The run directory's config and checkpoint are read as vae_lab.load_run reads them (vae_lab/run/loading.py).
from vae_lab.run.loading import (
    RUN_CONFIG,
    load_run_config,
    load_weights,
    locate,
    read_state_dict,
)
from vae_lab.run.state import read_summary

CONFIG_PATH = "pkg://vae_lab.conf"

log = logging.getLogger("vae_lab.evaluate")  # not __main__ under `python -m`


def evaluate_run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate the run named by ``cfg.run_dir``, update its summary.json; returns the summary."""
    from vae_lab.evaluation.decompositions import METRIC_NAMES
    from vae_lab.evaluation.importance_sampling import EvaluationSettings, ProgressPrinter, evaluate
    from vae_lab.files import write_json_atomically
    from vae_lab.model.build import build_datamodule, build_model
    from vae_lab.run.machine_checks import evaluation_device
    from vae_lab.run.provenance import provenance
    from vae_lab.run.settings import validate_evaluate_config
    from vae_lab.run.threads import evaluation_threads

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
    # A number, or auto: 1 or all cores, whichever its first batches run faster on (vae_lab/run/threads.py).
    threads = evaluation_threads(cfg.threads or run_cfg.get("threads"), device_type=device.type)
    datamodule.setup("test")
    result = evaluate(model, datamodule.splits["test"], settings, progress=ProgressPrinter(), threads=threads)

    summary_path = run_dir / "summary.json"
    summary = read_summary(run_dir) or {}
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
