"""Experiment tracking with Weights & Biases, falling back to offline runs when there is no API key.

wandb is imported only when a run asks for it.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import DictConfig

WANDB_MODES = ("auto", "online", "offline", "disabled")

log = logging.getLogger(__name__)


def has_wandb_api_key() -> bool:
    """True when wandb could authenticate: ``WANDB_API_KEY`` or a ``wandb login`` entry in netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(requested: str) -> str:
    """``auto`` means online with an API key and offline without; ``WANDB_MODE`` in the environment
    wins over the config, as in wandb itself."""
    mode = os.environ.get("WANDB_MODE") or requested
    if mode == "dryrun":
        mode = "offline"
    if mode not in WANDB_MODES:
        from vae_lab.errors import ConfigError

        raise ConfigError(f"logger.wandb.mode={mode!r} is unknown; use one of {', '.join(WANDB_MODES)}.")
    if mode == "auto":
        return "online" if has_wandb_api_key() else "offline"
    return mode


def make_wandb_logger(
    settings: DictConfig,
    run_dir: Path,
    name: str,
    config: dict[str, Any],
    run_id: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    choices: dict[str, Any] | None = None,
    job_type: str = "train",
):
    """A Lightning ``WandbLogger`` writing under ``run_dir/wandb``, or None when wandb is disabled.
    ``group`` and ``tags`` default to the settings'; with ``run_id`` an existing run is resumed.
    ``choices`` (the Hydra group choices) become the config's ``choices`` section (vae_lab.tracking.wandb_run)."""
    mode = resolve_wandb_mode(settings.mode)
    if mode == "disabled":
        return None
    import wandb

    from vae_lab.tracking.wandb_run import DashboardWandbLogger, run_config

    if mode == "offline" and not os.environ.get("WANDB_MODE"):
        log.info("wandb: no API key found (WANDB_API_KEY or `wandb login`): this run is logged offline.")
    return DashboardWandbLogger(
        project=settings.project,
        entity=settings.entity,
        name=name,
        group=group if group is not None else settings.group,
        tags=list(tags if tags is not None else settings.tags or []),
        save_dir=str(run_dir),
        offline=mode == "offline",
        id=run_id,
        config=run_config(config, choices or {}),
        job_type=job_type,
        log_model=False,
        settings=wandb.Settings(init_timeout=float(settings.get("init_timeout", 60))),
    )


def offline_sync_hint(wandb_logger) -> str | None:
    """The command that uploads this offline run later, or None when it is online."""
    experiment = wandb_logger.experiment
    if not getattr(experiment, "offline", False) and getattr(experiment.settings, "mode", "") != "offline":
        return None
    return f"wandb sync {Path(experiment.dir).parent}"
