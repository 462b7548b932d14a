"""What a vae_lab wandb run records so that its dashboard can answer the ablation.

- the config holds the job's Hydra group choices as a ``choices`` section (``choices.likelihood``,
  ``choices.prior``, ...): wandb groups and filters runs by config keys, not by tags;
- a ``job_type`` (``train``, ``evaluate``, ``report``);
- metric definitions: ``train/*`` and ``val/*`` on the ``epoch`` axis, the summary of ``val/elbo``
  its best (max) value, of ``test/nll_is`` its value at the end;
- the KL of each latent dimension as one bar chart per epoch (``<stage>/kl_per_dim_chart``; in the
  summary one list, ``<stage>/kl_per_dim``) instead of one scalar key per dimension (metrics.csv
  keeps its per-dimension columns, which the report reads);
- reconstructions, prior samples and latent traversals every ``images_every_n_epochs`` epochs, one
  image size per key (:class:`WandbImages`);
- opt-in, the best checkpoint as a model Artifact (:func:`log_best_checkpoint`).

Every call into wandb goes through the fail-safe logger (vae_lab.tracking.wandb_failsafe): a wandb failure
never takes the run down.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from vae_lab.lightning_adapter import wandb_init_arguments
from vae_lab.tracking.wandb_failsafe import FailSafeWandbLogger

#: The job types of vae_lab's wandb runs.
JOB_TYPES = ("train", "evaluate", "report")
#: The config section holding a job's group choices.
CHOICES = "choices"
#: ``val/kl_per_dim/07`` etc.: the per-dimension keys that metrics.csv keeps and wandb gets as one chart.
KL_PER_DIM_KEY = re.compile(r"^(?P<stage>.+)/kl_per_dim/(?P<dim>\d+)$")
#: The wandb keys of the images logged during training (one image size per key).
IMAGE_KEYS = ("images/reconstructions", "images/samples", "images/traversals")
#: Metrics whose wandb summary is an aggregate over the run (``{"max": best}``), never overwritten.
AGGREGATED_SUMMARIES = {"val/elbo": "max"}
#: Images logged during training: reconstructions of this many test images, this many prior samples.
EPOCH_IMAGES = 32


def group_choices(choices: Mapping[str, Any]) -> dict[str, Any]:
    """The job's config group choices (``likelihood: gaussian``, ...), without Hydra's own
    (``hydra/launcher``, ...)."""
    return {str(group): choice for group, choice in choices.items() if not str(group).startswith("hydra/")}


def run_config(config: Mapping[str, Any], choices: Mapping[str, Any]) -> dict[str, Any]:
    """The wandb config of a job: its resolved config plus a ``choices`` section."""
    return {**config, CHOICES: group_choices(choices)}


def define_metrics(run: Any) -> None:
    """The metric definitions of every vae_lab run (see the module doc)."""
    run.define_metric("epoch")
    for prefix in ("train", "val", "images"):
        run.define_metric(f"{prefix}/*", step_metric="epoch")
    for name, aggregate in AGGREGATED_SUMMARIES.items():
        run.define_metric(name, step_metric="epoch", summary=aggregate)
    run.define_metric("test/nll_is", summary="last")


def split_kl_per_dim(metrics: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """(the metrics without ``<stage>/kl_per_dim/NN`` keys, {stage: [KL of dimension 0, 1, ...]})."""
    scalars: dict[str, Any] = {}
    per_dim: dict[str, dict[int, float]] = {}
    for name, value in metrics.items():
        match = KL_PER_DIM_KEY.match(name)
        if match:
            per_dim.setdefault(match["stage"], {})[int(match["dim"])] = float(value)
        else:
            scalars[name] = value
    return scalars, {stage: [values[d] for d in sorted(values)] for stage, values in per_dim.items()}


def kl_per_dim_chart(values: list[float], stage: str) -> Any:
    """A wandb bar chart of the KL of each latent dimension (nats)."""
    import wandb

    table = wandb.Table(columns=["dimension", "kl"], data=[[dim, value] for dim, value in enumerate(values)])
    return wandb.plot.bar(table, "dimension", "kl", title=f"{stage}: KL per latent dimension (nats)")


class DashboardWandbLogger(FailSafeWandbLogger):
    """vae_lab's wandb logger: fail-safe, with the metric definitions and the KL-per-dimension chart
    of the module doc."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metrics_defined = False
        # Lightning always passes wandb.init(anonymous=None), a deprecated setting that wandb warns
        # about on every run; no public argument leaves it out (see vae_lab.lightning_adapter).
        wandb_init_arguments(self).pop("anonymous", None)

    def start(self) -> bool:
        started = super().start()
        if started and not self.metrics_defined:
            self.run_safely("define_metric", lambda: define_metrics(self.experiment))
            self.metrics_defined = True
        return started and not self.failed

    def status(self) -> dict[str, Any]:
        """What summary.json records about wandb, with the run's group, project and entity (which
        ``vae_lab.evaluate`` needs to update the record)."""
        status = super().status()
        if status["status"] == "ok" and self.run is not None:
            status.update({name: getattr(self.run, name, None) for name in ("group", "project", "entity")})
        return status

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        scalars, per_dim = split_kl_per_dim(metrics)
        if per_dim:
            charts = self.run_safely(
                "KL per dimension chart",
                lambda: {f"{stage}/kl_per_dim_chart": kl_per_dim_chart(dims, stage) for stage, dims in per_dim.items()},
            )
            scalars.update(charts or {})
        super().log_metrics(scalars, step)

    def update_summary(self, metrics: Mapping[str, Any]) -> None:
        """Put the run's final metrics into its wandb summary, the KL per dimension as one list per
        stage (``val/kl_per_dim``), not one key per dimension. ``val/elbo`` keeps wandb's aggregate,
        its best value over the epochs (the best checkpoint's re-validation draws other noise)."""
        scalars, per_dim = split_kl_per_dim(metrics)
        scalars = {name: value for name, value in scalars.items() if name not in AGGREGATED_SUMMARIES}
        scalars.update({f"{stage}/kl_per_dim": values for stage, values in per_dim.items()})
        self.run_safely("summary update", lambda: self.experiment.summary.update(scalars))


def log_best_checkpoint(logger: FailSafeWandbLogger, checkpoint: Path, metadata: Mapping[str, Any]) -> None:
    """Log ``checkpoint`` as the model Artifact ``model-<run id>`` (alias ``best``), online or
    offline (``wandb sync`` uploads it with the run)."""

    def log() -> None:
        import wandb

        run = logger.experiment
        artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata=dict(metadata))
        artifact.add_file(str(checkpoint), name="best.ckpt")
        run.log_artifact(artifact, aliases=["best"])

    logger.run_safely("checkpoint artifact", log)


class WandbImages(Callback):
    """Every ``every_n_epochs`` epochs (after validation, rank 0): reconstructions of test images,
    prior samples and latent traversals to wandb, each under its own key (:data:`IMAGE_KEYS`), so
    that the dashboard shows them evolving. The model goes back to training mode afterwards."""

    def __init__(self, every_n_epochs: int) -> None:
        # The wandb logger is looked up in trainer.loggers at each epoch, not held: a callback that held
        # it would copy it along with the callbacks (and WandbLogger starts its run when it is pickled).
        self.every_n_epochs = every_n_epochs

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        fitting = trainer.state.fn == "fit"  # not the re-validation of the best checkpoint after training
        if not fitting or trainer.sanity_checking or not trainer.is_global_zero:
            return
        logger = next((each for each in trainer.loggers if isinstance(each, FailSafeWandbLogger)), None)
        if logger is None or logger.failed or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        logger.run_safely("epoch images", lambda: self.log_images(trainer, pl_module, logger))

    def log_images(self, trainer: L.Trainer, model: Any, logger: FailSafeWandbLogger) -> None:
        import torch
        import wandb
        from torchvision.utils import make_grid

        from vae_lab.evaluation.images import reconstruction_grid
        from vae_lab.evaluation.latent_pictures import TRAVERSAL_DIMENSIONS, kl_per_latent_dimension, latent_traversal

        datamodule = trainer.datamodule
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                test_images = datamodule.example_images("test", EPOCH_IMAGES).to(model.device)
                reconstructions = reconstruction_grid(
                    model.data_form.to_unit_interval(test_images), model.reconstruct(test_images)
                )
                kl, _ = kl_per_latent_dimension(model, test_images)
                dimensions = torch.argsort(kl, descending=True)[: min(TRAVERSAL_DIMENSIONS, kl.numel())].tolist()
                traversal, offsets = latent_traversal(model, test_images[0], dimensions)
                grids = {
                    "images/reconstructions": (reconstructions, 8, "rows: test images, their reconstructions"),
                    "images/samples": (model.generate(EPOCH_IMAGES), 8, "prior samples, E[x|z]"),
                    "images/traversals": (traversal, len(offsets) + 1, f"latent dims {dimensions} (largest KL first)"),
                }
                logged = {
                    key: wandb.Image(
                        make_grid(images.float().cpu().clamp(0, 1), nrow=columns, padding=2, pad_value=1.0),
                        caption=f"epoch {trainer.current_epoch}: {caption}",
                    )
                    for key, (images, columns, caption) in grids.items()
                }
        finally:
            model.train(was_training)
        steps = {"epoch": trainer.current_epoch, "trainer/global_step": trainer.global_step}
        logger.experiment.log({**logged, **steps})


def wandb_callbacks(logger: FailSafeWandbLogger | None, settings: Mapping[str, Any] | None) -> list[Callback]:
    """The callbacks a run with this wandb logger adds: :class:`WandbImages` every
    ``logger.wandb.images_every_n_epochs`` epochs (none when it is 0 or wandb is off or failed)."""
    if logger is None or logger.failed or not settings:
        return []
    every = int(settings.get("images_every_n_epochs", 0) or 0)
    return [WandbImages(every)] if every > 0 else []


def configured_callbacks(cfg: Mapping[str, Any]) -> list[Callback]:
    """The Lightning callbacks of the config's ``callbacks`` section (``callbacks.<name>=null`` removes one)."""
    from hydra.utils import instantiate

    return [instantiate(spec) for spec in (cfg.get("callbacks") or {}).values() if spec]


def log_best_checkpoint_if_asked(
    logger: FailSafeWandbLogger | None, settings: Mapping[str, Any], checkpoint: Path, metrics: Mapping[str, Any]
) -> None:
    """With ``logger.wandb.log_checkpoint=true``, the best checkpoint as a model Artifact, its
    metadata the run's final metrics (scalars)."""
    if logger is None or logger.failed or not settings.get("log_checkpoint"):
        return
    scalars, _ = split_kl_per_dim(metrics)
    log_best_checkpoint(logger, checkpoint, {k: v for k, v in scalars.items() if isinstance(v, (int, float))})


def record_evaluation(
    run_dir: Path, summary: Mapping[str, Any], metrics: Mapping[str, Any], run_cfg: Any
) -> str | None:
    """Bring the wandb record of a training run up to date after ``vae_lab.evaluate``: online, by
    resuming the training run by its id and updating its summary; offline (wandb cannot resume an
    offline run), by a new run of ``job_type=evaluate`` in the training run's group, whose config
    names the training run (``evaluated_run``) and holds its ``choices``. Returns what was done
    (one line, also logged), or None when the training run had no wandb run. A wandb failure is
    reported, never raised: ``summary.json`` is already written."""
    import logging

    from vae_lab.tracking.wandb_mode import resolve_wandb_mode

    log = logging.getLogger(__name__)
    record = summary.get("wandb") or {}
    settings = _wandb_settings(run_cfg)
    if record.get("status") != "ok" or not record.get("id") or not settings:
        return None
    mode = resolve_wandb_mode(str(settings.get("mode", "auto")))
    if mode == "disabled":
        return None
    try:
        import wandb

        from vae_lab.evaluation.importance_sampling import log_metrics

        resume = mode == "online" and record.get("mode") == "online"
        common = {
            "project": record.get("project") or settings.get("project"),
            "entity": record.get("entity") or settings.get("entity"),
            "dir": str(run_dir),
            "mode": mode,
            "settings": wandb.Settings(init_timeout=float(settings.get("init_timeout", 60))),
        }
        if resume:
            run = wandb.init(id=record["id"], resume="must", **common)
        else:
            run = wandb.init(
                job_type="evaluate",
                group=record.get("group") or None,
                name=f"evaluate {record['id']}",
                tags=["evaluate"],
                config={"evaluated_run": record["id"], CHOICES: group_choices(summary.get("choices") or {})},
                **common,
            )
        define_metrics(run)
        log_metrics(_RunLogger(run), metrics, step=0)
        done = (
            f"updated the summary of wandb run {record['id']}"
            if resume
            else f"logged wandb run {run.id} (job_type=evaluate, {mode}) for training run {record['id']}"
        )
        run.finish()
    except Exception as error:  # the evaluation is saved; wandb is a copy
        log.warning(
            "vae_lab.evaluate: wandb was not updated (%s: %s); summary.json holds the results.",
            type(error).__name__,
            error,
        )
        return None
    log.info("vae_lab.evaluate: %s", done)
    return done


def _wandb_settings(run_cfg: Any) -> dict[str, Any] | None:
    """The ``logger.wandb`` section of a run's saved config, or None."""
    from omegaconf import OmegaConf

    value = OmegaConf.select(run_cfg, "logger.wandb", default=None)
    return OmegaConf.to_container(value, resolve=True) if value is not None else None


class _RunLogger:
    """A wandb run as vae_lab.evaluation.importance_sampling.log_metrics expects a fail-safe logger
    (errors are raised here and reported by :func:`record_evaluation`)."""

    def __init__(self, run: Any) -> None:
        self.experiment = run

    def run_safely(self, during: str, call: Any) -> Any:
        return call()
