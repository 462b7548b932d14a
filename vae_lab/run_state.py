"""The state of a run directory, read from its ``summary.json`` and ``checkpoints/last.ckpt``, and
what a new launch into it does: start fresh, resume, skip, or refuse.

``summary.json`` has ``status``:

- ``running``: written when a run starts (with its resolved config and wandb run id); a run that
  stays ``running`` was killed;
- ``complete``: written when it ends (the full summary of vae_lab.train);
- ``failed`` / ``interrupted``: written when it raised or was stopped by a signal (vae_lab.stopped_runs).

With ``resume=true`` a complete run is skipped, and any other run continues from its last
epoch-end checkpoint (``checkpoints/last.ckpt``, written at the end of every epoch) in the same
directory with the same wandb run id; with no checkpoint yet it starts over. A resumed run must
have the config it was started with, except for the keys in :data:`MAY_CHANGE_ON_RESUME`.
A run killed mid-epoch resumes from the end of the last finished epoch and repeats the rest: the
data order and all noise are functions of (seed, epoch, rank), so the repeated epoch draws what the
killed one drew and the resumed run ends where the uninterrupted one would have.

Without ``resume=true`` a directory that already holds a run is refused, so that two runs never
mix their checkpoints.
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vae_lab.errors import ConfigError
from vae_lab.files import write_json_atomically

SUMMARY = "summary.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"

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


#: Config keys added after runs were made, with the value that reproduces what an older config did:
#: a config without them reads as having these values.
ADDED_WITH_DEFAULTS = {"posterior._target_": "vae_lab.posteriors.DiagonalPosterior"}


def config_differences(
    before: dict[str, Any], now: dict[str, Any], may_change: tuple[str, ...] = MAY_CHANGE_ON_RESUME
) -> list[str]:
    """``key: before -> now`` for every resolved config value that differs, except the keys in
    ``may_change`` (and below them; by default the keys a resumed run may change)."""
    old, new = {**ADDED_WITH_DEFAULTS, **_flatten(before)}, {**ADDED_WITH_DEFAULTS, **_flatten(now)}
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
