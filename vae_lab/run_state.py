"""The state of a run directory, read from its ``summary.json`` and ``checkpoints/last.ckpt``, and
what a new launch into it does: start fresh, resume, skip, or refuse.

``summary.json`` has ``status``:

- ``running``: written when a run starts (with its resolved config and wandb run id); a run that
  stays ``running`` was killed;
- ``complete``: written when it ends (the full summary of vae_lab.train);
- ``failed``: written when it raised, with the error and the end of the traceback.

With ``resume=true`` a complete run is skipped, and any other run continues from its last
epoch-end checkpoint (``checkpoints/last.ckpt``, written after every validation) in the same
directory with the same wandb run id; with no checkpoint yet it starts over. A resumed run must
have the config it was started with, except for the keys in :data:`MAY_CHANGE_ON_RESUME`.
A run killed mid-epoch resumes from the end of the last finished epoch and repeats the rest: the
data order and all noise are functions of (seed, epoch, rank), so the repeated epoch draws what the
killed one drew and the resumed run ends where the uninterrupted one would have.

Without ``resume=true`` a directory that already holds a run is refused, so that two runs never
mix their checkpoints.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vae_lab.errors import ConfigError
from vae_lab.files import write_atomically, write_json_atomically

SUMMARY = "summary.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
METRICS = "metrics.csv"
#: Rows of metrics.csv from before the latest resume, merged back into metrics.csv when the run ends.
METRICS_BEFORE_RESUME = "metrics-before-resume.csv"

#: Config keys a resumed run may change: where the data is, CPU threads, logging, and how long to train.
MAY_CHANGE_ON_RESUME = ("resume", "data.root", "threads", "trainer.max_epochs", "logger")


def new_run_id() -> str:
    """A wandb-style run id: 8 characters of [a-z0-9]."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / SUMMARY
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path} cannot be read ({error}); move it away to start this run over.") from error


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def config_differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``key: before -> now`` for every resolved config value that differs, except the keys a
    resumed run may change."""
    old, new = _flatten(before), _flatten(now)
    changed = []
    for key in sorted(set(old) | set(new)):
        if any(key == allowed or key.startswith(allowed + ".") for allowed in MAY_CHANGE_ON_RESUME):
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
            "is skipped), or give this run its own output directory (hydra.run.dir=..., or hydra.sweep.dir=... "
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
        return LaunchPlan("skip", None, (previous or {}).get("wandb_run_id") or new_run_id(), previous)
    run_id = wandb_run_id or (previous or {}).get("wandb_run_id") or new_run_id()
    return LaunchPlan("resume" if checkpoint.is_file() else "fresh", checkpoint if checkpoint.is_file() else None, run_id, previous)


# ---------------------------------------------------------------------- summary.json states
def write_running_summary(run_dir: Path, fields: dict[str, Any]) -> None:
    write_json_atomically(Path(run_dir) / SUMMARY, {"status": "running", **fields})


def write_failed_summary(run_dir: Path, fields: dict[str, Any], error: BaseException, traceback_text: str) -> None:
    """Mark the run failed, keeping what its running summary said (config, wandb id, ...)."""
    previous = read_summary(run_dir) or {}
    if previous.get("status") == "complete":
        previous = {key: previous[key] for key in ("config", "overrides", "choices", "wandb_run_id") if key in previous}
    checkpoint = Path(run_dir) / LAST_CHECKPOINT
    summary = {
        **previous,
        **fields,
        "status": "failed",
        "error": f"{type(error).__name__}: {error}",
        "traceback": traceback_text.strip().splitlines()[-30:],
        "last_checkpoint": str(LAST_CHECKPOINT) if checkpoint.is_file() else None,
    }
    write_json_atomically(Path(run_dir) / SUMMARY, summary)


# ---------------------------------------------------------------------- metrics.csv across resumes
def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    keys = sorted({key for row in rows for key in row})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, lambda file: file.write(text.getvalue().encode()))


def _epoch(row: dict[str, str]) -> float:
    try:
        return float(row.get("epoch") or "nan")
    except ValueError:
        return float("nan")


def keep_metrics_before_resume(run_dir: Path, checkpoint_epoch: int) -> None:
    """Lightning's CSV logger deletes metrics.csv when it starts; set aside the rows of the epochs the
    resumed run will not repeat (epoch <= the checkpoint's), to merge them back at the end."""
    run_dir = Path(run_dir)
    rows = _read_rows(run_dir / METRICS_BEFORE_RESUME) + _read_rows(run_dir / METRICS)
    kept = [row for row in rows if _epoch(row) <= checkpoint_epoch]
    if kept:
        _write_rows(run_dir / METRICS_BEFORE_RESUME, kept)
    (run_dir / METRICS).unlink(missing_ok=True)


def merge_metrics_after_resume(run_dir: Path) -> None:
    """Put the rows set aside at resume back in front of the resumed run's rows, in metrics.csv."""
    run_dir = Path(run_dir)
    before = run_dir / METRICS_BEFORE_RESUME
    if not before.is_file():
        return
    _write_rows(run_dir / METRICS, _read_rows(before) + _read_rows(run_dir / METRICS))
    before.unlink()


def checkpoint_epoch(checkpoint: Path) -> int:
    """The epoch during which the checkpoint was saved (Lightning's ``epoch`` entry)."""
    import torch

    from vae_lab.errors import CheckpointError

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        return int(state["epoch"])
    except Exception as error:
        raise CheckpointError(
            f"{checkpoint} cannot be resumed from ({type(error).__name__}: {error}). Delete it to resume from "
            "scratch in the same directory, or start a new run."
        ) from error
