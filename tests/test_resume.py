"""Resume: a run killed mid-epoch ends, after ``resume=true``, exactly where the uninterrupted run
ends, in the same directory and wandb run; a re-launched sweep skips its complete jobs and re-runs
the others; a directory holding another run is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import TINY, run_cli
from wandb_offline import find_offline_runs, read_offline_run

from vae_lab.run.pause_points import PAUSE_VARIABLE

#: 10,000 training images (200 steps of 50 per epoch), 3 epochs, one thread (bitwise-repeatable).
RESUMABLE = [
    *(o for o in TINY if not o.startswith(("data.train_subset=", "trainer.max_epochs=", "logger="))),
    "data.train_subset=10000",
    "trainer.max_epochs=3",
    "threads=1",
    "logger=wandb",
    "eval.n_importance_samples=0",
]


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def start_cli(*overrides: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vae_lab.train", *overrides],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )


def checkpoint_epoch(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["epoch"])


def val_elbo_per_epoch(run_dir: Path) -> dict[int, float]:
    import csv

    with (run_dir / "metrics.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val/elbo")]
    epochs = [int(float(row["epoch"])) for row in rows]
    assert len(epochs) == len(set(epochs)), f"an epoch logged twice: {epochs}"
    return {int(float(row["epoch"])): float(row["val/elbo"]) for row in rows}


def test_killed_run_resumes_to_the_uninterrupted_result(data_root: Path, tmp_path: Path) -> None:
    # The uninterrupted run, watched: last.ckpt is rewritten at the end of every epoch.
    reference_dir = tmp_path / "reference"
    reference = start_cli(*RESUMABLE, f"hydra.run.dir={reference_dir}", cwd=tmp_path)
    last, seen, stamp = reference_dir / "checkpoints" / "last.ckpt", [], None
    while reference.poll() is None:
        if last.is_file() and last.stat().st_mtime_ns != stamp:
            stamp = last.stat().st_mtime_ns
            seen.append(checkpoint_epoch(last))
        time.sleep(0.05)
    assert reference.returncode == 0, reference.stderr.read()[-3000:]
    assert seen == [0, 1, 2]
    expected = summary_of(reference_dir)

    # The same run, killed (SIGKILL) during epoch 1 (steps 201..400), after the first epoch-end checkpoint: the
    # run waits at step 300 (vae_lab.run.pause_points) and is killed when it says so, whatever the machine's speed.
    run_dir = tmp_path / "run"
    killed = start_cli(*RESUMABLE, f"hydra.run.dir={run_dir}", cwd=tmp_path, env={PAUSE_VARIABLE: "step 300"})
    last = run_dir / "checkpoints" / "last.ckpt"
    paused = next((line for line in killed.stderr if line.startswith("vae_lab: paused at step 300")), None)
    assert paused is not None, "the run ended without reaching step 300"
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    interrupted = summary_of(run_dir)
    assert interrupted["status"] == "running"  # it never got to say anything else
    assert checkpoint_epoch(last) == 0

    resumed = run_cli("vae_lab.train", *RESUMABLE, "resume=true", f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    summary = summary_of(run_dir)
    assert summary["status"] == "complete" and summary["resumed_from"] == "checkpoints/last.ckpt"
    assert summary["epochs"] == expected["epochs"] and summary["global_steps"] == expected["global_steps"] == 600
    assert summary["metrics"] == expected["metrics"]  # bitwise: same data, noise and updates
    assert val_elbo_per_epoch(run_dir) == val_elbo_per_epoch(reference_dir)  # the curve survived the kill
    # Same wandb run: the resumed process logged to the killed run's id.
    assert summary["wandb_run_id"] == interrupted["wandb_run_id"]
    killed_run, resumed_run = find_offline_runs(run_dir)  # offline-run-<time>-<id>: one per process
    assert killed_run.name.endswith(f"-{summary['wandb_run_id']}") and resumed_run.name.endswith(
        f"-{summary['wandb_run_id']}"
    )
    assert read_offline_run(resumed_run).run_id == summary["wandb_run_id"]  # (SIGKILL may cut the other's records)


def test_relaunched_sweep_skips_complete_jobs_and_reruns_the_others(data_root: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    sweep = ["-m", *TINY, "eval.n_importance_samples=0", "seed=0,1,2", f"hydra.sweep.dir={sweep_dir}"]
    # Kill the whole multirun while job 1 runs: job 0 complete, job 1 interrupted, job 2 never started.
    first = start_cli(*sweep, cwd=tmp_path)
    deadline = time.monotonic() + 600
    while not (sweep_dir / "1" / "summary.json").is_file() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert summary_of(sweep_dir / "0")["status"] == "complete"
    assert summary_of(sweep_dir / "1")["status"] == "running"
    assert not (sweep_dir / "2").exists()
    job0 = (sweep_dir / "0" / "summary.json").read_bytes()

    # Without resume=true the sweep directory is refused before any job starts; nothing in it changes.
    refused = run_cli("vae_lab.train", *sweep, cwd=tmp_path, timeout=600)
    assert refused.returncode == 2 and "already holds runs" in refused.stderr and "resume=true" in refused.stderr
    assert (sweep_dir / "0" / "summary.json").read_bytes() == job0
    assert summary_of(sweep_dir / "1")["status"] == "running" and not (sweep_dir / "2").exists()

    relaunched = run_cli("vae_lab.train", *sweep, "resume=true", cwd=tmp_path, timeout=600)
    assert relaunched.returncode == 0, relaunched.stderr[-3000:]
    assert relaunched.stdout.count("holds a complete run; skipped") == 1
    assert (sweep_dir / "0" / "summary.json").read_bytes() == job0  # skipped, untouched
    summaries = [summary_of(sweep_dir / str(n)) for n in range(3)]
    assert [s["status"] for s in summaries] == ["complete"] * 3
    assert [s["config"]["seed"] for s in summaries] == [0, 1, 2]

    # A re-launch whose grid changed names other settings under the same job numbers: refused per job.
    changed = run_cli(
        "vae_lab.train",
        *sweep[:-2],
        "seed=5,1,2",
        f"hydra.sweep.dir={sweep_dir}",
        "resume=true",
        cwd=tmp_path,
        timeout=600,
    )
    assert changed.returncode != 0 and "seed: 0 -> 5" in changed.stderr
    assert (sweep_dir / "0" / "summary.json").read_bytes() == job0
