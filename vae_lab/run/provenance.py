"""Where a number came from: the code, the libraries and the device that produced a run's outputs.

One record, written into ``summary.json`` (by vae_lab.train, and under ``evaluation`` by
vae_lab.evaluate) and into every checkpoint (vae_lab.run.checkpoint_integrity), so that a metric or a
checkpoint can be traced to the vae_lab version and git commit, the versions of torch, lightning,
hydra and wandb, and the device that computed it.

``schema_version`` numbers the layout of summary.json and of the checkpoints' ``vae_lab`` record:

- 1 (implicit: no ``schema_version`` key): written before this module existed, no provenance;
- 2: ``schema_version`` and ``provenance`` in summary.json; ``vae_lab`` = {schema_version, config,
  provenance, digests} in every checkpoint.

Readers accept every schema up to :data:`SCHEMA_VERSION` (use :func:`schema_version`).
"""

from __future__ import annotations

import functools
import platform
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import vae_lab

SCHEMA_VERSION = 2
#: The distributions whose versions a record lists (PyPI names).
LIBRARIES = ("torch", "lightning", "hydra-core", "wandb")


def schema_version(record: Mapping[str, Any] | None) -> int:
    """The schema of a summary.json or checkpoint record: 1 when it has no ``schema_version`` (older files)."""
    return int((record or {}).get("schema_version", 1))


@functools.cache
def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout that vae_lab is imported from; (None, None) when vae_lab
    is not a tracked file of a git work tree (an installed package) or git is not available."""
    package = Path(vae_lab.__file__).resolve().parent

    def git(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *arguments], cwd=package, capture_output=True, text=True, timeout=10, check=False)

    try:
        # Tracked by the repository around it (not merely inside some repository, e.g. a venv in a project).
        if git("ls-files", "--error-unmatch", "__init__.py").returncode != 0:
            return None, None
        commit = git("rev-parse", "HEAD")
        if commit.returncode != 0:
            return None, None
        status = git("status", "--porcelain", "--untracked-files=no")
        return commit.stdout.strip(), (bool(status.stdout.strip()) if status.returncode == 0 else None)
    except (OSError, subprocess.SubprocessError):
        return None, None


@functools.cache
def library_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def device_name(device: str) -> str:
    """A human name for a torch device string: the GPU's model, or the CPU's."""
    import torch

    kind = torch.device(device).type
    if kind == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    if kind == "cpu":
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine()
    return kind


def provenance(device: Any = "cpu") -> dict[str, Any]:
    """What produced a result: vae_lab's version and git commit (None outside a git checkout), the
    library versions and the device (``device``: a torch.device or its name)."""
    commit, dirty = git_state()
    return {
        "vae_lab_version": vae_lab.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "versions": {name: library_version(name) for name in LIBRARIES},
        "python": platform.python_version(),
        "device": str(device),
        "device_name": device_name(str(device)),
    }


def provenance_fields(device: Any = "cpu") -> dict[str, Any]:
    """The fields that summary.json gains: ``schema_version`` and ``provenance``."""
    return {"schema_version": SCHEMA_VERSION, "provenance": provenance(device)}
