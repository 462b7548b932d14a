"""The jobs of a sweep as the report sees them: where they are, how they ended, what they swept.

A job is a directory holding ``.hydra/`` or ``summary.json``. Its status: ``complete`` (summary.json
with status complete), ``failed`` (summary.json with status failed, or no summary.json but the
``failure.json`` that :class:`vae_lab.run.sweep_progress.SweepProgress` writes when a job raises),
``unfinished`` (neither: still running, killed, or exited without either), ``unreadable`` (its
summary.json, failure.json or metrics.csv exists but cannot be read: the job is listed with the file
and the reason, never taken for unfinished nor averaged into the table), or ``pending`` (planned by
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
from vae_lab.run.sweep_progress import FAILURE_FILE

REPLICATE_AXIS = "seed"
#: Override keys that never make a setting: where things are, not what is trained.
NOT_AXES = ("hydra.", "hydra/", "data.root", "resume", "logger.wandb.group", "logger.wandb.tags")
#: Directories inside a sweep that never hold jobs.
NOT_JOB_DIRECTORIES = {"wandb", "checkpoints", "images", "report_plots", ".hydra", ".submitit", "__pycache__"}
MAX_DEPTH = 4
DEFAULT_VALUE = "(default)"
UNREADABLE = "unreadable"


class UnreadableFile(Exception):
    """A job's file exists but does not hold what the report reads; ``str()`` is ``<path>: <reason>``."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclass
class Job:
    directory: Path
    status: str
    overrides: list[str]
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    choices: dict[str, Any] = field(default_factory=dict)
    #: (epochs trained, val/elbo) after each training epoch, from metrics.csv (see read_validation_curve).
    curve: list[tuple[int, float]] = field(default_factory=list)
    #: ``<path>: <reason>`` of each file of the job that could not be read (status ``unreadable``).
    unreadable: list[str] = field(default_factory=list)

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
        if self.unreadable:
            return "; ".join(self.unreadable)
        return self.summary.get("error") or self.summary.get("failure") if self.summary else None

    def validation_curve(self) -> list[tuple[int, float]]:
        """(epochs trained, val/elbo) after each training epoch, as read from the job's ``metrics.csv``."""
        return self.curve

    def kl_per_dim(self) -> tuple[list[float] | None, str]:
        """The KL of each latent dimension (nats) and its source: ``test/kl_per_dim`` in the summary,
        else the estimate the run saved with its latent traversals; (None, reason) when neither exists."""
        value = (self.summary.get("metrics") or {}).get("test/kl_per_dim")
        if isinstance(value, list) and value:
            return [float(v) for v in value], "test/kl_per_dim (full test set)"
        description = read_json(self.directory / "images" / "latent_pictures.json")
        if description and description.get("kl_per_dim"):
            return [float(v) for v in description["kl_per_dim"]], str(
                description.get("kl_per_dim_source", "latent pictures")
            )
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


def read_text(path: Path) -> str | None:
    """The UTF-8 text of ``path``, or None when there is no such file; raises UnreadableFile when the
    file exists but cannot be read or holds binary data (bytes that are not UTF-8 text, NUL bytes)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise UnreadableFile(path, f"cannot be read ({error.strerror or error})") from error
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        byte = f"byte 0x{data[error.start]:02x} at {error.start}"
        raise UnreadableFile(path, f"binary data, not UTF-8 text ({byte})") from None
    if "\x00" in text:
        raise UnreadableFile(path, f"binary data, not text (a NUL byte at offset {text.index(chr(0))})")
    return text


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path`` (a job's summary.json or failure.json), or None when there is no
    such file; raises UnreadableFile when it exists but is not a JSON object (truncated, binary...).
    Jobs write these files atomically, so a broken one is damage, not a write in progress."""
    text = read_text(path)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as error:
        raise UnreadableFile(path, f"not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise UnreadableFile(path, f"holds a JSON {type(value).__name__}, not an object")
    return value


def read_validation_curve(path: Path) -> list[tuple[int, float]]:
    """(epochs trained, val/elbo) after each training epoch, from a Lightning ``metrics.csv``; [] when
    there is no such file (or it is still empty). Raises UnreadableFile when it is not such a CSV.

    The validation that re-evaluates the best checkpoint after training shares its (epoch, step)
    with the test row; it is not a point of the curve. A last line without its newline is a row
    being written by a running (or killed) job and is left out.
    """
    text = read_text(path)
    if not text:
        return []
    lines = text.splitlines(keepends=True)
    if not lines[-1].endswith(("\n", "\r")):
        lines = lines[:-1]
    try:
        header, *rows = list(csv.reader(lines))
    except csv.Error as error:
        raise UnreadableFile(path, f"not a CSV file ({error})") from None
    except ValueError:  # only a partial header line
        return []
    missing = [name for name in ("epoch", "step") if name not in header]
    if missing:
        raise UnreadableFile(path, f"not a Lightning metrics CSV (no {' or '.join(missing)} column in its header)")
    records = []
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise UnreadableFile(path, f"line {number} has {len(row)} fields, its header {len(header)}")
        records.append(dict(zip(header, row, strict=True)))
    after_fit = {(r["epoch"], r["step"]) for r in records if any(r[k] for k in header if k.startswith("test/"))}
    curve = []
    for number, record in enumerate(records, start=2):
        value = record.get("val/elbo")
        if not value or (record["epoch"], record["step"]) in after_fit:
            continue
        try:
            epoch, elbo = int(record["epoch"]), float(value)
        except ValueError:
            numbers = f"epoch {record['epoch']!r}, val/elbo {value!r}"
            raise UnreadableFile(path, f"line {number}: {numbers} are not numbers") from None
        if math.isfinite(elbo):
            curve.append((epoch + 1, elbo))
    return curve


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
    """The job in ``directory``, its status from summary.json / failure.json (``unreadable`` when one of
    them, or metrics.csv, exists but cannot be read)."""
    unreadable: list[str] = []

    def attempt(read: Any, path: Path, empty: Any) -> Any:
        try:
            return read(path)
        except UnreadableFile as error:
            unreadable.append(str(error))
            return empty

    summary = attempt(read_json_object, directory / "summary.json", None) or {}
    failure = attempt(read_json_object, directory / FAILURE_FILE, None) if not summary and not unreadable else None
    curve = attempt(read_validation_curve, directory / "metrics.csv", [])
    status = str(summary.get("status", "complete")) if summary else "failed" if failure else "unfinished"
    status = "unfinished" if status == "running" else status  # vae_lab.run.state: started, never ended
    status = UNREADABLE if unreadable else status
    summary = summary or failure or {}
    overrides = summary.get("overrides")
    if overrides is None:
        overrides = read_yaml(directory / ".hydra" / "overrides.yaml") or []
    config = summary.get("config") or read_yaml(directory / ".hydra" / "config.yaml") or {}
    choices = (
        summary.get("choices")
        or nested_get(read_yaml(directory / ".hydra" / "hydra.yaml") or {}, "hydra.runtime.choices")
        or {}
    )
    return Job(directory, status, [str(o) for o in overrides], summary, config, choices, curve, unreadable)


def sweep_plan(sweep_dir: Path) -> list[list[str]] | None:
    """The override list of every job ``<sweep_dir>/multirun.yaml`` plans, in job-number order."""
    from vae_lab.run.sweep_progress import planned_job_overrides

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
