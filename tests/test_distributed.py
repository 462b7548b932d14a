"""DDP on the CPU (2 processes over gloo) through the real CLI: a single run and a multirun.

Each test runs ``python -m vae_lab.train trainer=ddp_cpu`` in a subprocess (an in-process ``ddp``
would re-run pytest as rank 1), with the shard record on (``VAE_LAB_RECORD_SHARDS=1``), and reads
back what the ranks served, the checkpoints, ``summary.json`` and the wandb offline runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, run_cli
from omegaconf import OmegaConf
from wandb_offline import find_offline_runs, read_offline_run

DDP_TIMEOUT = 400
#: TINY with the wandb tracker (offline: the tests have no API key), without the importance-sampled evaluation.
TINY_WANDB = [*TINY, "logger=wandb", "eval.n_importance_samples=0"]


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def assert_one_complete_ddp_run(run_dir: Path) -> dict:
    """One checkpoint set, one complete summary, one wandb run (with the summary's id), one shard record per rank."""
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert [p.relative_to(run_dir) for p in run_dir.rglob("summary.json")] == [Path("summary.json")]
    summary = summary_of(run_dir)
    assert summary["status"] == "complete"
    runs = find_offline_runs(run_dir)
    assert len(runs) == 1
    assert read_offline_run(runs[0]).run_id == summary["wandb_run_id"]
    assert {"reconstructions.png", "samples.png"} <= {p.name for p in (run_dir / "images").iterdir()}
    return summary


def shard_records(run_dir: Path) -> dict[int, dict]:
    records = [json.loads(path.read_text()) for path in sorted((run_dir / "shards").glob("rank-*.json"))]
    return {record["global_rank"]: record for record in records}


def full_validation_kl(run_dir: Path) -> tuple[float, float]:
    """KL(q(z|x) || p(z)) of the best checkpoint, analytic (no sampling), averaged over the whole
    validation set and over rank 0's half of it."""
    from vae_lab.model.build import build_datamodule, build_model

    cfg = OmegaConf.create(summary_of(run_dir)["config"])
    datamodule = build_datamodule(cfg)
    datamodule.setup()
    model = build_model(cfg, datamodule)
    state = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    model.load_state_dict(state["state_dict"])
    model.eval()
    with torch.no_grad():
        images = datamodule.splits["val"]
        kl = torch.distributions.kl_divergence(model.posterior(images), model.prior.distribution())
    return float(kl.mean()), float(kl[0::2].mean())


def test_ddp_cpu_single_run_shards_reduces_and_writes_once(data_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(
        "vae_lab.train",
        *TINY_WANDB,
        "trainer=ddp_cpu",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        timeout=DDP_TIMEOUT,
        env={"VAE_LAB_RECORD_SHARDS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Rank 1 ran in the job's own directory: no second output dir anywhere.
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert (run_dir / "train_rank_1.log").is_file()
    summary = assert_one_complete_ddp_run(run_dir)
    assert summary["choices"]["trainer"] == "ddp_cpu"

    # Both ranks trained, on disjoint halves of the 500 training images, 5 batches of 50 each.
    records = shard_records(run_dir)
    assert sorted(records) == [0, 1]
    assert all(record["world_size"] == 2 for record in records.values())
    served = [set(records[rank]["epochs"]["0"]["indices"]) for rank in (0, 1)]
    assert len(served[0]) == len(served[1]) == 250
    assert not served[0] & served[1]
    assert served[0] | served[1] == set(range(500))
    for rank in (0, 1):
        assert records[rank]["epochs"]["0"]["images_trained"] == 250
        assert records[rank]["epochs"]["0"]["batches_trained"] == 5

    # val/kl is deterministic given the weights; each rank evaluated half of the 500 validation
    # images, so only a mean over both ranks equals the KL over the whole set.
    whole, rank_zero_half = full_validation_kl(run_dir)
    assert summary["metrics"]["val/kl"] == pytest.approx(whole, rel=1e-4)
    assert abs(rank_zero_half - whole) > 1e-3 * abs(whole)


def test_ddp_cpu_multirun_two_jobs_one_sweep(data_root: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "vae_lab.train",
        "-m",
        *TINY_WANDB,
        "trainer=ddp_cpu",
        "seed=0,1",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
        timeout=2 * DDP_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Exactly one sweep directory: the ranks did not re-run the sweep.
    assert [p.name for p in tmp_path.iterdir()] == ["sweep"]
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    summaries = [assert_one_complete_ddp_run(job) for job in jobs]
    # No duplicated jobs: each job trained its own seed.
    assert [s["config"]["seed"] for s in summaries] == [0, 1]
    assert summaries[0]["metrics"]["test/elbo"] != summaries[1]["metrics"]["test/elbo"]
    # Two wandb runs (one per job), named by the job's overrides, in one group named after the sweep.
    runs = [read_offline_run(path) for path in find_offline_runs(sweep_dir)]
    assert len(runs) == 2 and len({run.run_id for run in runs}) == 2
    assert len({run.group for run in runs}) == 1 and runs[0].group.startswith("multirun-")
    assert (sweep_dir / ".wandb_group").read_text().strip() == runs[0].group
    assert sorted("seed=0" in run.name.split(",") for run in runs) == [False, True]
    assert all("trainer:ddp_cpu" in run.tags for run in runs)
    assert runs[0].config["trainer"]["strategy"]["process_group_backend"] == "gloo"


def test_gpu_leases_are_exclusive_per_process(tmp_path: Path) -> None:
    """Real fcntl locks held by real processes: two workers get different GPUs; a third that wants
    two GPUs when one is left is refused with the fix."""
    script = (
        "import os, sys\n"
        "from vae_lab.run.devices import lease_gpus\n"
        "lease = lease_gpus(int(sys.argv[1]))\n"
        "print(os.environ['CUDA_VISIBLE_DEVICES'], flush=True)\n"
        "if sys.argv[2] == 'hold':\n"
        "    sys.stdin.read()  # holds its lease until the test closes its stdin (no clock)\n"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "3,5,7", "VAE_LAB_LOCK_DIR": str(tmp_path)}
    holders = [
        subprocess.Popen(
            [sys.executable, "-c", script, "1", "hold"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        held = sorted(holder.stdout.readline().strip() for holder in holders)
        assert len(held) == 2 and len(set(held)) == 2 and set(held) <= {"3", "5", "7"}
        refused = subprocess.run(
            [sys.executable, "-c", script, "2", "release"], env=env, capture_output=True, text=True, timeout=120
        )
        assert refused.returncode != 0
        assert "only 1 of the 3 visible GPUs are free" in refused.stderr and "hydra.launcher.n_jobs" in refused.stderr
        last = subprocess.run(
            [sys.executable, "-c", script, "1", "release"], env=env, capture_output=True, text=True, timeout=120
        )
        assert last.stdout.strip() == ({"3", "5", "7"} - set(held)).pop()
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
