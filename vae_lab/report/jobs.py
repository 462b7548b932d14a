"""The jobs of a sweep as the report sees them: where they are, how they ended, what they swept.

A job is a directory holding ``.hydra/`` or ``summary.json``. Its status: ``complete`` (summary.json
with status complete), ``failed`` (summary.json with status failed, or no summary.json but the
``failure.json`` that :class:`vae_lab.sweep_progress.SweepProgress` writes when a job raises),
``unfinished`` (neither: still running, killed, or exited without either), or ``pending`` (planned by
the sweep's ``multirun.yaml`` but no directory yet). The swept axes are the override keys whose values differ
between jobs; ``seed`` is the replicate axis, never an axis of the table.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vae_lab.errors import ConfigError
from vae_lab.sweep_progress import FAILURE_FILE

REPLICATE_AXIS = "seed"
#: Override keys that never make a setting: where things are, not what is trained.
NOT_AXES = ("hydra.", "hydra/", "data.root", "resume", "logger.wandb.group", "logger.wandb.tags")
#: Directories inside a sweep that never hold jobs.
NOT_JOB_DIRECTORIES = {"wandb", "checkpoints", "images", "report_plots", ".hydra", ".submitit", "__pycache__"}
MAX_DEPTH = 4
DEFAULT_VALUE = "(default)"


@dataclass
class Job:
    directory: Path
    status: str
    overrides: list[str]
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    choices: dict[str, Any] = field(default_factory=dict)

    @property
    def override_values(self) -> dict[str, str]:
        """``{key: value}`` of the job's overrides, with ``+``/``++``/``~`` stripped from keys."""
        values = {}
        for override in self.overrides:
            key, _, value = override.partition("=")
            values[key.lstrip("+~")] = value if not key.startswith("~") else "(deleted)"
        return values

    def value_of(self, key: str) -> str:
        """The job's value for ``key``: its override, else its config group choice or config value."""
        if key in self.override_values:
            return self.override_values[key]
        if self.choices.get(key) is not None:
            return str(self.choices[key])
        value = nested_get(self.config, key)
        return DEFAULT_VALUE if value is None else str(value)

    @property
    def seed(self) -> str:
        return self.value_of(REPLICATE_AXIS)

    @property
    def metrics(self) -> dict[str, Any]:
        """Final metrics (``summary.json``'s ``metrics`` plus ``epochs`` and ``wall_time_seconds``)."""
        values = dict(self.summary.get("metrics") or {})
        for name in ("epochs", "wall_time_seconds"):
            if name in self.summary:
                values[name] = self.summary[name]
        return values

    @property
    def error(self) -> str | None:
        return self.summary.get("error") or self.summary.get("failure") if self.summary else None

    def validation_curve(self) -> list[tuple[int, float]]:
        """(epochs trained, val/elbo) after each training epoch, from the job's ``metrics.csv``.

        The validation that re-evaluates the best checkpoint after training shares its (epoch, step)
        with the test row; it is not a point of the curve.
        """
        path = self.directory / "metrics.csv"
        if not path.is_file():
            return []
        with path.open(newline="") as file:
            rows = list(csv.DictReader(file))
        after_fit = {(row["epoch"], row["step"]) for row in rows if any(row[k] for k in row if k.startswith("test/"))}
        curve = []
        for row in rows:
            value = row.get("val/elbo")
            if value and (row["epoch"], row["step"]) not in after_fit and math.isfinite(float(value)):
                curve.append((int(row["epoch"]) + 1, float(value)))
        return curve

    def kl_per_dim(self) -> tuple[list[float] | None, str]:
        """The KL of each latent dimension (nats) and its source: ``test/kl_per_dim`` in the summary,
        else the estimate the run saved with its latent traversals; (None, reason) when neither exists."""
        value = (self.summary.get("metrics") or {}).get("test/kl_per_dim")
        if isinstance(value, list) and value:
            return [float(v) for v in value], "test/kl_per_dim (full test set)"
        description = read_json(self.directory / "images" / "latent_pictures.json")
        if description and description.get("kl_per_dim"):
            return [float(v) for v in description["kl_per_dim"]], str(description.get("kl_per_dim_source", "latent pictures"))
        return None, "no test/kl_per_dim in summary.json and no images/latent_pictures.json"


def nested_get(tree: Any, dotted_key: str) -> Any:
    """``tree["a"]["b"]`` for ``"a.b"``, or None when any part is missing."""
    for part in dotted_key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_yaml(path: Path) -> Any:
    """A YAML file as plain containers, interpolations left unresolved; None when unreadable."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # a half-written file of a job that is starting: treat as absent
        return None


def is_job_directory(path: Path) -> bool:
    return (path / ".hydra").is_dir() or (path / "summary.json").is_file()


def find_job_directories(root: Path, depth: int = 0) -> list[Path]:
    """Job directories at or below ``root`` (not below a job directory)."""
    if is_job_directory(root):
        return [root]
    if depth >= MAX_DEPTH:
        return []
    found = []
    for child in sorted(root.iterdir(), key=lambda p: natural_key(p.name)):
        if child.is_dir() and child.name not in NOT_JOB_DIRECTORIES and not child.name.startswith("."):
            found += find_job_directories(child, depth + 1)
    return found


def natural_key(text: str) -> tuple:
    """Sort ``2`` before ``10``."""
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def read_job(directory: Path) -> Job:
    summary = read_json(directory / "summary.json") or {}
    failure = read_json(directory / FAILURE_FILE) if not summary else None
    status = str(summary.get("status", "complete")) if summary else "failed" if failure else "unfinished"
    status = "unfinished" if status == "running" else status  # vae_lab.run_state: started, never ended
    summary = summary or failure or {}
    overrides = summary.get("overrides")
    if overrides is None:
        overrides = read_yaml(directory / ".hydra" / "overrides.yaml") or []
    config = summary.get("config") or read_yaml(directory / ".hydra" / "config.yaml") or {}
    choices = summary.get("choices") or nested_get(read_yaml(directory / ".hydra" / "hydra.yaml") or {}, "hydra.runtime.choices") or {}
    return Job(directory, status, [str(o) for o in overrides], summary, config, choices)


def sweep_plan(sweep_dir: Path) -> list[list[str]] | None:
    """The override list of every job ``<sweep_dir>/multirun.yaml`` plans, in job-number order."""
    from vae_lab.sweep_progress import planned_job_overrides

    multirun = read_yaml(sweep_dir / "multirun.yaml")
    if not multirun:
        return None
    return planned_job_overrides(
        nested_get(multirun, "hydra.overrides.task") or [], nested_get(multirun, "hydra.sweeper.params")
    )


def complete_with_plan(sweep_dir: Path, found: list[Job]) -> list[Job]:
    """``found`` plus a ``pending`` job for each planned job without a directory. A job killed before
    Hydra wrote its overrides.yaml takes the planned overrides of its job number (its directory name)."""
    plan = sweep_plan(sweep_dir)
    if not plan:
        return found
    for job in found:
        if not job.overrides and job.directory.name.isdigit() and int(job.directory.name) < len(plan):
            job.overrides = list(plan[int(job.directory.name)])
    seen = {frozenset(job.overrides) for job in found}
    pending = [Job(sweep_dir / "(not started)", "pending", list(o)) for o in plan if frozenset(o) not in seen]
    return found + pending


def collect_jobs(paths: Iterable[Path]) -> list[Job]:
    """Every job under ``paths`` (sweep directories or run directories), plus the pending jobs of
    each sweep directory; raises ConfigError when a path does not exist or none holds a job."""
    jobs: list[Job] = []
    for path in paths:
        path = Path(path)
        if not path.is_dir():
            raise ConfigError(f"{path} is not a directory; give a sweep directory (multirun/...) or run directories.")
        found = [read_job(directory) for directory in find_job_directories(path)]
        jobs += found if is_job_directory(path) else complete_with_plan(path, found)
    if not jobs:
        raise ConfigError(
            "found no jobs (directories with .hydra/ or summary.json) under "
            + ", ".join(str(p) for p in paths)
            + "; give the sweep directory that `python -m vae_lab.train -m ...` printed, or run directories."
        )
    return jobs


def swept_axes(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs, in the order they first appear; not ``seed``."""
    keys: list[str] = []
    for job in jobs:
        keys += [key for key in job.override_values if key not in keys]
    axes = []
    for key in keys:
        if key == REPLICATE_AXIS or key.startswith(NOT_AXES):
            continue
        if len({job.value_of(key) for job in jobs}) > 1:
            axes.append(key)
    return axes


def sort_key(value: str) -> tuple:
    """Numbers in numeric order, before words in alphabetical order."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)
