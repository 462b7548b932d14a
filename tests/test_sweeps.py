"""The sweeps in sweeps/ and the launchers: every sweep composes, its wandb twin drives the same entry
point, real multiruns through joblib and submitit finish, and failing jobs are recorded while the
rest of the sweep goes on."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY, run_cli
from omegaconf import OmegaConf
from wandb_offline import find_offline_runs, read_offline_run

SWEEPS = REPO / "sweeps"
CONF = REPO / "conf"
SWEEP_NAMES = sorted(path.stem for path in SWEEPS.glob("*.yaml"))
#: TINY without the importance-sampled evaluation at the end of each job.
QUICK = [*TINY, "eval.n_importance_samples=0"]
#: QUICK without its batch size (the sweeps below sweep it).
QUICK_UNBATCHED = [o for o in QUICK if not o.startswith("data.batch_size=")]
_ABSENT = object()


def summary_of(job_dir: Path) -> dict:
    return json.loads((job_dir / "summary.json").read_text())


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def sweep_file(name: str) -> dict:
    return yaml.safe_load((SWEEPS / f"{name}.yaml").read_text())


def absent_defaults(name: str) -> list[str]:
    """The ``override /group: option`` entries of the sweep file whose option is not in this checkout."""
    absent = []
    for entry in sweep_file(name).get("defaults", []):
        for key, option in entry.items() if isinstance(entry, dict) else []:
            group = key.removeprefix("override ").strip("/")
            if not (CONF / group / f"{option}.yaml").is_file():
                absent.append(f"{group}={option}")
    return absent


def sweeper_params(name: str) -> dict[str, str]:
    """``hydra.sweeper.params`` of the composed ``+sweep=<name>`` (skips when the sweep file selects
    an option another branch adds)."""
    from hydra import compose, initialize_config_module

    if absent_defaults(name):
        pytest.skip(f"sweeps/{name}.yaml selects {absent_defaults(name)}, not in this checkout yet")

    import vae_lab.train  # noqa: F401  (registers the launcher configs and resolvers)

    with initialize_config_module(config_module="vae_lab.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"+sweep={name}"], return_hydra_config=True)
        assert str(OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["dir"]).startswith(f"multirun/{name}/")
        return {str(key): str(value) for key, value in cfg.hydra.sweeper.params.items()}


def planned_jobs(params: dict[str, str]) -> list[list[str]]:
    """The job override lists Hydra's basic sweeper makes from ``hydra.sweeper.params`` (vae_lab's
    reading of them, which tests/test_library_adapters.py checks against the basic sweeper's)."""
    from vae_lab.run.sweep_progress import planned_job_overrides

    jobs = planned_job_overrides([], params)
    assert jobs is not None, params
    return jobs


@pytest.mark.parametrize("name", SWEEP_NAMES)
def test_sweep_composes_every_job(name: str) -> None:
    """Each job of the sweep composes to a config with its values. Jobs that name a choice or key
    not in this checkout yet (likelihoods, priors, objectives added by other branches) are skipped."""
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from vae_lab.run.settings import find_problems

    params = sweeper_params(name)
    jobs = planned_jobs(params)
    expected = 1
    for values in params.values():
        expected *= len(values.split(","))
    assert len(jobs) == expected and len({tuple(job) for job in jobs}) == expected

    parser = OverridesParser.create()
    composed, missing = 0, set()
    with initialize_config_module(config_module="vae_lab.conf", version_base="1.3"):
        for job in jobs:
            parsed = {o.key_or_group: o.value() for o in parser.parse_overrides(job)}
            groups = {key: value for key, value in parsed.items() if (CONF / key).is_dir()}
            absent = [f"{key}={value}" for key, value in groups.items() if not (CONF / key / f"{value}.yaml").is_file()]
            if absent:
                missing.update(absent)
                continue
            base = compose(config_name="config", overrides=[f"+sweep={name}", *(f"{k}={v}" for k, v in groups.items())])
            absent = [
                key for key in parsed if key not in groups and OmegaConf.select(base, key, default=_ABSENT) is _ABSENT
            ]
            if absent:
                missing.update(absent)
                continue
            cfg = compose(config_name="config", overrides=[f"+sweep={name}", *job], return_hydra_config=True)
            for key, value in parsed.items():
                if key in groups:
                    assert cfg.hydra.runtime.choices[key] == value
                else:
                    assert OmegaConf.select(cfg, key) == value
            job_config = compose(config_name="config", overrides=[f"+sweep={name}", *job])
            assert find_problems(job_config) == [], job  # every key, type and range (vae_lab.run.settings)
            composed += 1
    if not composed:
        pytest.skip(f"no job of {name} composes in this checkout yet; missing: {sorted(missing)}")


@pytest.mark.parametrize("name", sorted(path.stem for path in (SWEEPS / "wandb_sweep").glob("*.yaml")))
def test_wandb_sweep_is_the_hydra_sweep(name: str) -> None:
    """sweeps/wandb_sweep/<name>.yaml has the grid of sweeps/<name>.yaml, as the values the agent writes."""
    sweep = yaml.safe_load((SWEEPS / "wandb_sweep" / f"{name}.yaml").read_text())
    assert sweep["method"] == "grid" and sweep["name"] == name
    wandb_grid = {key: ",".join(str(value) for value in spec["values"]) for key, spec in sweep["parameters"].items()}
    assert wandb_grid == sweep_file(name)["hydra"]["sweeper"]["params"]
    assert sweep["command"][:4] == ["${env}", "python", "-m", "vae_lab.train"]
    assert f"+sweep={name}" in sweep["command"] and "${args_no_hyphens}" in sweep["command"]


def agent_command(sweep: dict, values: dict) -> list[str]:
    """The command ``wandb agent`` runs for one grid point: the macro expansion of
    wandb/wandb_agent.py (Agent._command_run) with wandb's own argument formatting."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    variables = create_sweep_command_args({"args": {key: {"value": value} for key, value in values.items()}})
    variables.update(interpreter=["python"], program=[sweep["program"]], env=["/usr/bin/env"])
    command: list[str] = []
    for chunk in map(str, create_sweep_command(sweep["command"])):
        if chunk.startswith("${") and chunk.endswith("}"):
            command += variables.get(chunk[2:-1]) or []
        else:
            command.append(chunk)
    return command


def test_wandb_agent_command_runs_the_hydra_entry_point(data_root: Path, tmp_path: Path) -> None:
    sweep = yaml.safe_load((SWEEPS / "wandb_sweep" / "seeds.yaml").read_text())
    command = agent_command(sweep, {"seed": sweep["parameters"]["seed"]["values"][1]})
    assert command[:4] == ["/usr/bin/env", "python", "-m", "vae_lab.train"] and "seed=1" in command
    command[1] = sys.executable
    env = {**os.environ, "WANDB_SWEEP_ID": "sweep123", "WANDB_RUN_ID": "agentrun1"}
    import subprocess

    result = subprocess.run(
        [*command, *QUICK, "logger=wandb"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "outputs" / "wandb-sweeps" / "sweep123" / "agentrun1"
    summary = summary_of(run_dir)
    assert summary["status"] == "complete" and summary["config"]["seed"] == 1
    assert summary["wandb_run_id"] == "agentrun1"
    runs = find_offline_runs(run_dir)
    assert len(runs) == 1 and read_offline_run(runs[0]).run_id == "agentrun1"


def test_samples_vs_batch_through_joblib_with_two_workers(data_root: Path, tmp_path: Path) -> None:
    """The real sweep file in a tiny form (1 epoch on 500 images, one seed): 4 jobs, 2 workers."""
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "vae_lab.train",
        "-m",
        "+sweep=samples_vs_batch",
        "seed=0",
        *QUICK_UNBATCHED,
        "logger=wandb",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_dirs(sweep_dir)
    summaries = [summary_of(job) for job in jobs]
    assert [s["status"] for s in summaries] == ["complete"] * 4
    grid = {(s["config"]["objective"]["n_samples"], s["config"]["data"]["batch_size"]) for s in summaries}
    assert grid == {(1, 20), (1, 100), (5, 20), (5, 100)}
    assert all(s["config"]["trainer"]["max_epochs"] == 1 and s["launcher"] == "joblib" for s in summaries)
    # 2 workers share the cores: no job took more than cores // 2 torch threads.
    assert all(1 <= s["threads"] <= max(1, len(os.sched_getaffinity(0)) // 2) for s in summaries)
    # Steps per epoch follow M: 500 images / 20 = 25 steps, / 100 = 5 steps.
    assert {s["config"]["data"]["batch_size"]: s["global_steps"] for s in summaries} == {20: 25, 100: 5}
    runs = [read_offline_run(path) for path in find_offline_runs(sweep_dir)]
    assert len(runs) == 4 and len({run.run_id for run in runs}) == 4
    assert len({run.group for run in runs}) == 1 and runs[0].group.startswith("samples_vs_batch-")
    assert all("sweep:samples_vs_batch" in run.tags for run in runs)


def test_ddp_job_through_submitit_local(data_root: Path, tmp_path: Path) -> None:
    """submitit starts trainer.devices tasks for the job; each task takes its rank from
    submitit.JobEnvironment (vae_lab starts no processes of its own)."""
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "vae_lab.train",
        "-m",
        *QUICK,
        "logger=wandb",
        "trainer=ddp_cpu",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
        timeout=600,
        env={"VAE_LAB_RECORD_SHARDS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (job,) = job_dirs(sweep_dir)
    summary = summary_of(job)
    assert summary["status"] == "complete" and summary["launcher"] == "submitit_local"
    assert summary["attempt"].startswith("submitit-local-")
    assert not list(job.glob("train_rank_*.log"))  # the ranks came from submitit, not from vae_lab
    records = [json.loads(p.read_text()) for p in sorted((job / "shards").glob("rank-*.json"))]
    assert [r["global_rank"] for r in records] == [0, 1] and all(r["world_size"] == 2 for r in records)
    served = [set(r["epochs"]["0"]["indices"]) for r in records]
    assert len(served[0]) == len(served[1]) == 250 and not served[0] & served[1]
    assert sorted(p.name for p in (job / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert len(find_offline_runs(job)) == 1


def test_failing_jobs_are_recorded_and_the_sweep_goes_on(data_root: Path, tmp_path: Path) -> None:
    """Three kinds of failure in an 8-job multirun: a config refused at start-up (a batch larger than
    the data), an accelerator this machine does not have (refused by vae_lab.run.machine_checks), and a run
    that diverges (stopped at its first non-finite loss). Each is recorded in its summary.json and in its
    wandb run (failed; diverged for the divergence); the last job still completes; the multirun exits non-zero."""
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "vae_lab.train",
        "-m",
        *QUICK_UNBATCHED,
        "logger=wandb",
        "data.batch_size=1000,50",
        "trainer.accelerator=tpu,cpu",
        "optimizer.lr=1e30,0.001",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 1
    assert "JobFailedError" in result.stderr
    summaries = [summary_of(job) for job in job_dirs(sweep_dir)]
    errors = [s.get("error", "") for s in summaries]
    assert [s["status"] for s in summaries] == ["failed"] * 6 + ["diverged", "complete"]
    assert all("data.batch_size=1000: not allowed" in error for error in errors[:4])
    assert all("trainer.accelerator=tpu: not available on this machine" in error for error in errors[4:6])
    assert errors[6].startswith("NumericalError: training stopped at") and "optimizer.lr" in errors[6]
    assert summaries[7]["metrics"]["test/elbo"] < 0
    expected = [
        (batch, accelerator, lr) for batch in (1000, 50) for accelerator in ("tpu", "cpu") for lr in (1e30, 0.001)
    ]
    recorded = [
        (s["config"]["data"]["batch_size"], s["config"]["trainer"]["accelerator"], s["config"]["optimizer"]["lr"])
        for s in summaries
    ]
    assert recorded == expected
    # Every job is its own wandb run in the sweep's group; failed runs say so in their summary.
    runs = {run.run_id: run for run in map(read_offline_run, find_offline_runs(sweep_dir))}
    assert len(runs) == 8 and len({run.group for run in runs.values()}) == 1
    for summary in summaries:
        run = runs[summary["wandb_run_id"]]
        if summary["status"] != "complete":
            assert run.summary["status"] == summary["status"] and run.summary["error"] == summary["error"]
        else:
            assert "status" not in run.summary and run.summary["test/elbo"] == pytest.approx(
                summary["metrics"]["test/elbo"]
            )
