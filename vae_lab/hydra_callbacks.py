"""Hydra callbacks of vae_lab (registered under ``hydra.callbacks`` in ``conf/config.yaml``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vae_lab.errors import ConfigError
from vae_lab.files import check_writable_directory
from vae_lab.run_state import LAST_CHECKPOINT, SUMMARY


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
