"""Hydra callbacks of vae_lab (registered under ``hydra.callbacks`` in ``conf/config.yaml``)."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from vae_lab.errors import ConfigError, VaeLabError
from vae_lab.files import check_writable_directory
from vae_lab.run.state import LAST_CHECKPOINT, SUMMARY


def nearest_existing(path: Path) -> Path:
    """``path`` itself when it exists, else its nearest existing ancestor."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class OutputDirCheck(Callback):
    """Refuse an output dir that cannot be written before Hydra creates it, writes its
    ``.hydra/`` files and opens its log file there (Hydra's own errors at that point are a
    traceback about a logging handler). Checks the dir, or its nearest existing ancestor, by
    writing and deleting a probe file; creates nothing."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def _check(directory: str, key: str) -> None:
        if not str(directory).strip():
            print(
                f"vae_lab: error: {key} is empty, which would write the run into the current directory; nothing was "
                f"run. Give it a directory ({key}=<dir>), or leave it out for the default under outputs/.",
                file=sys.stderr,
            )
            raise SystemExit(2)
        target = Path(directory)
        existing = nearest_existing(target)
        try:
            if not existing.is_dir():
                raise ConfigError(
                    f"the output directory {target} cannot be created: {existing} is a file, not a directory; "
                    f"nothing was run. Choose another with {key}=<dir>."
                )
            check_writable_directory(existing)
        except ConfigError as error:
            where = f"cannot create the output directory {target}: " if existing != target.absolute() else ""
            print(f"vae_lab: error: {where}{error}", file=sys.stderr)
            raise SystemExit(2) from None


class OccupiedSweepDirGuard(Callback):
    """A Hydra callback: a multirun without ``resume=true`` into a sweep directory whose jobs
    already hold runs is refused before any job starts (exit 2), rather than job by job."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("resume"):
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        occupied = {
            path.relative_to(sweep_dir).parts[0]
            for pattern in (f"*/{SUMMARY}", f"*/{LAST_CHECKPOINT}")
            for path in (sweep_dir.glob(pattern) if sweep_dir.is_dir() else [])
        }
        if occupied:
            print(
                f"vae_lab: error: {sweep_dir} already holds runs (job dirs {', '.join(sorted(occupied))}). Pass "
                "resume=true to skip its complete jobs and re-run the others, or choose another hydra.sweep.dir.",
                file=sys.stderr,
            )
            raise SystemExit(2)


class RunDirectoryGuard(Callback):
    """A single run's launch is accepted or refused before Hydra writes anything into its run
    directory (``.hydra/config.yaml``, ``hydra.yaml``, ``overrides.yaml`` and the log file are
    written when the job starts, before the task function, so a check there would come too late):
    the directory is locked (vae_lab.run.lock; refused when a live process holds it) and the launch
    planned (vae_lab.run.state.accept_launch: refused when it holds another run). A refused launch
    exits 2 and changes nothing there; a complete run skipped by ``resume=true`` exits 0, untouched.
    The lock stays held for the run (vae_lab.run.jobs releases it when the job ends).

    Multirun jobs are checked and locked by vae_lab.run.jobs when they start: Hydra has no callback
    between choosing a job's directory and writing its ``.hydra/`` files."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from vae_lab.run import distributed
        from vae_lab.run.state import accept_launch

        if os.environ.get(distributed.LAUNCHED_BY) or distributed.global_rank_from_environment() != 0:
            return  # a rank of a job whose rank 0 holds the lock and made the plan
        run_dir = Path(str(config.hydra.run.dir)).absolute()
        try:
            plan = accept_launch(
                run_dir,
                config.get("resume") is True,  # anything else is refused by validate_config, as not resuming
                self._resolved_task_config(config, run_dir),
                distributed.launch_attempt(),
                os.environ.get("WANDB_RUN_ID"),
            )
        except VaeLabError as error:
            print(f"vae_lab: error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        if plan.skip:
            extend = "a larger trainer.max_epochs extends it"
            print(f"vae_lab: {run_dir} holds a complete run; skipped (resume=true; {extend}).", flush=True)
            raise SystemExit(0)

    @staticmethod
    def _resolved_task_config(config: DictConfig, run_dir: Path) -> dict[str, Any]:
        """The job's config without ``hydra``, resolved as the job will see it (``${hydra:...}`` included)."""
        from hydra.core.hydra_config import HydraConfig

        with_runtime = copy.deepcopy(config)
        with read_write(with_runtime.hydra.runtime), open_dict(with_runtime.hydra.runtime):
            with_runtime.hydra.runtime.output_dir = str(run_dir)
        HydraConfig.instance().set_config(with_runtime)  # Hydra sets it again when the job starts
        task = copy.deepcopy(with_runtime)
        with read_write(task), open_dict(task):
            del task["hydra"]
        return OmegaConf.to_container(task, resolve=True)
