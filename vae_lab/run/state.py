"""The state of a run directory, read from its ``summary.json`` and ``checkpoints/last.ckpt``, and
what a new launch into it does: start fresh, resume, skip, or refuse.

``summary.json`` has ``status``:

- ``running``: written when a run starts (with its resolved config and wandb run id); a run that
  stays ``running`` was killed;
- ``complete``: written when it ends (the full summary of vae_lab.train);
- ``failed`` / ``interrupted``: written when it raised or was stopped by a signal (vae_lab.run.stopped_runs).

With ``resume=true`` a complete run is skipped (or, given a larger ``trainer.max_epochs`` than it was
trained with, extended: it trains the extra epochs from its last checkpoint and is evaluated again),
and any other run continues from its last epoch-end checkpoint (``checkpoints/last.ckpt``, written at
the end of every epoch) in the same directory with the same wandb run id; with no checkpoint yet it
starts over (its stale checkpoints removed first, :func:`tidy_for_start`). A resumed run must
have the config it was started with, except for the keys in :data:`MAY_CHANGE_ON_RESUME`.
A run killed mid-epoch resumes from the end of the last finished epoch and repeats the rest: the
data order and all noise are functions of (seed, epoch, rank), so the repeated epoch draws what the
killed one drew and the resumed run ends where the uninterrupted one would have.

Without ``resume=true`` a directory that already holds a run is refused, so that two runs never
mix their checkpoints.

:func:`accept_launch` makes that decision under the run directory's lock (vae_lab.run.lock), before
anything is written there: a refused launch leaves every file of the directory as it was.
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vae_lab.errors import ConfigError
from vae_lab.files import remove_temporaries, write_json_atomically
from vae_lab.run import lock as run_lock

SUMMARY = "summary.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"

#: Config keys (with everything below them) that may differ between a checkpoint and the config
#: that loads it, and between a run and its resumption (``resume=true``): none of them changes what
#: the model is or which data it learns from.
MAY_CHANGE_ON_RESUME = (
    "resume",  # how this launch starts
    "data.root",  # where the data is
    "data.download",
    "data.mirror",
    "data.verify",
    "data.loader",  # how batches are served (the same order and draws either way)
    "data.num_workers",
    "threads",  # speed
    "compile",
    "trainer.accelerator",  # where it runs
    "trainer.devices",
    "trainer.strategy",
    "trainer.num_nodes",
    "trainer.max_epochs",  # to extend a run
    "trainer.enable_progress_bar",  # console
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "check_finite_every_n_steps",  # monitoring only
    "eval",  # the evaluation settings
    "logger",  # where metrics go
    "callbacks",  # what watches training (and when it stops early, as trainer.max_epochs does)
)


def new_run_id() -> str:
    """A wandb-style run id: 8 characters of [a-z0-9]."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``summary.json`` (None when there is none); ConfigError naming the file when it cannot be read."""
    path = Path(run_dir) / SUMMARY
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(
            f"{path} cannot be read ({error}); move it aside, and the next run or evaluation there writes a fresh one."
        ) from error


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


#: Config keys added after runs were made, with the value that reproduces what an older config did:
#: a config without them reads as having these values.
ADDED_WITH_DEFAULTS = {"posterior._target_": "vae_lab.model.posteriors.DiagonalPosterior"}


#: Modules that moved when the package was laid out by concept: a config written before names its
#: classes by the old paths (``vae_lab.likelihoods.BernoulliLikelihood``) and reads as if written with
#: the new ones (tests/fixtures/run_from_0.1.0 is such a run).
MOVED_MODULES = {
    "vae_lab.module": "vae_lab.model.vae",
    "vae_lab.initialization": "vae_lab.model.initialization",
    "vae_lab.lr_schedules": "vae_lab.model.lr_schedules",
    "vae_lab.likelihoods": "vae_lab.model.likelihoods",
    "vae_lab.priors": "vae_lab.model.priors",
    "vae_lab.posteriors": "vae_lab.model.posteriors",
    "vae_lab.objectives": "vae_lab.model.objectives",
    "vae_lab.networks": "vae_lab.model.networks",
    "vae_lab.learning_rate": "vae_lab.tracking.learning_rate",
}


def with_current_targets(config: Any) -> Any:
    """``config`` (plain containers or a DictConfig) as today's code names it: every ``_target_`` under a
    moved module renamed to the module's current path, and a top-level ``early_stopping`` (before it became
    the callback entry ``callbacks.early_stopping``, :data:`EARLY_STOPPING`) moved there; other values as they are."""
    if isinstance(config, DictConfig):
        return OmegaConf.create(with_current_targets(OmegaConf.to_container(config)))
    config = _renamed_targets(config)
    if isinstance(config, dict) and "early_stopping" in config:
        config = dict(config)
        settings = config.pop("early_stopping")
        if isinstance(settings, dict):
            config["callbacks"] = {"early_stopping": {**EARLY_STOPPING, **settings}, **(config.get("callbacks") or {})}
    return config


#: The callback that a top-level ``early_stopping: {patience: N}`` of an older config meant.
EARLY_STOPPING = {"_target_": "lightning.pytorch.callbacks.EarlyStopping", "monitor": "val/elbo", "mode": "max"}


def _renamed_targets(config: Any) -> Any:
    if isinstance(config, dict):
        return {
            key: _current_target(item) if key == "_target_" else _renamed_targets(item) for key, item in config.items()
        }
    if isinstance(config, list):
        return [_renamed_targets(item) for item in config]
    return config


def _current_target(target: Any) -> Any:
    for old, new in MOVED_MODULES.items():
        if isinstance(target, str) and (target == old or target.startswith(old + ".")):
            return new + target[len(old) :]
    return target


def config_differences(
    before: dict[str, Any], now: dict[str, Any], may_change: tuple[str, ...] = MAY_CHANGE_ON_RESUME
) -> list[str]:
    """``key: before -> now`` for every resolved config value that differs, except the keys in
    ``may_change`` (and below them; by default the keys a resumed run may change)."""
    old = {**ADDED_WITH_DEFAULTS, **_flatten(with_current_targets(before))}
    new = {**ADDED_WITH_DEFAULTS, **_flatten(with_current_targets(now))}
    changed = []
    for key in sorted(set(old) | set(new)):
        if any(key == allowed or key.startswith(allowed + ".") for allowed in may_change):
            continue
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            changed.append(f"{key}: {old.get(key, '<absent>')} -> {new.get(key, '<absent>')}")
    return changed


@dataclass
class LaunchPlan:
    """What this launch does in its run directory."""

    #: "fresh", "resume" or "skip".
    action: str
    #: The checkpoint training continues from (action "resume"), else None.
    checkpoint: Path | None
    #: The wandb run id: the previous run's when continuing it.
    wandb_run_id: str
    #: The run's previous summary (None for a new directory).
    previous: dict[str, Any] | None

    @property
    def skip(self) -> bool:
        return self.action == "skip"


def plan_launch(
    run_dir: Path, resume: bool, config: dict[str, Any], attempt: str | None = None, wandb_run_id: str | None = None
) -> LaunchPlan:
    """Decide what a launch into ``run_dir`` does (see the module doc).

    ``attempt`` names this launch across the processes of one job (the submitit or SLURM job id):
    a summary written by the same attempt comes from this job's rank 0, whose decision the other
    ranks follow. ``wandb_run_id`` is imposed from outside (``WANDB_RUN_ID`` under ``wandb agent``).
    """
    run_dir = Path(run_dir)
    previous = read_summary(run_dir)
    checkpoint = run_dir / LAST_CHECKPOINT
    if previous is not None and attempt is not None and previous.get("attempt") == attempt:
        resumed_from = previous.get("resumed_from")
        return LaunchPlan(
            "resume" if resumed_from else "fresh",
            run_dir / resumed_from if resumed_from else None,
            previous.get("wandb_run_id") or wandb_run_id or new_run_id(),
            previous,
        )
    has_run = previous is not None or checkpoint.is_file()
    if not has_run:
        return LaunchPlan("fresh", None, wandb_run_id or new_run_id(), None)
    status = (previous or {}).get("status", "unknown (no summary.json)")
    if not resume:
        raise ConfigError(
            f"{run_dir} already holds a run (status: {status}). Pass resume=true to continue it (a complete run "
            "is skipped, or extended with a larger trainer.max_epochs), or give this run its own output directory "
            "(hydra.run.dir=..., or hydra.sweep.dir=... "
            "for a multirun)."
        )
    if previous is not None and "config" in previous:
        changed = config_differences(previous["config"], config)
        if changed:
            listing = "\n".join(f"  - {line}" for line in changed)
            raise ConfigError(
                f"resume=true, but {run_dir} holds a run started with another config:\n{listing}\n"
                "Resume it with the overrides it was started with (see its .hydra/overrides.yaml), or start this "
                "config in a new output directory. In a re-launched sweep this means the sweep's parameters changed, "
                "so that job numbers now name other settings: use a new hydra.sweep.dir."
            )
    if status == "complete":
        run_id = (previous or {}).get("wandb_run_id") or new_run_id()
        if checkpoint.is_file() and _max_epochs(config) > _max_epochs((previous or {}).get("config") or {}):
            return LaunchPlan("resume", checkpoint, run_id, previous)  # extend it by the extra epochs
        return LaunchPlan("skip", None, run_id, previous)
    run_id = wandb_run_id or (previous or {}).get("wandb_run_id") or new_run_id()
    return LaunchPlan(
        "resume" if checkpoint.is_file() else "fresh", checkpoint if checkpoint.is_file() else None, run_id, previous
    )


def _max_epochs(config: dict[str, Any]) -> int:
    value = (config.get("trainer") or {}).get("max_epochs")
    return value if isinstance(value, int) and value >= 0 else -1


def accept_launch(
    run_dir: Path,
    resume: bool,
    config: dict[str, Any],
    attempt: str | None = None,
    wandb_run_id: str | None = None,
    purpose: str = "python -m vae_lab.train",
) -> LaunchPlan:
    """:func:`plan_launch` under the run directory's lock: returns the plan with the lock held and
    named after this process (for "fresh" and "resume"; a "skip" holds nothing). A directory whose
    lock a live process holds (:class:`~vae_lab.run.lock.RunDirectoryBusy`) or that the plan refuses
    is left exactly as it was: the existing lock file is locked without writing, and one is created
    only once the plan accepts the launch."""
    run_dir = Path(run_dir)
    lock = run_lock.lock_existing(run_dir)
    try:
        plan = plan_launch(run_dir, resume, config, attempt, wandb_run_id)
        if plan.skip:
            run_lock.release(run_dir)
            return plan
        if lock is None:  # no lock file yet: create it, then decide again under the lock
            run_lock.lock(run_dir, purpose)
            plan = plan_launch(run_dir, resume, config, attempt, wandb_run_id)
        else:
            lock.claim(purpose)
        return plan
    except BaseException:
        run_lock.release(run_dir)
        raise


def tidy_for_start(run_dir: Path, plan: LaunchPlan) -> list[Path]:
    """What a run killed earlier left behind that the starting run would trip over, removed (by the
    run's rank 0, under its lock): the temporary files of interrupted atomic writes, and, when the run
    starts afresh (no ``last.ckpt`` to resume from), the old run's checkpoints, since the best-checkpoint
    callback would otherwise write ``best-v1.ckpt`` beside a stale ``best.ckpt``. Returns what it removed."""
    removed = remove_temporaries(run_dir)
    if plan.checkpoint is None:
        for pattern in ("best*.ckpt", "last*.ckpt"):
            for path in (Path(run_dir) / LAST_CHECKPOINT.parent).glob(pattern):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


# ---------------------------------------------------------------------- summary.json states
def write_running_summary(run_dir: Path, fields: dict[str, Any]) -> None:
    write_json_atomically(Path(run_dir) / SUMMARY, {"status": "running", **fields})
