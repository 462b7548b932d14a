"""Hydra launchers as config choices, and which one is running this job.

- ``hydra/launcher=basic`` (Hydra's default): the jobs of a multirun one after the other.
- ``hydra/launcher=joblib``: N local worker processes (``hydra.launcher.n_jobs``), each holding its
  own GPU lease (vae_lab.run.devices) or ``cores // N`` CPU threads.
- ``hydra/launcher=submitit_local`` / ``submitit_slurm``: one submitit job per Hydra job, with
  ``tasks_per_node`` = ``trainer.devices`` (one task per DDP process, so that Lightning's
  ``SLURMEnvironment`` sets up DDP on SLURM), ``nodes`` = ``trainer.num_nodes`` and, on SLURM,
  ``gpus_per_node`` = ``trainer.devices`` unless the trainer runs on the CPU.

The submitit defaults above are set by re-registering the plugin's own config classes under their
own names (``hydra/launcher/submitit_local`` and ``submitit_slurm``) with those fields interpolated
from the trainer; every other field and its documentation stay the plugin's. This happens when
``vae_lab.train`` is imported, after Hydra's plugin scan (run early for that) and before Hydra
composes the config; ``--cfg hydra -p hydra.launcher`` shows the result.
"""

from __future__ import annotations

import enum
from typing import Any

from omegaconf import OmegaConf

from vae_lab.errors import ConfigError


class LauncherKind(str, enum.Enum):
    BASIC = "basic"
    JOBLIB = "joblib"
    SUBMITIT_LOCAL = "submitit_local"
    SUBMITIT_SLURM = "submitit_slurm"
    OTHER = "other"


_TARGET_SUFFIXES = {
    "BasicLauncher": LauncherKind.BASIC,
    "JoblibLauncher": LauncherKind.JOBLIB,
    "submitit_launcher.LocalLauncher": LauncherKind.SUBMITIT_LOCAL,
    "submitit_launcher.SlurmLauncher": LauncherKind.SUBMITIT_SLURM,
}


def launcher_kind(launcher_target: str | None) -> LauncherKind:
    """The launcher named by ``hydra.launcher._target_``."""
    for suffix, kind in _TARGET_SUFFIXES.items():
        if launcher_target and launcher_target.endswith(suffix):
            return kind
    return LauncherKind.OTHER


def processes_per_node(devices: Any) -> int:
    """The number of DDP processes per node for ``trainer.devices`` (an int or a list of ids)."""
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, int) and devices > 0:
        return devices
    raise ConfigError(
        f"trainer.devices={devices!r} does not say how many processes to start per node, which the "
        "submitit launchers need (one task per device). Set trainer.devices to a number, e.g. trainer.devices=4."
    )


def gpus_per_node(accelerator: Any, devices: Any) -> int | None:
    """GPUs to request per node on SLURM: one per device unless the trainer runs on the CPU."""
    return None if str(accelerator) == "cpu" else processes_per_node(devices)


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("vae_lab.processes_per_node", processes_per_node, replace=True)
    OmegaConf.register_new_resolver("vae_lab.gpus_per_node", gpus_per_node, replace=True)


TASKS_PER_NODE = "${vae_lab.processes_per_node:${trainer.devices}}"
NODES = "${oc.select:trainer.num_nodes,1}"
GPUS_PER_NODE = "${vae_lab.gpus_per_node:${trainer.accelerator},${trainer.devices}}"


def register_launcher_configs() -> None:
    """Re-register the submitit launcher configs with one task per DDP process (see module doc)."""
    register_resolvers()
    try:
        from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf
    except ImportError:  # the launchers extra is not installed: nothing to adjust
        return
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    # Hydra's plugin scan re-executes every plugin module, which registers the plugin's own configs
    # again: scan first (the scan runs once per process), then register ours over them.
    Plugins.instance()
    store = ConfigStore.instance()
    store.store(
        group="hydra/launcher",
        name="submitit_local",
        node=LocalQueueConf(tasks_per_node=TASKS_PER_NODE),  # type: ignore[arg-type]
        provider="vae_lab",
    )
    store.store(
        group="hydra/launcher",
        name="submitit_slurm",
        node=SlurmQueueConf(
            tasks_per_node=TASKS_PER_NODE,  # type: ignore[arg-type]
            nodes=NODES,  # type: ignore[arg-type]
            gpus_per_node=GPUS_PER_NODE,  # type: ignore[arg-type]
        ),
        provider="vae_lab",
    )
